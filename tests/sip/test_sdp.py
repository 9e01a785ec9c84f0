"""Reading and rewriting SDP (tandem.sip.sdp)."""

from __future__ import annotations

from tandem.sip.sdp import Connection, MediaLine, SessionDescription

OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    b"m=video 0 RTP/AVP 31\r\nc=IN IP6 2001:db8::1\r\n"
)


def test_untouched_is_byte_exact_even_when_odd() -> None:
    odd = OFFER.replace(b"\r\nt=", b"\nt=") + b"m =bogus\r\nx"
    assert bytes(SessionDescription.parse(odd)) == odd
    assert bytes(SessionDescription.parse(b"")) == b""


def test_read() -> None:
    sdp = SessionDescription.parse(OFFER)
    audio, video = sdp.media
    assert audio.media == MediaLine("audio", 40000, "RTP/AVP", ("0", "8", "101"))
    assert sdp.connection_for(audio) == Connection("10.0.0.5")
    assert sdp.connection_for(video) == Connection("2001:db8::1", "IP6")
    assert (
        audio.attribute("sendrecv") == ""
        and audio.attribute("rtpmap") == "101 telephone-event/8000"
    )
    assert audio.attribute("ptime") is None


def test_rewrite_only_touches_what_changed() -> None:
    sdp = SessionDescription.parse(OFFER)
    sdp.session.connection = Connection("192.0.2.10")
    sdp.media[0].port = 50000
    sdp.media[0].remove_attribute("sendrecv")
    sdp.media[0].add_attribute("sendonly")
    sdp.media[0].connection = Connection("192.0.2.11")
    expected = (
        OFFER.replace(b"c=IN IP4 10.0.0.5", b"c=IN IP4 192.0.2.10")
        .replace(b"101\r\n", b"101\r\nc=IN IP4 192.0.2.11\r\n", 1)
        .replace(b"m=audio 40000", b"m=audio 50000")
        .replace(b"a=sendrecv\r\n", b"a=sendonly\r\n")
    )
    assert bytes(sdp) == expected


def test_adding_after_a_last_line_without_ending() -> None:
    sdp = SessionDescription.parse(b"v=0\r\nm=audio 1 RTP/AVP 0")
    sdp.media[0].add_attribute("sendonly")
    assert bytes(sdp) == b"v=0\r\nm=audio 1 RTP/AVP 0\r\na=sendonly\r\n"
