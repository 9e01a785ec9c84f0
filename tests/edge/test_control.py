"""Control of the edge and its calls: drain, hangup over NATS, limits, the status API."""

from __future__ import annotations

import asyncio

import httpx

from tandem import bus
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, Response
from tests.edge.conftest import LOCAL, MakeSystem, System
from tests.edge.phones import SDP


async def answered_call(system: System) -> tuple[Request, Response, Request, tuple[str, int]]:
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL)
    out, addr = await gw1.request("INVITE")
    gw1.answer(out, 200, addr, body=SDP)
    answer = await pbx.response(200)
    pbx.in_dialog(invite, answer, "ACK", system.a)
    await gw1.request("ACK")
    return invite, answer, out, addr


async def test_drain_refuses_new_calls_and_waits_for_calls_in_progress(
    make_system: MakeSystem,
) -> None:
    system = await make_system()
    invite, answer, _, _ = await answered_call(system)
    transport = httpx.ASGITransport(app=system.edge_a.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as api:
        assert (await api.get("/readyz")).status_code == 200
        drain = asyncio.create_task(system.edge_a.drain())
        await asyncio.sleep(0.1)
        assert (await api.get("/readyz")).status_code == 503
    system.pbx.invite(system.a, LOCAL)
    refused = await system.pbx.final()
    assert refused.status == 503 and refused.headers.get("retry-after")
    assert not drain.done()  # the answered call goes on
    system.pbx.in_dialog(invite, answer, "BYE", system.a)
    bye, addr = await system.gw1.request("BYE")
    system.gw1.answer(bye, 200, addr)
    async with asyncio.timeout(3):
        await drain


async def test_hangup_over_nats_ends_both_sides(make_system: MakeSystem) -> None:
    system = await make_system()
    await answered_call(system)
    started = (await system.call_events(last="answered"))[0]
    reply = await bus.request(
        system.nc,
        bus.call_hangup(started.call_id),
        pb.Hangup(call_id=started.call_id, reason="operator"),
        pb.CommandReply,
    )
    assert reply.ok
    await system.pbx.request("BYE")
    await system.gw1.request("BYE")
    events = await system.call_events()
    assert events[-1].ended_by == "api"


async def test_a_trunk_at_its_call_limit_gets_503(make_system: MakeSystem) -> None:
    system = await make_system(pbx={"max_concurrent_calls": 1})
    await answered_call(system)
    system.pbx.invite(system.a, LOCAL)
    refused = await system.pbx.final()
    assert refused.status == 503 and refused.headers.get("retry-after")


async def test_the_status_page_lists_listeners_trunks_and_calls(make_system: MakeSystem) -> None:
    system = await make_system()
    await answered_call(system)
    transport = httpx.ASGITransport(app=system.edge_a.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as api:
        status = (await api.get("/v1/status")).json()
        metrics = (await api.get("/metrics")).text
    assert f"udp:127.0.0.1:{system.a[1]}" in status["listeners"]
    assert {t["id"] for t in status["trunks"]} == {"pbx", "gw3"}
    assert [c["state"] for c in status["calls"]] == ["answered"]
    assert 'tandem_edge_calls_active{edge="edge-a"} 1.0' in metrics
    for signal in ("lag", "queue", "routing"):  # the shedding signals, in seconds
        assert f'tandem_edge_load_seconds{{edge="edge-a",signal="{signal}"}} ' in metrics
    assert set(status["load"]) == {"lag_ms", "lag_limit_ms", "queue_ms", "queue_limit_ms",
                                   "routing_wait_ms", "routing_limit_ms"}  # fmt: skip
    assert "tandem_edge_sip_requests_total" in metrics


async def test_hangup_before_answer_cancels_the_leg(make_system: MakeSystem) -> None:
    system = await make_system()
    system.pbx.invite(system.a, LOCAL)
    out, addr = await system.gw1.request("INVITE")
    system.gw1.answer(out, 180, addr)
    await system.pbx.response(180)
    started = (await system.call_events(last="leg_progress"))[0]
    await system.nc.publish(
        bus.call_hangup(started.call_id), pb.Hangup(call_id=started.call_id).SerializeToString()
    )
    assert (await system.pbx.final()).status == 487
    cancel, _ = await system.gw1.request("CANCEL")
    assert cancel.call_id == out.call_id
