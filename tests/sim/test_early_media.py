"""Reliable provisionals (RFC 3262) and early media between two sims: PRACK, RSeq, RTP."""

from __future__ import annotations

import socket

from tandem.sip.message import Response, parse
from tandem.sip.uri import split_host_port
from tests.sim.calls import connected, first, flowing, hang_up
from tests.sim.conftest import Trio


def test_reliable_183_carries_early_media_both_ways_until_the_answer(trio: Trio) -> None:
    # hq requires 100rel; gw keeps numbers ending 0183 in early media until answered
    out = trio.hq.place_call("0100", "+14255550183")
    inbound = trio.gw.wait_inbound(lambda c: c.sip_call_id == out.sip_call_id)

    early_out = trio.hq.wait_call(
        out.id, lambda c: c.state == "early" and flowing()(c), "early media"
    )
    early_in = trio.gw.wait_call(
        inbound.id, lambda c: c.state == "early" and flowing()(c), "early media"
    )
    assert early_out.last_status == 183 and early_out.media == "active"
    assert early_in.early_rtp == early_in.rtp  # still early: all of it is early media

    at_gw = trio.gw.sip_messages(inbound.id)
    invite = at_gw[0]
    assert invite.method == "INVITE" and invite.direction == "in"
    assert "100rel" in invite.header("Require")
    progress = first(at_gw, "out", "INVITE", 183)
    assert progress.header("Require") == ["100rel"]
    rseq = progress.header("RSeq")[0]
    assert "application/sdp" in progress.header("Content-Type")[0]
    assert "m=audio" in progress.body
    prack = first(at_gw, "in", "PRACK")
    assert prack.header("RAck") == [f"{rseq} {invite.header('CSeq')[0]}"]
    got = first(trio.hq.sip_messages(out.id), "in", "INVITE", 183)
    assert got.header("RSeq") == [rseq]

    trio.gw.answer(inbound.id)
    answered = trio.hq.wait_call(out.id, connected, "answer")
    trio.gw.wait_call(inbound.id, connected, "answer")
    assert answered.last_status == 200
    # the early count stops at the answer; the call's own RTP goes on
    later = trio.hq.wait_call(out.id, flowing(answered), "RTP after the answer")
    assert later.early_rtp == answered.early_rtp
    assert answered.early_rtp.rx_packets >= early_out.rtp.rx_packets > 0
    assert later.rtp.rx_packets > later.early_rtp.rx_packets

    hang_up(trio.hq, out.id, trio.gw, inbound.id)
    ended = trio.gw.call(inbound.id)
    assert ended.early_rtp.tx_packets > 0 and ended.early_rtp.rx_packets > 0


def test_prack_setting_decides_whether_provisionals_are_reliable(trio: Trio) -> None:
    # branch (prack not_used) calls gw (optional, progress 183): branch's INVITE only
    # supports 100rel, which is enough for gw: a reliable 183 with SDP, then its 200
    out = trio.branch.place_call("0150", "+14255551234")
    trio.branch.wait_call(out.id, connected, "answer")
    at_branch = trio.branch.sip_messages(out.id)
    invite = first(at_branch, "out", "INVITE")
    assert "100rel" in invite.header("Supported") and not invite.header("Require")
    progress = first(at_branch, "in", "INVITE", 183)
    assert progress.header("RSeq") and "m=audio" in progress.body
    first(at_branch, "out", "PRACK")
    inbound = trio.gw.wait_inbound(lambda c: c.sip_call_id == out.sip_call_id)
    hang_up(trio.branch, out.id, trio.gw, inbound.id)

    # the other way, branch rings with a plain 180: not reliable, no PRACK
    out = trio.gw.place_call("14255551234", "+12065550150")
    trio.gw.wait_call(out.id, connected, "answer")
    at_gw = trio.gw.sip_messages(out.id)
    ringing = first(at_gw, "in", "INVITE", 180)
    assert not ringing.header("RSeq") and not ringing.header("Require")
    assert not [m for m in at_gw if m.method == "PRACK"]
    inbound = trio.branch.wait_inbound(lambda c: c.sip_call_id == out.sip_call_id)
    hang_up(trio.gw, out.id, trio.branch, inbound.id)


def test_a_sim_that_requires_100rel_refuses_a_caller_without_it(trio: Trio) -> None:
    # every pjsua INVITE supports 100rel, so this caller is a plain socket
    host, port = split_host_port(trio.sip["hq"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller:
        caller.bind(("127.0.0.1", 0))
        caller.settimeout(5)
        me = f"127.0.0.1:{caller.getsockname()[1]}"
        invite = (
            f"INVITE sip:0100@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {me};branch=z9hG4bK-no100rel\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:+12065550123@{me}>;tag=plain\r\n"
            f"To: <sip:0100@{host}>\r\n"
            "Call-ID: no-100rel@127.0.0.1\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:+12065550123@{me}>\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        caller.sendto(invite.encode(), (host, port))
        while True:  # a 100 Trying may come first
            reply = parse(caller.recv(65535))
            assert isinstance(reply, Response)
            if reply.status >= 200:
                break
    assert reply.status == 421  # Extension Required
    assert "100rel" in reply.headers.values("Require")
    assert not [c for c in trio.hq.calls() if c.sip_call_id == "no-100rel@127.0.0.1"]
