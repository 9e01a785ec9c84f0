"""Records and CDRs of calls driven by real events over NATS, and redelivered events."""

from __future__ import annotations

from nats.js import JetStreamContext

from tandem.callstate.service import Service
from tandem.pb import tandem_pb2 as pb
from tests.callstate.conftest import cdrs, counters, eventually, settled
from tests.callstate.edge import T0, FakeEdge


async def test_a_call_with_failover_gives_its_record_and_one_cdr(
    callstate: Service, edge: FakeEdge, js: JetStreamContext
) -> None:
    sent = await edge.call("c1", end=False)
    await eventually(lambda: "c1" in callstate.calls and callstate.calls["c1"].last_seq == 8)
    call = callstate.calls["c1"]
    assert call.state == pb.CallState.ANSWERED
    assert call.answer_unix_ms == T0 + 10 + 200 + 1000
    assert [(a.trunk, a.status) for a in call.attempts] == [("gw1", 503), ("gw2", 200)]
    assert [e.kind for e in call.timeline] == [e.kind for e in sent]
    kv = await js.key_value("TANDEM_CALLS")
    assert (await kv.get("c1")).value == call.SerializeToString()  # durable, as in memory

    await edge.event("c1", "ended", time_unix_ms=call.answer_unix_ms + 42_500, ended_by="callee")
    await eventually(lambda: "c1" not in callstate.calls)
    await eventually(lambda: callstate.cdrs_written == 1)
    [cdr] = await cdrs(js)
    assert cdr.call_id == "c1"
    assert list(cdr.sip_call_ids) == ["in-c1@pbx", "out-c1-leg1@tandem", "out-c1-leg2@tandem"]
    assert (cdr.ingress_trunk, cdr.egress_trunk) == ("pbx", "gw2")
    assert [(a.trunk, a.status, a.reason) for a in cdr.attempts] == [
        ("gw1", 503, "Service Unavailable"),
        ("gw2", 200, "OK"),
    ]
    assert cdr.attempts[0].start_unix_ms == T0 + 10
    assert cdr.attempts[0].end_unix_ms == T0 + 110
    assert cdr.attempts[1].end_unix_ms == cdr.end_unix_ms  # the answered leg ends with the call
    assert (cdr.called_received, cdr.calling_received) == ("5551234", "201")
    assert (cdr.called_sent, cdr.calling_sent) == ("+15551234", "+442071234567")
    assert cdr.invite_unix_ms == T0
    assert cdr.duration_s == 42.5
    assert (cdr.final_status, cdr.final_reason, cdr.ended_by) == (200, "OK", "callee")
    assert cdr.failover_count == 1
    assert cdr.trace_id == "trace-c1"
    assert (cdr.usage, cdr.route, cdr.edge) == ("international", "to-pstn", "edge-a")
    assert await callstate.store.is_finished("c1")  # the record's delete marker


async def test_counters_for_the_router(
    callstate: Service, edge: FakeEdge, js: JetStreamContext
) -> None:
    await edge.call("c1", answer=False)  # ringing on gw2 after a 503 on gw1
    await eventually(
        lambda: "c1" in callstate.calls and callstate.calls["c1"].state == pb.CallState.RINGING
    )

    async def gw2_up() -> bool:
        return (await counters(js, "gw2")).active_out == 1

    await eventually(gw2_up, 3.0)  # the router's figures are current within a second
    pbx, gw1, gw2 = [await counters(js, t) for t in ("pbx", "gw1", "gw2")]
    assert (pbx.active_in, pbx.active_out, pbx.attempts) == (1, 0, 1)
    assert (gw1.active_out, gw1.attempts, dict(gw1.failures)) == (0, 1, {503: 1})
    assert (gw2.active_out, gw2.attempts, gw2.peak_active) == (1, 1, 1)

    await edge.event("c1", "ended", ended_by="caller", status=487, reason="Request Terminated")
    await eventually(lambda: not callstate.calls)

    async def gw2_down() -> bool:
        return (await counters(js, "gw2")).active_out == 0

    await eventually(gw2_down, 3.0)
    await settled(callstate)
    gw2 = await counters(js, "gw2")
    assert (gw2.active_out, gw2.peak_active) == (0, 1)
    [cdr] = await cdrs(js)
    assert (cdr.final_status, cdr.egress_trunk, cdr.duration_s) == (487, "", 0)


async def test_a_redelivered_event_changes_nothing(
    callstate: Service, edge: FakeEdge, js: JetStreamContext
) -> None:
    sent = await edge.call("c1", end=False)
    await eventually(lambda: "c1" in callstate.calls and callstate.calls["c1"].last_seq == 8)
    before = callstate.calls["c1"].SerializeToString()
    figures = callstate.trunk_stats("gw1")
    for event in sent:  # every event once more, as a redelivery after a lost ack would
        await edge.republish(event)
    marker = await edge.event("other", "started")
    await eventually(lambda: "other" in callstate.calls)  # everything before it is consumed
    assert marker.seq == 1
    assert callstate.calls["c1"].SerializeToString() == before
    assert callstate.trunk_stats("gw1") == figures

    ended = await edge.event("c1", "ended", ended_by="caller")
    await eventually(lambda: "c1" not in callstate.calls)
    await edge.republish(ended)
    await edge.republish(sent[0])  # a replayed `started` must not bring the call back
    await edge.event("other", "ended", ended_by="caller")
    await eventually(lambda: "other" not in callstate.calls)
    await settled(callstate)
    assert "c1" not in callstate.calls
    assert sorted(c.call_id for c in await cdrs(js)) == ["c1", "other"]
    assert callstate.trunk_stats("pbx")["attempts"] == 2


async def test_markers_of_calls_ended_long_ago_are_purged(
    callstate: Service, edge: FakeEdge, js: JetStreamContext
) -> None:
    await edge.call("old")
    await edge.call("up", end=False)
    await eventually(lambda: callstate.cdrs_written == 1 and "up" in callstate.calls)
    assert await callstate.store.purge_markers(older_than_s=3600) == 0  # too recent
    assert await callstate.store.is_finished("old")
    assert await callstate.store.purge_markers(older_than_s=0) == 1
    assert not await callstate.store.is_finished("old")
    assert await callstate.store.get_call("up") == callstate.calls["up"]  # live records stay
