"""Parse and serialise benchmark of tandem.sip against sipmessage, run in one process.

Run: .venv/bin/python tests/bench/bench_sip.py
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable
from functools import partial

import sipmessage

from tandem.sip import parse

SDP = (
    b"v=0\r\n"
    b"o=PBX 1234567890 1234567890 IN IP4 10.0.0.5\r\n"
    b"s=SIP Call\r\n"
    b"c=IN IP4 10.0.0.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)
INVITE = (
    b"INVITE sip:+14155550123@gw1.pstn.example.net:5060;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK776asdhds-1;rport\r\n"
    b"Max-Forwards: 69\r\n"
    b"To: <sip:+14155550123@gw1.pstn.example.net;user=phone>\r\n"
    b'From: "Alice Example" <sip:+12125550100@pbx.example.com;user=phone>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710-4f2b-9c3e@pbx.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:+12125550100@10.0.0.5:5060;transport=udp>\r\n"
    b"Record-Route: <sip:10.0.0.1;lr>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, REFER, NOTIFY\r\n"
    b"Supported: 100rel, timer, replaces\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"User-Agent: ExamplePBX/13.2.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(SDP)
) + SDP
OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK776asdhds-1;rport=5060;received=10.0.0.5\r\n"
    b"Record-Route: <sip:10.0.0.1;lr>\r\n"
    b"To: <sip:+14155550123@gw1.pstn.example.net;user=phone>;tag=a6c85cf\r\n"
    b'From: "Alice Example" <sip:+12125550100@pbx.example.com;user=phone>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710-4f2b-9c3e@pbx.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:+14155550123@192.0.2.44:5060>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Supported: timer\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"Require: timer\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(SDP)
) + SDP.replace(b"10.0.0.20", b"192.0.2.44")


def best_microseconds(fn: Callable[[], object], number: int = 2_000, repeat: int = 25) -> float:
    """The best of `repeat` runs, per call, in CPU time of this process: the figure least
    disturbed by whatever else the machine runs (preemption is not counted)."""
    timer = timeit.Timer(fn, timer=time.process_time)
    return min(timer.repeat(number=number, repeat=repeat)) / number * 1e6


def read_ours(data: bytes) -> object:
    """What an edge reads of every message: parse, then the transaction and dialog keys."""
    msg = parse(data)
    return (msg.via.branch, msg.from_.tag, msg.to.tag, msg.cseq.number, msg.call_id)


def read_theirs(data: bytes) -> object:
    msg = sipmessage.Message.parse(data)
    return (
        msg.via[0].parameters.get("branch"),
        msg.from_address.parameters.get("tag"),
        msg.to_address.parameters.get("tag"),
        msg.cseq.sequence,
        msg.call_id,
    )


def main() -> None:
    print(f"{'case':<36}{'tandem µs':>11}{'sipmessage µs':>15}{'ratio':>8}")
    for label, data in (("INVITE+SDP", INVITE), ("200 OK+SDP", OK_200)):
        ours, theirs = parse(data), sipmessage.Message.parse(data)
        assert parse(bytes(ours)) == ours and read_ours(data) == read_theirs(data)
        for what, t, s in (
            ("parse", partial(parse, data), partial(sipmessage.Message.parse, data)),
            ("parse+read", partial(read_ours, data), partial(read_theirs, data)),
            ("serialise", partial(bytes, ours), partial(bytes, theirs)),
        ):
            ours_us, theirs_us = best_microseconds(t), best_microseconds(s)
            name = f"{what} {label} ({len(data)} B)"
            print(f"{name:<36}{ours_us:>11.2f}{theirs_us:>15.2f}{theirs_us / ours_us:>7.2f}x")
    print("ratio = sipmessage time / tandem time (above 1: tandem is faster)")
    print("tandem's parse checks the RFC 4475 grammar of every header it relies on;")
    print("sipmessage's splits the lines and parses header values on access.")


if __name__ == "__main__":
    main()
