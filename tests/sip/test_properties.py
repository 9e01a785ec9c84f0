"""Hypothesis properties of the parser: it fails only with ParseError, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.sip import URI, NameAddr, ParseError, Request, Response, StreamFramer, Via, parse
from tandem.sip.uri import quote_display

from .sip_corpus import CASES

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORPUS = [c.data for c in CASES]
LOWER = "abcdefghijklmnopqrstuvwxyz"
ALNUM = LOWER + LOWER.upper() + "0123456789"


def read_everything(msg: Request | Response) -> None:
    """Every typed accessor the edge uses must work on whatever parse accepted."""
    _ = (msg.vias, msg.via, msg.from_, msg.to, msg.cseq, msg.call_id, msg.max_forwards)
    _ = (msg.contacts, msg.route, msg.record_route, msg.content_type, msg.content_length)
    for via in msg.vias:
        _ = (via.branch, via.received, via.response_addr)
    if isinstance(msg, Request):
        _ = msg.request_uri


def parse_or_reject(data: bytes) -> Request | Response | None:
    try:
        msg = parse(data)
    except ParseError as error:
        assert error.status in (None, 400, 505)
        return None
    read_everything(msg)
    assert parse(bytes(msg)) == msg
    return msg


@FAST
@given(st.binary(max_size=1500))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    parse_or_reject(data)


@FAST
@given(st.binary(max_size=300))
def test_random_header_lines_raise_only_parse_errors(junk: bytes) -> None:
    parse_or_reject(b"OPTIONS sip:a@b SIP/2.0\r\n" + junk + b"\r\n\r\n")


mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "duplicate"]),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=40),
    st.binary(min_size=1, max_size=8),
)


@FAST
@given(st.sampled_from(CORPUS), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_corpus_messages_raise_only_parse_errors(
    data: bytes, mutations: list[tuple[str, int, int, bytes]]
) -> None:
    buf = bytearray(data)
    for kind, where, length, chunk in mutations:
        at = where % (len(buf) + 1)
        if kind == "flip" and at < len(buf):
            buf[at] ^= chunk[0]
        elif kind == "insert":
            buf[at:at] = chunk
        elif kind == "delete":
            del buf[at : at + length]
        else:
            buf[at:at] = buf[at : at + length]
    parse_or_reject(bytes(buf))


token = st.text(ALNUM + "-.!%*_+`'~", min_size=1, max_size=12)
host = st.one_of(
    st.lists(st.text(LOWER, min_size=1, max_size=8), min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
user = st.text(ALNUM + "+_.!~*'()&=$-", min_size=1, max_size=16)
param_value = st.text(ALNUM + "_.!~*'()-", min_size=1, max_size=10)
uri_params = st.lists(
    st.tuples(st.text(LOWER, min_size=1, max_size=8), st.none() | param_value), max_size=3
)


@st.composite
def sip_uris(draw: st.DrawFn) -> URI:
    return URI(
        draw(st.sampled_from(["sip", "sips"])),
        user=draw(st.none() | user),
        host=draw(host),
        port=draw(st.none() | st.integers(1, 65535)),
        params=tuple(draw(uri_params)),
    )


display = st.none() | st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=20
).filter(lambda s: s == s.strip(" \t"))


@st.composite
def addresses(draw: st.DrawFn, tag: bool) -> NameAddr:
    params = (("tag", draw(token)),) if tag else ()
    return NameAddr(draw(sip_uris()), draw(display), params)


header_value = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=40).map(
    lambda s: s.strip(" \t")
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(["INVITE", "BYE", "OPTIONS", "INFO", "UPDATE"]) | token)
    via = Via(
        draw(st.sampled_from(["UDP", "TCP", "TLS"])),
        draw(host),
        draw(st.none() | st.integers(1, 65535)),
        (("branch", "z9hG4bK" + draw(token)),),
    )
    headers = [
        ("Via", str(via)),
        ("From", str(draw(addresses(tag=True)))),
        ("To", str(draw(addresses(tag=False)))),
        (
            "Call-ID",
            draw(st.text(ALNUM + ".!%*_+`'~()<>:\\/[]?{}-", min_size=1, max_size=20)),
        ),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
    ]
    extra = draw(st.lists(st.tuples(token.map(lambda t: "X-" + t), header_value), max_size=4))
    return Request(method, draw(sip_uris()), headers + extra, draw(st.binary(max_size=200)))


@settings(FAST, max_examples=100)
@given(requests())
def test_generated_requests_round_trip(req: Request) -> None:
    again = parse(bytes(req))
    assert again == req
    assert again.from_ == NameAddr.parse(req.headers.get("From") or "")
    assert again.request_uri == URI.parse(req.uri)


@settings(FAST, max_examples=25)
@given(st.lists(requests(), min_size=1, max_size=3), st.lists(st.integers(0, 4000), max_size=6))
def test_framer_recovers_messages_from_any_cuts(reqs: list[Request], cuts: list[int]) -> None:
    stream = b"\r\n\r\n".join(bytes(r) for r in reqs)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    framer = StreamFramer()
    frames: list[bytes] = []
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        frames += framer.feed(stream[a:b])
    assert [parse(f) for f in frames] == reqs


@pytest.mark.parametrize("name", ["", "a", 'quo"te', "back\\slash", "tab\tbell\x07"])
def test_display_name_quoting_round_trips(name: str) -> None:
    addr = NameAddr(URI.parse("sip:a@b"), name)
    assert NameAddr.parse(str(addr)).display == name and quote_display(name).startswith('"')
