"""A trunk served by several edges: any of them admits its calls, its legs are spread over
the live ones and go to another at once when one is gone or drains, and one edge at a time
probes it (a lease), writing the trunk's one health record."""

from __future__ import annotations

import asyncio

from tandem import bus
from tandem.pb import tandem_pb2 as pb
from tests.edge.conftest import LOCAL, SAME_EDGE, MakeSystem, System
from tests.edge.phones import SDP

GW1_ON_TWO = {"edge": ["edge-b", "edge-c"]}


def port_of(system: System, edge_id: str) -> int:
    edge = system.edge_c if edge_id == "edge-c" else system.edge_b
    assert edge is not None
    return edge.transports.port


async def busy_call(system: System) -> int:
    """A call from the PBX that gw1 answers 486: the SIP port of the edge its leg came from."""
    pbx, gw1 = system.pbx, system.gw1
    pbx.invite(system.a, LOCAL)
    invite, addr = await gw1.request("INVITE")
    gw1.answer(invite, 486, addr)
    assert (await pbx.final()).status == 486
    return addr[1]


async def test_legs_are_spread_over_the_edges_and_either_admits_the_trunks_calls(
    make_system: MakeSystem,
) -> None:
    system = await make_system(edge_c=True, gw1=GW1_ON_TWO | {"pstn_usages": ["Local"]})
    edges = {port_of(system, "edge-b"): "edge-b", port_of(system, "edge-c"): "edge-c"}
    used = [edges[await busy_call(system)] for _ in range(4)]
    assert set(used) == {"edge-b", "edge-c"}, used

    for edge_id in ("edge-b", "edge-c"):  # gw1 calls in through each of its edges
        gw1, gw3 = system.gw1, system.gw3
        gw1.invite(("127.0.0.1", port_of(system, edge_id)), SAME_EDGE)
        invite, addr = await gw3.request("INVITE")  # routed: admitted as gw1
        gw3.answer(invite, 486, addr)
        assert (await gw1.final()).status == 486


async def test_a_gone_edge_costs_no_call_the_next_leg_goes_to_the_other(
    make_system: MakeSystem,
) -> None:
    system = await make_system(edge_c=True, gw1=GW1_ON_TWO)
    await system.edge_b.stop()  # its subscriptions are gone: as if it had died
    started = asyncio.get_running_loop().time()
    ports = {await busy_call(system) for _ in range(3)}
    assert ports == {port_of(system, "edge-c")}
    assert asyncio.get_running_loop().time() - started < 2.0
    events = await system.call_events(within=2)  # the first call's: the edge tried elsewhere
    failed = [(e.status, e.failure) for e in events if e.kind == pb.CallEvent.LEG_FAILED]
    assert failed == [(486, "response")]  # gw1's busy, not a transport_error


async def test_a_draining_edge_is_passed_over_for_the_trunks_other(
    make_system: MakeSystem,
) -> None:
    system = await make_system(edge_c=True, gw1=GW1_ON_TWO)
    system.edge_b.inbound.draining = True  # it refuses new legs: "edge draining"
    ports = {await busy_call(system) for _ in range(3)}
    assert ports == {port_of(system, "edge-c")}


async def test_one_edge_probes_a_shared_trunk_and_another_takes_over_when_it_stops(
    make_system: MakeSystem,
) -> None:
    system = await make_system(edge_c=True, gw1=GW1_ON_TWO | {"options_interval_s": 0.2})
    gw1 = system.gw1

    async def probers(seconds: float) -> set[int]:
        ports = set()
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                probe, addr = await gw1.request("OPTIONS", within=left)
            except TimeoutError:
                break
            gw1.answer(probe, 200, addr)
            ports.add(addr[1])
        return ports

    (first,) = await probers(2.0)
    holder = system.edge_b if first == port_of(system, "edge-b") else system.edge_c
    other = system.edge_c if holder is system.edge_b else system.edge_b
    assert other is not None and holder is not None
    kv = await system.js.key_value(bus.TRUNK_HEALTH_BUCKET)
    health = pb.TrunkHealth.FromString((await kv.get("gw1")).value or b"")
    assert health.edge == holder.edge_id and health.up
    status = next(t for t in other.status()["trunks"] if t["id"] == "gw1")
    assert status["up"] is True and f"probed by {holder.edge_id}" in status["health"]

    await holder.stop()  # gives the lease up: the other probes from its next round
    await probers(0.5)  # what was in flight
    assert await probers(2.0) == {other.transports.port}
    health = pb.TrunkHealth.FromString((await kv.get("gw1")).value or b"")
    assert health.edge == other.edge_id


async def test_a_call_answered_through_the_second_edge_is_relayed_and_hung_up(
    make_system: MakeSystem,
) -> None:
    """Every in-dialog command reaches the edge that runs the leg, not the first listed."""
    system = await make_system(edge_c=True, gw1={"edge": ["edge-c", "edge-b"]})
    system.edge_c.inbound.draining = True  # type: ignore[union-attr]
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL)
    out, addr = await gw1.request("INVITE")
    assert addr[1] == port_of(system, "edge-b")
    gw1.answer(out, 200, addr, body=SDP)
    answer = await pbx.response(200)
    pbx.in_dialog(invite, answer, "ACK", system.a)
    await gw1.request("ACK")
    pbx.in_dialog(invite, answer, "BYE", system.a)
    bye, addr = await gw1.request("BYE")
    assert addr[1] == port_of(system, "edge-b")
    gw1.answer(bye, 200, addr)
    assert (await pbx.final("BYE")).status == 200
    events = await system.call_events()
    answered = next(e for e in events if e.kind == pb.CallEvent.LEG_ANSWERED)
    assert answered.leg_edge == "edge-b"  # its record says which edge carried the leg
