"""Every RFC 4475 and RFC 5118 message, with the expectation its MANIFEST.tsv names."""

from __future__ import annotations

import re

import pytest

from tandem.sip import ParseError, Request, Response, make_response, parse, validate_request
from tandem.sip.headers import name_key
from tandem.sip.sdp import SessionDescription

from .sip_corpus import CASES, Case

# What the edge allows; everything else a non-registrar answers 405 (or 501 if unknown).
EDGE_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO", "PRACK")

# Where the manifest allows two behaviours, the one tandem takes (checked against the text).
CHOICES: dict[str, int | str] = {
    "clerr.dat": 400,  # "400 or drop": a request can be answered, so answer
    "trws.dat": 400,  # strict request line
    "escruri.dat": 400,  # headers have no place in a Request-URI
    "baddate.dat": "parse",  # tolerate: a B2BUA does not read Date
    "regbadct.dat": 400,  # an addr-spec with '?' outside <> is a syntax error
    "novelsc.dat": 416,  # tandem routes sip, sips and tel only
    "zeromf.dat": 483,  # one rule for every method, OPTIONS included
    "regaut01.dat": 405,
    "cparam01.dat": 405,
    "cparam02.dat": 405,
    "regescrt.dat": 405,
    "ipv6-bug-abnf-3-colons.dat": 400,  # RFC 3986 IPv6 grammar, no tolerance
}


def raw_headers(data: bytes) -> list[tuple[str, str]]:
    """Every header line of a message, read independently of the parser: unfolded, the
    value stripped of LWS, Content-Length left out (it is framing)."""
    head = data.lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
    lines = re.sub(r"\r\n[ \t]+", " ", head).split("\r\n")[1:]
    fields = [
        (name_key(n.strip())[0], v.strip(" \t")) for n, _, v in (x.partition(":") for x in lines)
    ]
    return [f for f in fields if f[0] != "content-length"]


def expectation(case: Case) -> int | str | None:
    """An int status, None for "drop", or "parse"."""
    if case.file in CHOICES:
        choice = CHOICES[case.file]
        assert str(choice) in case.what or (choice == "parse" and "tolerate" in case.what)
        return choice
    if case.file == "bcast.dat":
        return "parse"  # dropped by the transaction layer: see test_transaction
    m = re.match(r"reject(?: on UDP)?: (\d{3})\b", case.what)
    if m:
        return int(m[1])
    if case.what.startswith("drop"):
        return None
    assert case.what.startswith("parse"), case.what
    return "parse"


@pytest.mark.parametrize("case", CASES, ids=[c.file for c in CASES])
def test_corpus(case: Case) -> None:
    expected = expectation(case)
    if expected is None or expected in (400, 505):
        with pytest.raises(ParseError) as info:
            parse(case.data)
        assert info.value.status == expected
        return
    msg = parse(case.data)
    assert parse(bytes(msg)) == msg
    assert [(name_key(n)[0], v) for n, v in msg.headers] == raw_headers(case.data)
    # Every typed value the edge reads is recoverable.
    assert msg.vias and msg.call_id and msg.cseq.number >= 0
    assert msg.from_.uri.scheme and msg.to.uri.scheme
    assert all(c.uri.scheme for c in msg.contacts + msg.route + msg.record_route)
    if isinstance(msg, Response):
        assert expected == "parse"
        return
    assert isinstance(msg, Request)
    if expected == "parse":
        # Syntax and semantics are both fine; the method is the edge's business here.
        assert validate_request(msg, accept=("application/sdp", "multipart/mixed")) is None
        if "SDP" in case.what:
            sdp = SessionDescription.parse(msg.body)
            assert bytes(sdp) == msg.body
            assert all(sdp.connection_for(m) for m in sdp.media)
        return
    error = validate_request(msg, methods=EDGE_METHODS)
    assert error is not None and error.status == expected
    answer = make_response(msg, error.status, headers=error.headers)
    assert parse(bytes(answer)).status == expected  # type: ignore[union-attr]


def test_the_manifest_covers_the_corpus() -> None:
    assert len(CASES) == 49 + 12
    assert {expectation(c) for c in CASES} >= {400, 505, 416, 420, 415, 406, 483, 405, None}


def test_420_names_the_unsupported_extensions() -> None:
    case = next(c for c in CASES if c.file == "bext01.dat")
    error = validate_request(parse(case.data), supported=["100rel", "timer"])
    assert error is not None and error.status == 420
    assert dict(error.headers)["Unsupported"] == (
        "nothingSupportsThis, nothingSupportsThisEither, "
        "noProxiesSupportThis, norDoAnyProxiesSupportThis"
    )


def test_415_lists_what_is_accepted() -> None:
    case = next(c for c in CASES if c.file == "invut.dat")
    error = validate_request(parse(case.data))
    assert error is not None and dict(error.headers) == {"Accept": "application/sdp"}


def test_a_rejected_request_can_still_be_answered() -> None:
    case = next(c for c in CASES if c.file == "mismatch01.dat")
    with pytest.raises(ParseError) as info:
        parse(case.data)
    assert info.value.partial is not None
    answer = make_response(info.value.partial, 400)
    assert answer.call_id == "mismatch01.dj0234sxdfl3"
    assert answer.via.branch == "z9hG4bKkdjuw"


def test_wsinv_every_header_value_is_recoverable() -> None:
    msg = parse(next(c for c in CASES if c.file == "wsinv.dat").data)
    assert isinstance(msg, Request)
    assert msg.request_uri.param("unknownparam") == ""
    assert msg.to.uri.host == "chair-dnrc.example.com" and msg.to.tag == "1918181833n"
    assert msg.from_.display == 'J Rosenberg \\"' and msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert msg.route[0].uri.param("unknownwith") == "value"
    (contact,) = msg.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert msg.content_type == "application/sdp" and msg.content_length == 150


def test_dblreq_ignores_octets_past_content_length() -> None:
    msg = parse(next(c for c in CASES if c.file == "dblreq.dat").data)
    assert isinstance(msg, Request) and msg.method == "REGISTER" and msg.body == b""


def test_ipv6_references() -> None:
    def get(name: str) -> Request:
        msg = parse(next(c for c in CASES if c.file == name).data)
        assert isinstance(msg, Request)
        return msg

    assert get("port-ambiguous.dat").request_uri.host_port == ("2001:db8::10:5070", None)
    assert get("port-unambiguous.dat").request_uri.host_port == ("2001:db8::10", 5070)
    assert get("via-received-param-with-delim.dat").via.received == "2001:db8::9:255"
    assert get("via-received-param-no-delim.dat").via.received == "2001:db8::9:255"
    vias = get("mult-ip-in-header.dat").vias
    assert [(v.host, v.port) for v in vias] == [
        ("2001:db8::9:1", 6050),
        ("192.0.2.1", None),
        ("2001:db8::9:255", None),
    ]
    assert vias[2].response_addr == ("192.0.2.200", 5060)
    assert get("ipv4-mapped-ipv6.dat").contacts[0].uri.host == "::ffff:192.0.2.2"
