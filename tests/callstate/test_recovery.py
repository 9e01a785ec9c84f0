"""callstate killed or replaced at any moment: no call missed, no CDR written twice."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from nats.js import JetStreamContext

from tandem import bus
from tandem.callstate import records
from tandem.callstate.service import Service
from tandem.pb import tandem_pb2 as pb
from tests.callstate.conftest import Callstates, cdrs, counters, eventually, settled
from tests.callstate.edge import T0, FakeEdge
from tests.conftest import NatsServer

CALLS = 200
WAVE = 20


async def place_calls(edge: FakeEdge, ids: list[str]) -> None:
    """Calls in waves of concurrent calls, their events interleaved on the stream."""
    for start in range(0, len(ids), WAVE):
        wave = ids[start : start + WAVE]
        await asyncio.gather(*(edge.call(i, t0=T0 + n * 1000) for n, i in enumerate(wave)))
        await asyncio.sleep(0.02)


async def test_killed_in_the_middle_of_200_calls_misses_none_and_writes_no_cdr_twice(
    callstates: Callstates, edge: FakeEdge, js: JetStreamContext
) -> None:
    edge.start_heartbeats()
    first = await callstates.start()
    ids = [f"call{n:03}" for n in range(CALLS)]
    placing = asyncio.create_task(place_calls(edge, ids))
    await eventually(lambda: first.cdrs_written >= 30)
    await callstates.kill(first)  # mid-batch, acks and writes in flight
    assert not placing.done()
    second = await callstates.start()
    await placing

    async def all_written() -> bool:
        return len(await cdrs(js)) >= CALLS and not second.calls

    await eventually(all_written, 20)
    await asyncio.sleep(0.3)  # anything late would show now
    written = await cdrs(js)
    assert sorted(c.call_id for c in written) == ids  # every call, each once
    assert {(c.final_status, c.failover_count, c.duration_s, c.egress_trunk) for c in written} == {
        (200, 1, 60.0, "gw2")
    }
    pbx, gw1, gw2 = (second.trunk_stats(t) for t in ("pbx", "gw1", "gw2"))
    assert (pbx["attempts"], pbx["answered"], pbx["active"]) == (CALLS, CALLS, 0)
    assert (gw1["attempts"], gw1["answered"], gw1["failures"]) == (CALLS, 0, {"503": CALLS})
    assert (gw2["attempts"], gw2["answered"], gw2["acd_s"]) == (CALLS, CALLS, 60.0)

    async def router_sees_it() -> bool:
        got = await counters(js, "pbx")
        return (got.attempts, got.answered, got.active_in) == (CALLS, CALLS, 0)

    await eventually(router_sees_it, 3.0)


async def test_a_cdr_written_just_before_a_kill_is_not_written_again(
    callstates: Callstates, edge: FakeEdge, js: JetStreamContext
) -> None:
    first = await callstates.start()
    await edge.call("c1", end=False)
    await eventually(lambda: "c1" in first.calls and first.calls["c1"].last_seq == 8)
    call = pb.ActiveCall()
    call.CopyFrom(first.calls["c1"])
    await callstates.kill(first)
    ended = await edge.event("c1", "ended", ended_by="caller", time_unix_ms=T0 + 90_000)
    # the dead leader had written the CDR but not yet deleted the record; long enough ago
    # that the stream's duplicate window no longer protects us (hence another message id)
    records.apply(call, ended)
    await js.publish(
        bus.cdr("pbx"), records.cdr(call, ended).SerializeToString(), headers={"Nats-Msg-Id": "x"}
    )

    second = await callstates.start()
    await eventually(lambda: "c1" not in second.calls)
    await edge.event("c2", "started")  # a marker: everything before it is consumed
    await eventually(lambda: "c2" in second.calls)
    await settled(second)
    assert [c.call_id for c in await cdrs(js)] == ["c1"]
    assert await second.store.is_finished("c1")
    assert second.trunk_stats("pbx")["attempts"] == 2  # c1 once, c2


async def test_two_replicas_one_leads_and_the_other_takes_over(
    callstates: Callstates, edge: FakeEdge, js: JetStreamContext
) -> None:
    first = await callstates.start()
    standby = await callstates.start(wait=False)
    await asyncio.sleep(1.0)
    assert first.leading and not standby.leading

    ids = [f"call{n:03}" for n in range(100)]
    await place_calls(edge, ids[:50])
    await edge.call("long", end=False)
    await eventually(
        lambda: (
            first.cdrs_written == 50 and "long" in first.calls and first.calls["long"].last_seq == 8
        )
    )
    await settled(first)
    transport = httpx.ASGITransport(app=standby.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://standby") as client:
        # the standby serves the API from what the leader keeps in NATS
        assert (await client.get("/readyz")).status_code == 200
        calls = (await client.get("/v1/calls")).json()["calls"]
        assert [c["call_id"] for c in calls] == ["long"]
        assert (await client.get("/v1/calls/long")).json()["state"] == "answered"

        async def same_stats() -> bool:
            served = (await client.get("/v1/stats")).json()["trunks"]
            return bool(served == first.all_stats())

        await eventually(same_stats, 5.0)

    await callstates.shut_down(first)  # SIGTERM: the lease is handed on at once
    await eventually(lambda: standby.leading, 5.0)
    await eventually(lambda: "long" in standby.calls)
    await place_calls(edge, ids[50:])
    await edge.event("long", "ended", ended_by="callee")

    async def all_written() -> bool:
        return len(await cdrs(js)) >= 101 and not standby.calls

    await eventually(all_written, 10)
    assert sorted(c.call_id for c in await cdrs(js)) == sorted([*ids, "long"])


async def test_a_leader_whose_record_was_changed_by_another_is_fenced(
    callstate: Service, edge: FakeEdge, js: JetStreamContext
) -> None:
    await edge.call("c1", end=False)
    await eventually(lambda: "c1" in callstate.calls and callstate.calls["c1"].last_seq == 8)
    # another leader ended the call meanwhile (deleted its record) and wrote its CDR
    kv = await js.key_value(bus.ACTIVE_CALLS_BUCKET)
    await kv.delete("c1")
    await edge.event("c1", "ended", ended_by="caller")  # would end it again, and write a CDR
    await edge.event("c2", "started")
    await eventually(lambda: "c2" in callstate.calls and callstate.leading, 10.0)
    await settled(callstate)
    assert "c1" not in callstate.calls
    assert await cdrs(js) == []  # the fenced leader wrote nothing for c1
    assert await callstate.store.is_finished("c1")


async def test_a_call_ended_just_before_a_kill_gets_its_cdr_once(
    callstates: Callstates, edge: FakeEdge, js: JetStreamContext
) -> None:
    first = await callstates.start()
    await edge.call("c1", end=False)
    await eventually(lambda: "c1" in first.calls and first.calls["c1"].last_seq == 8)
    call = pb.ActiveCall()
    call.CopyFrom(first.calls["c1"])
    await callstates.kill(first)
    ended = await edge.event("c1", "ended", ended_by="callee", time_unix_ms=T0 + 70_000)
    # the dead leader had written the ended record, and died before writing the CDR
    records.apply(call, ended)
    kv = await js.key_value(bus.ACTIVE_CALLS_BUCKET)
    await kv.put("c1", call.SerializeToString())

    second = await callstates.start()
    await edge.event("c2", "started")
    await eventually(lambda: "c2" in second.calls)
    await settled(second)
    [cdr] = await cdrs(js)
    assert (cdr.call_id, cdr.ended_by, cdr.end_unix_ms) == ("c1", "callee", T0 + 70_000)
    assert "c1" not in second.calls


async def test_a_nats_restart_loses_no_call_and_doubles_no_cdr(
    callstates: Callstates, nats_server: NatsServer, edge: FakeEdge, js: JetStreamContext
) -> None:
    service = await callstates.start()
    ids = [f"call{n:03}" for n in range(60)]
    await place_calls(edge, ids[:30])
    await edge.call("across", end=False)  # up while NATS restarts
    await eventually(lambda: service.cdrs_written == 30 and "across" in service.calls)
    nats_server.stop()
    await asyncio.sleep(0.5)
    nats_server.start()
    await eventually(lambda: edge.nc.is_connected and service.ctx.nc.is_connected, 10.0)
    await place_calls(edge, ids[30:])
    await edge.event("across", "ended", ended_by="caller")

    async def all_written() -> bool:
        return len(await cdrs(js)) >= 61 and not service.calls and service.leading

    await eventually(all_written, 20.0)
    await settled(service)
    assert sorted(c.call_id for c in await cdrs(js)) == sorted([*ids, "across"])
    assert service.trunk_stats("pbx")["attempts"] == 61


async def test_a_leader_that_loses_its_lease_mid_batch_writes_no_cdr_twice(
    callstates: Callstates, edge: FakeEdge, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # only the fences may protect here: the stream's duplicate window would hide a second CDR
    info = await js.stream_info(bus.CDR_STREAM)
    await js.update_stream(info.config.evolve(duplicate_window=0.2))
    first = await callstates.start()
    standby = await callstates.start(wait=False)
    stalled, resume = asyncio.Event(), asyncio.Event()
    put_call, renew = first.store.put_call, first.lease.renew  # type: ignore[union-attr]

    async def slow_network_put(call: pb.ActiveCall) -> None:  # written, the answer held up
        await put_call(call)
        if call.state == records.State.ENDED:
            stalled.set()
            await resume.wait()

    async def cut_off_renew() -> bool:  # nor do its lease renewals get through meanwhile
        await resume.wait()
        return await renew()

    monkeypatch.setattr(first.store, "put_call", slow_network_put)
    monkeypatch.setattr(first.lease, "renew", cut_off_renew)
    await edge.call("c1")  # the whole call: its end is in the batch that stalls
    await eventually(lambda: stalled.is_set())
    await eventually(lambda: standby.leading, 10)

    async def written_by_standby() -> bool:
        return [c.call_id for c in await cdrs(js)] == ["c1"]

    await eventually(written_by_standby, 10)
    await asyncio.sleep(0.5)  # past the duplicate window
    resume.set()  # the first leader goes on with its batch, its lease long gone
    await eventually(lambda: not first.leading, 5)
    await edge.call("c2")  # a marker: the standby keeps leading and writing
    await eventually(lambda: asyncio.sleep(0, standby.cdrs_written >= 2), 10)
    assert sorted(c.call_id for c in await cdrs(js)) == ["c1", "c2"]  # each once
