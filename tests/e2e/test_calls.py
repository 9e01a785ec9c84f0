"""Real calls through tandem between real user agents: audio both ways on the bypassed
media path, RFC 4733 DTMF, hold and resume by re-INVITE, and failover between gateways."""

from __future__ import annotations

import time

import httpx
import pytest

from tandem.sim.client import SimClient
from tandem.traces import Span, render_tree
from tests.e2e.conftest import World
from tests.sim.calls import connected, flowing

pytestmark = pytest.mark.e2e

QUIET_S = 0.6  # 30 packets at 20 ms: no packet in that time means nobody sends


def call_up(caller: SimClient, callee: SimClient, calling: str, called: str) -> tuple[str, str]:
    """Place a call through tandem; wait until both ends are connected and hear each other."""
    out = caller.place_call(calling, called)
    caller.wait_call(out.id, connected, "answer")
    inbound = callee.wait_inbound(lambda c: c.state != "disconnected", "the call's far end")
    callee.wait_call(inbound.id, connected, "answer")
    caller.wait_call(out.id, flowing(), "RTP both ways")
    callee.wait_call(inbound.id, flowing(), "RTP both ways")
    return out.id, inbound.id


def talk(
    caller: SimClient, out: str, callee: SimClient, inbound: str, callee_hangs_up: bool = False
) -> None:
    """DTMF each way, then hold and resume by the caller, then one side hangs up."""
    caller.send_dtmf(out, "12#")
    assert callee.wait_call(inbound, lambda c: len(c.digits) >= 3, "DTMF").digits == "12#"
    callee.send_dtmf(inbound, "*9")
    got = caller.wait_call(out, lambda c: len(c.digits) >= 2, "DTMF")
    assert got.digits == "*9" and {d.method for d in got.dtmf_received} == {"rfc4733"}

    caller.hold(out)
    assert caller.wait_call(out, lambda c: c.media == "local_hold", "hold").media_direction == (
        "sendonly"
    )
    held = callee.wait_call(inbound, lambda c: c.media == "remote_hold", "hold")
    assert held.media_direction == "recvonly"
    time.sleep(QUIET_S)
    before = callee.call(inbound)
    time.sleep(QUIET_S)
    assert callee.call(inbound).rtp.tx_packets == before.rtp.tx_packets  # the held side is quiet

    caller.resume(out)
    caller.wait_call(out, connected, "resume")
    resumed = callee.wait_call(inbound, connected, "resume")
    callee.wait_call(inbound, flowing(resumed), "RTP both ways after resume")
    caller.wait_call(out, flowing(caller.call(out)), "RTP both ways after resume")

    ender, ender_id, other, other_id = (caller, out, callee, inbound)
    if callee_hangs_up:
        ender, ender_id, other, other_id = (callee, inbound, caller, out)
    ender.hangup(ender_id)
    ender.wait_call(ender_id, lambda c: c.ended, "end")
    other.wait_call(other_id, lambda c: c.ended, "BYE through tandem")


def test_pbx_phone_calls_the_pstn(world: World) -> None:
    out, inbound = call_up(world.hq, world.gw1, "0100", "+14255551234")
    at_gw = world.gw1.call(inbound)
    assert at_gw.called == "14255551234"  # the trunk's outbound translation
    talk(world.hq, out, world.gw1, inbound)


def test_pstn_calls_a_pbx_phone(world: World) -> None:
    out, inbound = call_up(world.gw1, world.hq, "2125550123", "14255550101")
    at_phone = world.hq.call(inbound)
    assert at_phone.local == "0101" and at_phone.called == "+14255550101"
    talk(world.gw1, out, world.hq, inbound, callee_hangs_up=True)


def test_phone_on_one_pbx_calls_a_phone_on_the_other(world: World) -> None:
    out, inbound = call_up(world.hq, world.branch, "0100", "+12065550150")
    assert world.branch.call(inbound).local == "0150"
    talk(world.hq, out, world.branch, inbound)


def test_a_failing_gateway_fails_over_to_the_second(world: World) -> None:
    out, inbound = call_up(world.hq, world.gw2, "0101", "+12065550503")
    failed = world.gw1.wait_inbound(lambda c: c.called == "12065550503", "the first attempt")
    assert failed.ended and failed.last_status == 503
    assert world.gw2.call(inbound).called == "12065550503"
    talk(world.hq, out, world.gw2, inbound, callee_hangs_up=True)


def test_a_failover_call_is_one_trace_across_its_legs(world: World) -> None:
    """The trace of a failover call: the root, the decision, the ingress leg and both egress
    attempts (the first failed with its reason), all in one trace, nothing orphaned."""
    out, inbound = call_up(world.hq, world.gw2, "0100", "+14255550503")
    sip_call_id = world.hq.call(out).sip_call_id
    world.hq.hangup(out)
    world.gw2.wait_call(inbound, lambda c: c.ended, "BYE through tandem")

    collector = world.tandem.config["telemetry"]["collector"]
    deadline = time.monotonic() + 15
    while True:
        reply = httpx.get(f"http://{collector}/v1/traces/{sip_call_id}", timeout=5)
        spans = [Span.from_json(s) for s in reply.json()] if reply.status_code == 200 else []
        egress = sorted(
            (s for s in spans if s.name == "egress leg"),
            key=lambda s: s.attributes["tandem.attempt"],
        )
        if len(egress) == 2 and any(s.name == "call" for s in spans):
            break
        assert time.monotonic() < deadline, f"incomplete trace: {[s.name for s in spans]}"
        time.sleep(0.2)

    assert len({s.trace_id for s in spans}) == 1
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert [r.name for r in roots] == ["call"]
    assert all(s.parent_id in ids for s in spans if s.parent_id), "an orphaned span"
    root = roots[0]
    assert root.attributes["tandem.ingress_trunk"] == "pbx-hq"
    assert root.attributes["sip.status"] == 200
    children = {s.name for s in spans if s.parent_id == root.span_id}
    assert {"ingress leg", "route.decide", "egress leg"} <= children
    decision = next(s for s in spans if s.name == "route.decide")
    assert decision.service == "tandem-router"
    assert decision.attributes["tandem.targets"] == ["pstn-gw1", "pstn-gw2"]
    first, second = egress
    assert first.attributes["tandem.trunk"] == "pstn-gw1"
    assert first.attributes["sip.status"] == 503
    assert first.attributes["tandem.failover_reason"]
    assert second.attributes["tandem.trunk"] == "pstn-gw2"
    assert second.attributes["sip.status"] == 200
    assert first.attributes["sip.call_id"] != second.attributes["sip.call_id"] != sip_call_id
    tree = render_tree(spans)
    assert tree.splitlines()[0].startswith("call [tandem-edge")
