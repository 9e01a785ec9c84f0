"""Calls of an edge that disappears, or that forgets them, are closed with the cause "edge lost"."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js import JetStreamContext

from tests.callstate.conftest import Callstates, cdrs, eventually, settled
from tests.callstate.edge import FakeEdge


async def test_an_edge_that_stops_heartbeating_has_its_calls_closed(
    callstates: Callstates, nc: Client, js: JetStreamContext
) -> None:
    service = await callstates.start(edge_lost_s=1.0)
    lost, alive = FakeEdge(nc, js, "edge-lost"), FakeEdge(nc, js, "edge-alive")
    lost.start_heartbeats()
    alive.start_heartbeats()
    await lost.call("answered", end=False)
    await lost.call("ringing", answer=False)
    await alive.call("kept", end=False)
    await eventually(lambda: len(service.calls) == 3)

    await lost.stop_heartbeats()
    await eventually(lambda: set(service.calls) == {"kept"} and service.cdrs_written == 2, 10.0)
    by_id = {c.call_id: c for c in await cdrs(js)}
    assert set(by_id) == {"answered", "ringing"}
    answered, ringing = by_id["answered"], by_id["ringing"]
    assert (answered.ended_by, answered.final_status, answered.final_reason) == (
        "edge_lost",
        200,
        "edge lost",
    )
    assert answered.duration_s > 0
    assert (ringing.ended_by, ringing.final_status, ringing.final_reason) == (
        "edge_lost",
        0,
        "edge lost",
    )
    # the lost edge comes back and ends its call: already closed, nothing changes
    await lost.event("answered", "ended", ended_by="caller")
    await alive.event("marker", "started")
    await eventually(lambda: "marker" in service.calls)
    await settled(service)
    assert len(await cdrs(js)) == 2
    assert "kept" in service.calls  # its edge kept listing it
    await lost.close()
    await alive.close()


async def test_a_call_its_edge_stops_listing_is_closed(
    callstates: Callstates, edge: FakeEdge, js: JetStreamContext
) -> None:
    service = await callstates.start(edge_lost_s=1.0)
    edge.start_heartbeats()
    await edge.call("forgotten", end=False)
    await edge.call("listed", end=False)
    await eventually(lambda: len(service.calls) == 2)
    edge.calls.discard("forgotten")  # the edge restarted and lost it: no `ended` will come
    await eventually(lambda: set(service.calls) == {"listed"} and service.cdrs_written == 1, 10.0)
    [cdr] = await cdrs(js)
    assert (cdr.call_id, cdr.ended_by) == ("forgotten", "edge_lost")


async def test_an_edge_never_heard_from_after_a_restart_times_out(
    callstates: Callstates, edge: FakeEdge, js: JetStreamContext
) -> None:
    first = await callstates.start(edge_lost_s=30.0)
    await edge.call("orphan", end=False)  # no heartbeat ever
    await eventually(lambda: "orphan" in first.calls and first.calls["orphan"].last_seq == 8)
    await callstates.shut_down(first)
    second = await callstates.start(edge_lost_s=1.0)
    assert "orphan" in second.calls
    await eventually(lambda: not second.calls and second.cdrs_written == 1, 10.0)
    [cdr] = await cdrs(js)
    assert cdr.ended_by == "edge_lost"
