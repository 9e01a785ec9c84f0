"""Building, serialising and parsing messages (tandem.sip.message)."""

from __future__ import annotations

import pytest

from tandem.sip import ParseError, Request, Response, make_response, parse, validate_request

INVITE = (
    b"INVITE sip:+14155550123@gw.example.net;user=phone SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"t: <sip:+14155550123@gw.example.net;user=phone>\r\n"
    b'f: "Alice" <sip:alice@pbx.example.com>;tag=abc\r\n'
    b"i: call-1@pbx.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"m: <sip:alice@10.0.0.5:5060>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"k: 100rel, timer\r\n"
    b"c: application/sdp\r\n"
    b"l: 5\r\n"
    b"\r\n"
    b"v=0\r\n"
)


def test_compact_forms_are_normalised() -> None:
    msg = parse(INVITE)
    names = [name for name, _ in msg.headers]
    assert names == [
        "Via",
        "Max-Forwards",
        "To",
        "From",
        "Call-ID",
        "CSeq",
        "Contact",
        "Record-Route",
        "Supported",
        "Content-Type",
    ]
    assert msg.headers.get("call-id") == msg.headers.get("I") == "call-1@pbx.example.com"
    assert msg.headers.values("Supported") == ["100rel", "timer"]
    assert b"Content-Length: 5\r\n\r\nv=0\r\n" in bytes(msg)


def test_typed_accessors() -> None:
    msg = parse(INVITE)
    assert isinstance(msg, Request)
    assert msg.via.branch == "z9hG4bK-1" and msg.via.rport is None
    assert msg.via.param("rport") == ""
    assert msg.via.response_addr == ("10.0.0.5", 5060)
    assert msg.from_.display == "Alice" and msg.from_.tag == "abc"
    assert msg.to.tag is None
    assert str(msg.to.uri) == "sip:+14155550123@gw.example.net;user=phone"
    assert msg.request_uri.user == "+14155550123"
    assert [str(r.uri) for r in msg.record_route] == [
        "sip:p1.example.com;lr",
        "sip:p2.example.com;lr",
    ]
    assert msg.contacts[0].uri.host_port == ("10.0.0.5", 5060)
    assert msg.max_forwards == 70 and msg.content_type == "application/sdp"


def test_build_from_scratch_and_round_trip() -> None:
    req = Request(
        "OPTIONS",
        "sip:gw.example.net",
        [
            ("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx"),
            ("From", "<sip:tandem@10.0.0.1>;tag=1"),
            ("To", "<sip:gw.example.net>"),
            ("Call-ID", "o1"),
            ("CSeq", "1 OPTIONS"),
            ("Max-Forwards", "70"),
        ],
    )
    data = bytes(req)
    assert data.endswith(b"Content-Length: 0\r\n\r\n")
    assert parse(data) == req


def test_content_length_is_always_the_body_length() -> None:
    msg = parse(INVITE)
    msg.body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\n"
    again = parse(bytes(msg))
    assert again.body == msg.body and again.content_length == len(msg.body)
    assert "Content-Length" not in again.headers  # framing, not a header


def test_make_response_copies_what_8_2_6_says() -> None:
    req = parse(INVITE)
    assert isinstance(req, Request)
    ringing = make_response(req, 180, to_tag="xyz")
    assert ringing.reason == "Ringing"
    assert [n for n, _ in ringing.headers] == [
        "Via",
        "To",
        "From",
        "Call-ID",
        "CSeq",
        "Record-Route",
    ]
    assert ringing.to.tag == "xyz"
    trying = make_response(req, 100, to_tag="xyz")
    assert trying.to.tag is None and "Record-Route" not in trying.headers
    busy = make_response(req, 486, "Busy Here", to_tag="xyz")
    assert "Record-Route" not in busy.headers
    assert parse(bytes(busy)) == busy


def test_make_response_keeps_an_existing_to_tag() -> None:
    req = parse(INVITE.replace(b"user=phone>\r\n", b"user=phone>;tag=old\r\n", 1))
    assert isinstance(req, Request)
    assert make_response(req, 200, to_tag="new").to.tag == "old"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"garbage", 400),
        (b"SIP/2.0 200 OK\r\n", None),
        (INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), 400),
        (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 256"), 400),
        (INVITE.replace(b"l: 5", b"l: 6"), 400),
        (INVITE.replace(b"i: call-1", b"i call-1"), 400),
        (INVITE.replace(b"i: call-1@pbx.example.com\r\n", b""), 400),
        (INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
        (INVITE.replace(b"CSeq: 1 ", b"CSeq: " + b"9" * 5000 + b" "), 400),
        (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: " + b"7" * 5000), 400),
        (INVITE.replace(b"l: 5", b"l: " + b"5" * 5000), 400),
        (b"SIP/2.0 099 Odd\r\n" + INVITE.partition(b"\r\n")[2], None),
        ("SIP/2.0 1²² Odd\r\n".encode() + INVITE.partition(b"\r\n")[2], None),
        (b" INVITE sip:a@b SIP/2.0\r\n" + INVITE.partition(b"\r\n")[2], 400),
    ],
)
def test_rejections(data: bytes, status: int | None) -> None:
    with pytest.raises(ParseError) as info:
        parse(data)
    assert info.value.status == status


def test_leading_zeros_are_no_trouble() -> None:
    msg = parse(
        INVITE.replace(b"CSeq: 1 ", b"CSeq: " + b"0" * 5000 + b"1 ").replace(
            b"70", b"0" * 5000 + b"70"
        )
    )
    assert msg.cseq.number == 1 and msg.max_forwards == 70


def test_folded_headers_are_unfolded() -> None:
    data = INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1\r\n\tINVITE")
    assert parse(data).cseq.method == "INVITE"


def test_leading_keepalive_crlf_is_ignored() -> None:
    assert parse(b"\r\n\r\n" + INVITE) == parse(INVITE)


def test_response_with_an_empty_reason() -> None:
    msg = parse(b"SIP/2.0 100 \r\n" + INVITE.partition(b"\r\n")[2])
    assert isinstance(msg, Response) and msg.status == 100 and msg.reason == ""


def test_validate_request_405_and_501_carry_allow() -> None:
    req = parse(INVITE)
    assert isinstance(req, Request)
    assert validate_request(req, supported=["timer"]) is None
    error = validate_request(req, methods=["OPTIONS"])
    assert error is not None and error.status == 405
    assert dict(error.headers) == {"Allow": "OPTIONS"}
    req.method = "FOO"
    error = validate_request(req, methods=["OPTIONS"])
    assert error is not None and error.status == 501


def test_validate_request_require_is_ignored_on_ack() -> None:
    req = parse(INVITE)
    assert isinstance(req, Request)
    req.headers.add("Require", "foo")
    assert validate_request(req) is not None
    req.method = "ACK"
    req.headers.set("CSeq", "1 ACK")
    req.body = b""
    assert validate_request(req) is None


def test_accept_wildcards_are_honoured() -> None:
    req = parse(INVITE)
    assert isinstance(req, Request)
    req.headers.set("Accept", "application/*")
    assert validate_request(req) is None
    req.headers.set("Accept", "text/plain")
    error = validate_request(req)
    assert error is not None and error.status == 406


@pytest.mark.parametrize(
    ("method", "uri"), [("IN VITE", "sip:a"), ("INVITE", "sip:a b"), ("INVITE", "")]
)
def test_building_a_broken_request_line_is_refused(method: str, uri: str) -> None:
    with pytest.raises(ValueError):
        Request(method, uri)
