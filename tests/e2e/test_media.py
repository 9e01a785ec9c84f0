"""Anchored media with real user agents (pjsua2) through a real rtpengine that `tandem up`
starts: RTP both ways by pjsua's own stream statistics, topology hiding in every SDP, SRTP
(SDES) towards the gateway with plain RTP towards the PBX, hold and resume, DTMF, early
media, the CDR's figures of both legs, the media timeout, and an SDP rtpengine refuses.

The gateways anchor: gw1 speaks SRTP only (SDES), gw2 plain RTP and answers after early
media; a silent gw2 is given up after 3 s. The PBXs are bypassed trunks: between them,
nothing changes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tandem.sim.client import SimClient
from tandem.sim.views import CallView
from tests.e2e.conftest import HOSTS, World, running_world
from tests.e2e.test_calls import call_up, connected, flowing, talk

pytestmark = pytest.mark.e2e

RTPENGINE = "127.0.0.1"  # the media address of the local rtpengine (media.interface)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    sims = {"gw1": {"srtp": "sdes"}, "gw2": {"progress": 183, "answer_after_s": 2.0}}
    trunks = {
        "pstn-gw1": {"media": "anchor", "srtp": "sdes"},
        "pstn-gw2": {"media": "anchor", "media_timeout_s": 3},
    }
    with running_world(tmp_path_factory.mktemp("media"), sims=sims, trunks=trunks) as world:
        yield world


def sdp_bodies(sim: SimClient, call: str, direction: str) -> list[str]:
    return [m.body for m in sim.sip_messages(call) if m.direction == direction and "v=0" in m.body]


def only_rtpengine(body: str, *hidden: str) -> None:
    """An SDP that names rtpengine's address, in c= and o=, and none of the trunks'."""
    lines = body.splitlines()
    assert any(line.startswith("c=IN IP4 " + RTPENGINE) for line in lines), body
    assert any(line.startswith("o=") and line.endswith(" " + RTPENGINE) for line in lines), body
    for address in hidden:
        assert address not in body, body


def cdr_of(world: World, sip_call_id: str, within_s: float = 15.0) -> dict[str, Any]:
    api = world.tandem.config["callstate"]["api"]
    deadline = time.monotonic() + within_s
    while True:
        answer = httpx.get(f"http://{api}/v1/cdrs", params={"limit": 1000}, timeout=5).json()
        found = [c for c in answer["cdrs"] if sip_call_id in c["sip_call_ids"]]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no CDR for {sip_call_id}"
        time.sleep(0.2)


def sends_to_rtpengine(view: CallView) -> bool:
    return view.remote_rtp.startswith(RTPENGINE + ":")


def test_rtp_both_ways_through_rtpengine_srtp_to_the_gateway_rtp_to_the_pbx(
    media: World,
) -> None:
    hq, gw1 = media.hq, media.gw1
    out, inbound = call_up(hq, gw1, "0100", "+14255551401")
    caller, callee = hq.call(out), gw1.call(inbound)
    # each side sends its RTP to rtpengine, and hears the other through it
    assert sends_to_rtpengine(caller) and sends_to_rtpengine(callee)
    assert (caller.media_transport, callee.media_transport) == ("RTP/AVP", "RTP/SAVP")
    (answer,) = sdp_bodies(hq, out, "in")  # the 200's SDP, as the caller got it
    only_rtpengine(answer, HOSTS["gw1"])
    assert "a=crypto" not in answer and "RTP/AVP" in answer
    offer = gw1.sip_messages(inbound)[0].body  # the INVITE's SDP, as the gateway got it
    only_rtpengine(offer, HOSTS["hq"])
    assert "RTP/SAVP" in offer and "a=crypto:" in offer
    hq.wait_call(out, flowing(caller), "more RTP both ways at the caller")
    gw1.wait_call(inbound, flowing(callee), "more RTP both ways at the gateway")
    hq.hangup(out)
    gw1.wait_call(inbound, lambda c: c.ended, "BYE through tandem")


def test_dtmf_both_ways_and_hold_and_resume_re_anchored(media: World) -> None:
    hq, gw1 = media.hq, media.gw1
    out, inbound = call_up(hq, gw1, "0101", "+14255551402")
    # RFC 4733 each way, hold and resume by the caller (re-INVITEs through rtpengine), the end
    talk(hq, out, gw1, inbound)
    invites = [m for m in gw1.sip_messages(inbound) if m.method == "INVITE" and not m.status]
    reinvites = invites[1:]
    assert len(reinvites) >= 2 and all(m.direction == "in" and m.body for m in reinvites)
    for message in reinvites:  # the hold's and the resume's offers, as the gateway got them
        only_rtpengine(message.body, HOSTS["hq"])
        assert "RTP/SAVP" in message.body
    resumed = sdp_bodies(hq, out, "in")[-1]  # the resume's answer, as the caller got it
    only_rtpengine(resumed, HOSTS["gw1"])
    assert "a=crypto" not in resumed


def test_early_media_through_rtpengine_then_the_answer(media: World) -> None:
    hq, gw2 = media.hq, media.gw2
    out = hq.place_call("0100", "+12065550503")  # gw1 answers 503: failover to gw2
    hq.wait_call(out.id, lambda c: c.state == "early", "the 183")
    inbound = gw2.wait_inbound(lambda c: c.called.endswith("2065550503"), "the call at gw2")
    hq.wait_call(out.id, lambda c: c.early_rtp.rx_packets > 10, "early media at the caller")
    gw2.wait_call(inbound.id, lambda c: c.early_rtp.rx_packets > 10, "early media at gw2")
    early = [m for m in hq.sip_messages(out.id) if m.status == 183 and m.body]
    assert early
    only_rtpengine(early[0].body, HOSTS["gw2"])
    hq.wait_call(out.id, connected, "the answer")
    hq.wait_call(out.id, flowing(), "RTP both ways")
    hq.hangup(out.id)
    gw2.wait_call(inbound.id, lambda c: c.ended, "BYE through tandem")


def test_the_cdr_carries_packets_loss_and_mos_of_both_legs(media: World) -> None:
    hq, gw1 = media.hq, media.gw1
    out, inbound = call_up(hq, gw1, "0100", "+14255551404")
    time.sleep(12)  # RTCP every 5 s: rtpengine has the reports it computes MOS from
    hq.hangup(out)
    gw1.wait_call(inbound, lambda c: c.ended, "BYE through tandem")
    sent_by_caller, sent_by_callee = hq.call(out).rtp.tx_packets, gw1.call(inbound).rtp.tx_packets
    record = cdr_of(media, hq.call(out).sip_call_id)
    assert record["media"] == "anchored" and record["media_note"] is None
    caller = record["ingress_media"]
    callee = next(a["media"] for a in record["attempts"] if a["media"])
    for party, sent in ((caller, sent_by_caller), (callee, sent_by_callee)):
        assert party["rtpengine"] == media.tandem.config["media"]["rtpengine"][0]
        # what rtpengine got from each party is what its user agent sent (but for what the
        # callee sent while the BYE was on its way); loopback loses next to nothing
        assert 0.9 * sent - 100 <= party["packets_from"] <= sent + 100, (party, sent)
        assert party["packets_to"] > 0.9 * min(sent_by_caller, sent_by_callee) - 100
        assert party["packets_lost"] <= party["packets_from"] // 100 and party["loss_percent"] < 1
        assert party["mos"] is not None and party["mos"] >= 3.5
    assert callee["protocol"] == "RTP/SAVP" and callee["crypto"]
    assert caller["protocol"] == "RTP/AVP" and caller["crypto"] is None
    stats = {t["trunk"]: t for t in httpx.get(stats_url(media), timeout=5).json()["trunks"]}
    assert stats["pstn-gw1"]["outbound"]["media"]["packets"] >= callee["packets_from"]


def stats_url(world: World) -> str:
    return f"http://{world.tandem.config['callstate']['api']}/v1/stats"


def test_a_call_between_bypassed_trunks_is_not_anchored(media: World) -> None:
    hq, branch = media.hq, media.branch
    out, inbound = call_up(hq, branch, "0100", "+12065550150")
    assert hq.call(out).remote_rtp.startswith(HOSTS["branch"] + ":")
    assert branch.call(inbound).remote_rtp.startswith(HOSTS["hq"] + ":")
    hq.hangup(out)
    branch.wait_call(inbound, lambda c: c.ended, "BYE through tandem")
    record = cdr_of(media, hq.call(out).sip_call_id)
    assert record["media"] == "bypassed" and record["ingress_media"] is None


def test_a_gateway_that_goes_silent_is_ended_by_the_media_timeout(media: World) -> None:
    """gw2 (after gw1's 503) hangs: no RTP, no SIP. 3 s later tandem ends the call: BYE to
    the caller at once, and to gw2, which gets it once it comes back."""
    hq, gw2 = media.hq, media.gw2
    out = hq.place_call("0101", "+14255550503")  # gw1 answers 503: failover to gw2
    hq.wait_call(out.id, connected, "the answer", timeout_s=20)
    inbound = gw2.wait_inbound(lambda c: c.called.endswith("4255550503"), "the call at gw2")
    hq.wait_call(out.id, flowing(), "RTP both ways")
    media.processes["gw2"].freeze()
    frozen = time.monotonic()
    try:
        ended = hq.wait_call(out.id, lambda c: c.ended, "BYE from tandem", timeout_s=30)
        waited = time.monotonic() - frozen
    finally:
        media.processes["gw2"].thaw()
    assert ended.ended_by == "remote"
    assert waited >= 2.5  # gw2's media_timeout_s (3 s) from its last packet seen, not at once
    gw2.wait_call(inbound.id, lambda c: c.ended, "the BYE at gw2, once back", timeout_s=40)
    record = cdr_of(media, hq.call(out.id).sip_call_id)
    assert (record["end_reason"], record["ended_by"]) == ("media_timeout", "system")
    assert record["final_reason"] == "OK"
    assert [a["trunk"] for a in record["attempts"]] == ["pstn-gw1", "pstn-gw2"]


def test_an_sdp_rtpengine_refuses_gets_488_with_its_reason(media: World) -> None:
    """An INVITE from the PBX whose SDP has no connection line: rtpengine cannot anchor it."""
    edge = media.tandem.config["edges"][0]["sip"]
    host, port = edge.rsplit(":", 1)
    body = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOSTS["hq"], 0))
        sock.settimeout(10)
        me = f"{HOSTS['hq']}:{sock.getsockname()[1]}"
        invite = (
            f"INVITE sip:+14255551405@{edge} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {me};branch=z9hG4bK-bad-sdp-1;rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:0100@{me}>;tag=bad-sdp\r\n"
            f"To: <sip:+14255551405@{edge}>\r\n"
            "Call-ID: bad-sdp-1@test\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:0100@{me}>\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        )
        sock.sendto(invite.encode(), (host, int(port)))
        while True:
            data = sock.recv(65535).decode()
            status = int(data.split(" ", 2)[1])
            if status >= 200:
                break
        to = next(line for line in data.split("\r\n") if line.lower().startswith("to:"))
        ack = (
            f"ACK sip:+14255551405@{edge} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {me};branch=z9hG4bK-bad-sdp-1;rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:0100@{me}>;tag=bad-sdp\r\n{to}\r\n"
            "Call-ID: bad-sdp-1@test\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(ack.encode(), (host, int(port)))
    assert status == 488, data
    warning = next(line for line in data.split("\r\n") if line.lower().startswith("warning:"))
    assert "rtpengine refused the SDP: Incomplete SDP specification" in warning
    record = cdr_of(media, "bad-sdp-1@test")
    assert (record["final_status"], record["end_reason"]) == (488, "media_rejected")
    assert not any(c.called.endswith("5551405") for c in media.gw1.calls())  # never left
