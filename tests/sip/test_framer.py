"""Framing SIP over a byte stream (tandem.sip.framer)."""

from __future__ import annotations

import pytest

from tandem.sip import ParseError, parse
from tandem.sip.framer import StreamFramer

MSG = (
    b"OPTIONS sip:gw SIP/2.0\r\nVia: SIP/2.0/TCP a;branch=z9hG4bK1\r\nFrom: <sip:a>;tag=1\r\n"
    b"To: <sip:gw>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nl: 5\r\n\r\nhello"
)


def test_messages_cut_at_any_point() -> None:
    stream = b"\r\n\r\n" + MSG + b"\r\n" + MSG + MSG
    for cut in range(len(stream)):
        framer = StreamFramer()
        frames = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert frames == [MSG, MSG, MSG]
        assert framer.pending == 0
    assert parse(MSG).body == b"hello"


def test_waits_for_the_body() -> None:
    framer = StreamFramer()
    assert framer.feed(MSG[:-1]) == []
    assert framer.feed(MSG[-1:]) == [MSG]


def test_missing_content_length_means_no_body() -> None:
    msg = MSG.replace(b"l: 5\r\n", b"")[:-5]
    assert StreamFramer().feed(msg + msg) == [msg, msg]


@pytest.mark.parametrize(
    "data",
    [
        MSG.replace(b"l: 5", b"l: -5"),
        MSG.replace(b"l: 5", b"l: 5\r\nContent-Length: 5"),
        MSG.replace(b"l: 5", b"l: 999999"),
        MSG.replace(b"l: 5", b"l: " + b"9" * 5000),
        b"X" * 70_000,
    ],
)
def test_refuses_what_cannot_be_framed(data: bytes) -> None:
    with pytest.raises(ParseError) as info:
        StreamFramer().feed(data)
    assert info.value.status is None


def test_double_crlf_pings_are_counted_wherever_the_stream_is_cut() -> None:
    """RFC 5626 3.5.1: CRLFCRLF is a ping (a server answers CRLF); a lone CRLF is not."""
    stream = b"\r\n\r\n" + MSG + b"\r\n" + MSG + b"\r\n\r\n\r\n\r\n" + MSG
    for cut in range(len(stream)):
        framer = StreamFramer()
        frames = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert frames == [MSG, MSG, MSG]
        assert framer.take_pings() == 3
        assert framer.take_pings() == 0


def test_a_pong_alone_is_no_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(MSG) == [MSG]
    assert framer.feed(b"\r\n") == []
    assert framer.take_pings() == 0
    assert framer.feed(b"\r\n") == []  # two pongs in a row without a message: a ping
    assert framer.take_pings() == 1
