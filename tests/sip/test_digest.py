"""Digest authentication (tandem.sip.digest): the RFCs' own examples, a stdlib peer, both sides."""

from __future__ import annotations

import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.sip import Request, Response
from tandem.sip.digest import (
    Authorization,
    Challenge,
    Credentials,
    DigestClient,
    DigestError,
    DigestServer,
    Verdict,
    choose,
    parse_challenges,
)

KEY = b"k" * 32
NOW = 1_700_000_000.0
URI = "sip:carrier.example.com"

# RFC 7616 3.9.1: the same request answered with SHA-256 and with MD5
RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_RESPONSES = {
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
}


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_rfc7616_example(algorithm: str) -> None:
    challenge = Challenge.parse(RFC7616_CHALLENGE.format(alg=algorithm))
    assert (challenge.algorithm, challenge.qop) == (algorithm, ("auth", "auth-int"))
    client = DigestClient(Credentials("Mufasa", "Circle of Life"), cnonce=lambda: RFC7616_CNONCE)
    answer = Authorization.parse(client.authorize(challenge, "GET", "/dir/index.html"))
    assert answer.response == RFC7616_RESPONSES[algorithm]
    assert (answer.nc, answer.qop, answer.cnonce) == ("00000001", "auth", RFC7616_CNONCE)
    assert answer.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def test_rfc7616_authorization_as_published_parses() -> None:
    text = (
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
        'algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        f'nc=00000001, cnonce="{RFC7616_CNONCE}", qop=auth, '
        f'response="{RFC7616_RESPONSES["SHA-256"]}", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    parsed = Authorization.parse(text)
    assert (parsed.username, parsed.uri, parsed.algorithm) == (
        "Mufasa",
        "/dir/index.html",
        "SHA-256",
    )
    assert Authorization.parse(str(parsed)) == parsed


def test_rfc2617_example() -> None:
    challenge = Challenge.parse(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge.algorithm == "MD5"  # the default when absent
    client = DigestClient(Credentials("Mufasa", "Circle Of Life"), cnonce=lambda: "0a4f113b")
    answer = Authorization.parse(client.authorize(challenge, "GET", "/dir/index.html"))
    assert answer.response == "6629fae49393a05397450978507c4ef1"


class _StdlibPeer(urllib.request.AbstractDigestAuthHandler):
    """Python's own HTTP digest client, as an independent implementation to answer us."""

    def __init__(self, username: str, password: str) -> None:
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, "http://sip.test/", username, password)
        super().__init__(passwords)

    def answer(self, challenge: str, method: str, uri: str) -> str:
        request = urllib.request.Request(f"http://sip.test{uri}", method=method)
        params = {k: v for k, v in (p.split("=", 1) for p in challenge[7:].split(", "))}
        chal = {k: v.strip('"') for k, v in params.items()}
        value = self.get_authorization(request, chal)
        assert value is not None
        return "Digest " + value


@pytest.mark.parametrize("qop", [True, False])
def test_a_stdlib_client_is_verified(qop: bool) -> None:
    server = DigestServer("sip.test", KEY, algorithms=("MD5",), qop=qop)
    peer = _StdlibPeer("alice", "s3cret")
    answer = Authorization.parse(peer.answer(server.challenges(NOW)[0], "REGISTER", "/pbx"))
    assert answer.qop == ("auth" if qop else None)
    assert server.verify(answer, "REGISTER", "/pbx", "s3cret", NOW + 1) is Verdict.OK
    assert server.verify(answer, "REGISTER", "/pbx", "wrong", NOW + 1) is Verdict.WRONG


def _server_and_client(**server_args: object) -> tuple[DigestServer, DigestClient]:
    server = DigestServer("carrier.example.com", KEY, **server_args)  # type: ignore[arg-type]
    return server, DigestClient(Credentials("pbx-hq", "hunter2"))


def test_round_trip_prefers_sha256_and_counts_nc() -> None:
    server, client = _server_and_client()
    challenges = parse_challenges(server.challenges(NOW))
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    chosen = choose(challenges)
    first = Authorization.parse(client.authorize(chosen, "INVITE", URI))
    second = Authorization.parse(client.authorize(chosen, "BYE", URI))
    assert (first.algorithm, first.nc, second.nc) == ("SHA-256", "00000001", "00000002")
    assert server.verify(first, "INVITE", URI, "hunter2", NOW) is Verdict.OK
    assert server.verify(second, "BYE", URI, "hunter2", NOW) is Verdict.OK
    assert server.verify(second, "BYE", URI, "hunter2", NOW) is Verdict.REPLAY
    assert server.verify(first, "INVITE", URI, "hunter2", NOW) is Verdict.REPLAY
    fresh = choose(parse_challenges(server.challenges(NOW)))
    assert Authorization.parse(client.authorize(fresh, "INVITE", URI)).nc == "00000001"


def test_sha256_is_chosen_even_when_md5_comes_first() -> None:
    md5 = Challenge("r", "n1", "MD5", ("auth",))
    sha = Challenge("r", "n2", "SHA-256", ("auth",))
    assert choose([md5, sha]) is sha
    assert choose([md5]) is md5


def test_verdicts_for_wrong_answers() -> None:
    server, _ = _server_and_client()
    challenge = choose(parse_challenges(server.challenges(NOW)))

    def answer(method: str = "INVITE", uri: str = URI, password: str = "hunter2") -> Authorization:
        peer = DigestClient(Credentials("pbx-hq", password))
        return Authorization.parse(peer.authorize(challenge, method, uri))

    assert server.verify(answer(password="guess"), "INVITE", URI, "hunter2", NOW) is Verdict.WRONG
    # signed for another request-URI or method
    assert server.verify(answer(uri="sip:x"), "INVITE", URI, "hunter2", NOW) is Verdict.WRONG
    assert server.verify(answer(method="BYE"), "INVITE", URI, "hunter2", NOW) is Verdict.WRONG
    # expired: stale with the right password (the client retries silently), wrong without
    late = NOW + server.nonce_ttl_s + 1
    assert server.verify(answer(), "INVITE", URI, "hunter2", late) is Verdict.STALE
    assert server.verify(answer(password="guess"), "INVITE", URI, "hunter2", late) is Verdict.WRONG
    stale = Challenge.parse(server.challenges(late, stale=True)[0])
    assert stale.stale


def test_nonces_not_ours_are_refused() -> None:
    server, client = _server_and_client()
    other_key = DigestServer("carrier.example.com", b"x" * 32)
    other_realm = DigestServer("other.example.com", KEY)
    for issuer in (other_key, other_realm):
        challenge = Challenge.parse(issuer.challenges(NOW)[0])
        answer = Authorization.parse(client.authorize(challenge, "INVITE", URI))
        verdict = server.verify(answer, "INVITE", URI, "hunter2", NOW)
        assert verdict is (Verdict.BAD_NONCE if issuer is other_key else Verdict.WRONG)
    forged = Challenge("carrier.example.com", "A" * 43, "SHA-256", ("auth",))
    answer = Authorization.parse(client.authorize(forged, "INVITE", URI))
    assert server.verify(answer, "INVITE", URI, "hunter2", NOW) is Verdict.BAD_NONCE


def test_no_downgrade_to_rfc2069_when_qop_was_offered() -> None:
    server, client = _server_and_client()
    challenge = Challenge.parse(server.challenges(NOW)[0])
    old_style = Challenge(challenge.realm, challenge.nonce, challenge.algorithm, ())
    answer = Authorization.parse(client.authorize(old_style, "INVITE", URI))
    assert answer.qop is None
    assert server.verify(answer, "INVITE", URI, "hunter2", NOW) is Verdict.WRONG
    legacy = DigestServer("carrier.example.com", KEY, qop=False)
    assert legacy.verify(answer, "INVITE", URI, "hunter2", NOW) is Verdict.OK


def test_nc_memory_is_bounded_and_forgetting_never_admits_a_replay() -> None:
    server, client = _server_and_client(max_tracked=2)
    answers = []
    for i in range(3):
        challenge = choose(parse_challenges(server.challenges(NOW + i)))
        answers.append(Authorization.parse(client.authorize(challenge, "INVITE", URI)))
        assert server.verify(answers[-1], "INVITE", URI, "hunter2", NOW + i) is Verdict.OK
    assert len(server._seen) == 2
    # the first nonce was forgotten: its replay is STALE (a fresh nonce), never OK
    assert server.verify(answers[0], "INVITE", URI, "hunter2", NOW + 3) is Verdict.STALE
    assert server.verify(answers[2], "INVITE", URI, "hunter2", NOW + 3) is Verdict.REPLAY


def test_answer_picks_the_header_from_the_status() -> None:
    server, client = _server_and_client()
    request = Request("INVITE", URI)
    for status, challenge_header, answer_header in [
        (401, "WWW-Authenticate", "Authorization"),
        (407, "Proxy-Authenticate", "Proxy-Authorization"),
    ]:
        headers = [(challenge_header, v) for v in server.challenges(NOW)]
        name, value = client.answer(Response(status, headers=headers), request)
        assert name == answer_header
        assert (
            server.verify(Authorization.parse(value), "INVITE", URI, "hunter2", NOW) is Verdict.OK
        )
    with pytest.raises(DigestError, match="not a challenge"):
        client.answer(Response(403), request)
    with pytest.raises(DigestError, match="no Digest challenge"):
        client.answer(Response(401, headers=[("WWW-Authenticate", 'Basic realm="x"')]), request)


def test_credentials_for_one_realm_answer_only_it() -> None:
    client = DigestClient(Credentials("u", "p", realm="a.example"))
    with pytest.raises(DigestError, match="not ours"):
        client.authorize(Challenge("b.example", "n"), "INVITE", URI)
    response = Response(
        401,
        headers=[
            ("WWW-Authenticate", 'Digest realm="b.example", nonce="1"'),
            ("WWW-Authenticate", 'Digest realm="a.example", nonce="2"'),
        ],
    )
    _, value = client.answer(response, Request("INVITE", URI))
    assert Authorization.parse(value).realm == "a.example"


def test_challenges_tandem_cannot_answer_are_left_out() -> None:
    values = [
        'Basic realm="x"',
        'Digest realm="x", nonce="1", algorithm=SHA-512-256',
        'Digest realm="x", nonce="2", qop="auth-int"',
        'Digest realm="x", nonce="3", algorithm=md5, qop="auth-int,auth", stale=TRUE',
    ]
    [only] = parse_challenges(values)
    assert (only.nonce, only.algorithm, only.stale) == ("3", "MD5", True)


def test_quoted_strings_with_commas_and_escapes() -> None:
    challenge = Challenge.parse(r'Digest realm="a, \"b\"",nonce="x,y" , algorithm="SHA-256"')
    assert (challenge.realm, challenge.nonce, challenge.algorithm) == ('a, "b"', "x,y", "SHA-256")
    assert Challenge.parse(str(challenge)) == challenge


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no authentication scheme"),
        ("Digest", "without realm or nonce"),
        ('Digest realm="x"', "without realm or nonce"),
        ('Digest realm="x, nonce="1"', "expected ','"),
        ('Digest realm="x" nonce="1"', "expected ','"),
        ('Digest realm="x", realm="y", nonce="1"', "repeated"),
        ('Digest realm="x", nonce="1", algorithm=SHA-1', "unsupported algorithm"),
        ('Basic realm="x"', "not a Digest challenge"),
        ("Digest realm=" + "x" * 5000, "too long"),
        ("Digest realm=@, nonce=1", "unreadable parameter"),
    ],
)
def test_malformed_challenges(text: str, reason: str) -> None:
    with pytest.raises(DigestError, match=reason):
        Challenge.parse(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('Digest username="u", realm="r", nonce="n", uri="u"', "without response"),
        ('Digest username="u", realm="r", nonce="n", uri="u", response="0", qop=auth', "needs nc"),
        (
            'Digest username="u", realm="r", nonce="n", uri="u", response="0", qop=auth, '
            'nc=1, cnonce="c"',
            "needs nc",
        ),
        (
            'Digest username="u", realm="r", nonce="n", uri="u", response="0", qop=auth-int, '
            'nc=00000001, cnonce="c"',
            "unsupported qop",
        ),
        ('Bearer token="x"', "not Digest credentials"),
    ],
)
def test_malformed_credentials(text: str, reason: str) -> None:
    with pytest.raises(DigestError, match=reason):
        Authorization.parse(text)


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=200)
    | st.from_regex(r'Digest( [a-z]{1,6}=("[^"]{0,8}"?|[a-z0-9]{0,5}),?){0,6}')
)
def test_any_text_raises_only_digest_error(text: str) -> None:
    for parse in (Challenge.parse, Authorization.parse):
        try:
            parse(text)
        except DigestError as exc:
            assert isinstance(exc, ValueError) and str(exc)


def test_no_secret_in_reprs_or_errors() -> None:
    creds = Credentials("pbx-hq", "hunter2-secret")
    client = DigestClient(creds)
    server = DigestServer("r", b"super-secret-key-material")
    assert "hunter2-secret" not in repr(creds) + repr(client) + str(client.__dict__.keys())
    assert "super-secret" not in repr(server)
    with pytest.raises(DigestError) as caught:
        client.authorize(Challenge("r", "n", qop=("auth-int",)), "INVITE", URI)
    assert "hunter2-secret" not in str(caught.value)
    with pytest.raises(ValueError, match="16 octets"):
        DigestServer("r", b"short")
