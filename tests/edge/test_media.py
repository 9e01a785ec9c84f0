"""The edge's rtpengine pool against real rtpengine daemons: offers and answers rewritten as
each trunk's srtp and ice ask, RTP counted into figures, calls spread over instances and
kept on theirs, an instance down (skipped) or restarted (the call reported lost), and an SDP
rtpengine refuses."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from tandem.b2bua import actions as a
from tandem.b2bua import events as e
from tandem.edge.media import Rtpengines
from tandem.sip.sdp import SessionDescription
from tests.conftest import free_port
from tests.edge.conftest import LOCAL, MakeSystem
from tests.edge.phones import SDP
from tests.rtpengine import Rtpengine

OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
)
ANSWER = OFFER.replace(b"127.0.0.2", b"127.0.0.3").replace(b"40000", b"41000")
PLAIN = a.Towards("off", "remove")


@pytest.fixture
def daemons(tmp_path: Path) -> list[Rtpengine]:
    started = [Rtpengine(tmp_path / f"rtpengine-{n}.log").start() for n in (1, 2)]
    yield started  # type: ignore[misc]
    for daemon in started:
        daemon.stop()


async def pool_of(*addresses: str, ping_s: float = 0.1) -> Rtpengines:
    pool = Rtpengines("edge-media-test", [_split(x) for x in addresses], ping_s=ping_s)
    pool.wanted = True
    await pool.start()
    return pool


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


@pytest.fixture
async def pool(daemons: list[Rtpengine]) -> AsyncIterator[Rtpengines]:
    running = await pool_of(*(d.address for d in daemons))
    yield running
    await running.stop()


def port_of(sdp: bytes) -> int:
    return SessionDescription.parse(sdp).media[0].port


async def anchored(pool: Rtpengines, call: str) -> tuple[bytes, bytes]:
    """An offer from the caller and the callee's answer: what each of them got."""
    offer = await pool.rewrite(a.MediaOffer(call, OFFER, "caller", "", PLAIN))
    assert isinstance(offer, e.MediaRewritten), offer
    answer = await pool.rewrite(a.MediaAnswer(call, ANSWER, "caller", "leg-1", PLAIN))
    assert isinstance(answer, e.MediaRewritten), answer
    return offer.sdp, answer.sdp


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"edge": "edge-media-test", **labels})


async def test_each_party_gets_rtpengines_address_and_its_rtp_is_counted(
    pool: Rtpengines,
) -> None:
    to_callee, to_caller = await anchored(pool, "call-rtp")
    for sdp, hidden in ((to_callee, b"127.0.0.2"), (to_caller, b"127.0.0.3")):
        assert b"c=IN IP4 127.0.0.1" in sdp and b"o=- 1 1 IN IP4 127.0.0.1" in sdp
        assert hidden not in sdp
        assert b"telephone-event/8000" in sdp  # RFC 4733 passes
    # the caller sends 25 packets to the port rtpengine gave it; the callee receives them
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as callee,
    ):
        caller.bind(("127.0.0.2", 40000))
        callee.bind(("127.0.0.3", 41000))
        callee.settimeout(2)
        for seq in range(25):
            rtp = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 4242) + b"\xff" * 160
            caller.sendto(rtp, ("127.0.0.1", port_of(to_caller)))
        received = [callee.recv(2048) for _ in range(25)]
    assert len(received) == 25
    report = await pool.report(a.MediaQuery("call-rtp"))
    figures = {q.leg_id: q for q in report.quality}
    assert (figures["caller"].packets_from, figures["caller"].bytes_from) == (25, 25 * 172)
    assert figures["leg-1"].packets_from == 0 and figures["leg-1"].packets_to == 25
    assert figures["caller"].protocol == "RTP/AVP" and not report.lost
    final = await pool.report(a.MediaDelete("call-rtp", "caller"))
    assert final.final and {q.leg_id: q.packets_from for q in final.quality}["caller"] == 25
    assert "call-rtp" not in pool.sessions


@pytest.mark.parametrize(
    ("srtp", "ice", "present", "absent"),
    [
        ("sdes", "remove", [b"RTP/SAVP", b"a=crypto:"], [b"a=fingerprint", b"NULL_HMAC"]),
        ("dtls", "force", [b"UDP/TLS/RTP/SAVP", b"a=fingerprint", b"a=candidate"], [b"a=crypto"]),
        ("optional", "remove", [b"RTP/AVP", b"a=crypto:"], [b"RTP/SAVP", b"a=fingerprint"]),
        ("off", "remove", [b"RTP/AVP"], [b"a=crypto", b"a=fingerprint", b"a=candidate"]),
    ],
)
async def test_the_offer_speaks_what_the_receiving_trunk_asks(
    pool: Rtpengines, srtp: str, ice: str, present: list[bytes], absent: list[bytes]
) -> None:
    offer = await pool.rewrite(
        a.MediaOffer(f"call-{srtp}", OFFER, "caller", "", a.Towards(srtp, ice))
    )
    assert isinstance(offer, e.MediaRewritten)
    for text in present:
        assert text in offer.sdp, (text, offer.sdp)
    for text in absent:
        assert text not in offer.sdp, (text, offer.sdp)
    await pool.report(a.MediaDelete(f"call-{srtp}", "caller"))


async def test_calls_spread_over_the_instances_and_stay_on_theirs(pool: Rtpengines) -> None:
    await anchored(pool, "call-a")
    await anchored(pool, "call-b")
    assert pool.sessions["call-a"].instance is not pool.sessions["call-b"].instance
    assert sorted(i.sessions for i in pool.instances) == [1, 1]
    for instance in pool.instances:
        assert gauge("tandem_edge_rtpengine_sessions", rtpengine=instance.address) == 1
    held = pool.sessions["call-a"].instance
    again = await pool.rewrite(a.MediaOffer("call-a", OFFER, "caller", "leg-1", PLAIN))
    assert isinstance(again, e.MediaRewritten) and again.rtpengine == held.address
    for call in ("call-a", "call-b"):
        await pool.report(a.MediaDelete(call, "caller"))
    assert [i.sessions for i in pool.instances] == [0, 0]


async def test_an_sdp_rtpengine_refuses_is_refused_with_its_reason(pool: Rtpengines) -> None:
    no_connection = OFFER.replace(b"c=IN IP4 127.0.0.2\r\n", b"")
    refused = await pool.rewrite(a.MediaOffer("call-bad", no_connection, "caller", "", PLAIN))
    assert refused == e.MediaRefused("Incomplete SDP specification")
    assert "call-bad" not in pool.sessions


async def test_an_instance_that_does_not_answer_is_skipped_and_marked_down(
    daemons: list[Rtpengine],
) -> None:
    dead = f"127.0.0.1:{free_port(kind=socket.SOCK_DGRAM)}"
    pool = await pool_of(dead, daemons[0].address, ping_s=30)  # no ping decides here
    try:
        loop = asyncio.get_running_loop()
        for call in ("call-skip-1", "call-skip-2"):  # turns: one of them tries the dead first
            started = loop.time()
            offer = await pool.rewrite(a.MediaOffer(call, OFFER, "caller", "", PLAIN))
            assert isinstance(offer, e.MediaRewritten) and offer.rtpengine == daemons[0].address
            assert loop.time() - started < 5  # one instance's retransmissions, no more
        assert not pool.instances[0].up and gauge("tandem_edge_rtpengine_up", rtpengine=dead) == 0
        # from then on a call goes to the live one first, at once
        started = loop.time()
        await anchored(pool, "call-next")
        assert loop.time() - started < 1.4  # not the dead one's 1.5 s of tries
        assert pool.sessions["call-next"].instance.address == daemons[0].address
    finally:
        await pool.stop()


async def test_no_instance_answering_is_unreachable(tmp_path: Path) -> None:
    dead = [f"127.0.0.1:{free_port(kind=socket.SOCK_DGRAM)}" for _ in range(2)]
    pool = await pool_of(*dead, ping_s=30)
    try:
        refused = await pool.rewrite(a.MediaOffer("call-none", OFFER, "caller", "", PLAIN))
        assert isinstance(refused, e.MediaRefused) and refused.unreachable
        assert all(address in refused.reason for address in dead)
        assert pool.sessions == {}
    finally:
        await pool.stop()


async def test_health_follows_pings_and_a_restart_loses_the_calls_it_held(
    daemons: list[Rtpengine],
) -> None:
    daemon = daemons[0]
    pool = await pool_of(daemon.address, ping_s=0.1)
    try:
        await anchored(pool, "call-restart")
        lost_before = (
            REGISTRY.get_sample_value(
                "tandem_edge_rtpengine_lost_sessions_total",
                {"edge": "edge-media-test", "rtpengine": daemon.address},
            )
            or 0
        )
        daemon.stop()
        await wait_for(lambda: not pool.instances[0].up, "down by its pings")
        assert gauge("tandem_edge_rtpengine_up", rtpengine=daemon.address) == 0
        daemon.start()  # the same address: a restart, without the calls it had
        await wait_for(lambda: pool.instances[0].up, "up again")
        report = await pool.report(a.MediaQuery("call-restart"))
        assert report.lost and not report.quality and not report.final
        lost_after = REGISTRY.get_sample_value(
            "tandem_edge_rtpengine_lost_sessions_total",
            {"edge": "edge-media-test", "rtpengine": daemon.address},
        )
        assert lost_after == lost_before + 1
        final = await pool.report(a.MediaDelete("call-restart", "caller"))
        assert final.final and final.lost and "call-restart" not in pool.sessions
    finally:
        await pool.stop()


async def wait_for(condition: object, what: str, timeout_s: float = 10.0) -> None:
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not {what} in {timeout_s} s"
        await asyncio.sleep(0.05)


async def test_an_anchored_call_through_two_edges_carries_its_figures_into_its_spans(
    make_system: MakeSystem, daemons: list[Rtpengine]
) -> None:
    """In process, two real edges and a real rtpengine: the gateway's trunk anchors; each
    phone gets rtpengine's address, the end carries both parties' figures, and both leg
    spans (the egress one on the other edge) have them as attributes."""
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    system = await make_system(
        {"media": {"rtpengine": [daemons[0].address]}}, gw1={"media": "anchor", "srtp": "sdes"}
    )
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL)
    out, b_addr = await gw1.request("INVITE")
    assert b"RTP/SAVP" in out.body and b"a=crypto:" in out.body  # SDES towards the gateway
    assert b"c=IN IP4 127.0.0.1" in out.body and b"127.0.0.2" not in out.body
    answer_sdp = (
        SDP.replace(b"127.0.0.2", b"127.0.0.3").replace(b"RTP/AVP", b"RTP/SAVP").rstrip(b"\r\n")
        + b"\r\n"
        + next(line for line in out.body.split(b"\r\n") if line.startswith(b"a=crypto:"))
        + b"\r\n"
    )
    gw1.answer(out, 200, b_addr, body=answer_sdp)
    answer = await pbx.response(200)
    assert b"RTP/AVP" in answer.body and b"a=crypto" not in answer.body  # plain to the PBX
    assert b"c=IN IP4 127.0.0.1" in answer.body and b"127.0.0.3" not in answer.body
    await system.ack_and_hang_up(invite, answer)

    events = await system.call_events()
    end = events[-1]
    assert end.media == "anchored"
    assert [(q.leg_id == "", q.protocol) for q in end.quality] == [
        (True, "RTP/AVP"),
        (False, "RTP/SAVP"),
    ]
    trace_id = int(events[0].trace_id, 16)

    def spans() -> dict[str, Any]:
        found = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        return {s.name: s for s in found}

    await wait_for(lambda: "egress leg" in spans(), "the egress leg's span, with its figures")
    egress, ingress, root = spans()["egress leg"], spans()["ingress leg"], spans()["call"]
    assert egress.attributes["media.protocol"] == "RTP/SAVP"
    assert egress.attributes["media.rtpengine"] == daemons[0].address
    assert ingress.attributes["media.protocol"] == "RTP/AVP"
    assert root.attributes["tandem.media"] == "anchored"
    assert "media.packets_from" in egress.attributes and "media.mos" in ingress.attributes
