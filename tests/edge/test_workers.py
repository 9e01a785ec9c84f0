"""Edges as workers on one SIP address (SO_REUSEPORT, `own_port`): the kernel hands each
new flow to one of them, and everything after the first request of a call (responses,
ACK, BYE, in either direction) comes back to the worker that has the call, through the
port of its own that its Via and Contact name. Answers to what came to the shared
address leave from it (RFC 3581 4); requests leave from the worker's own port."""

from __future__ import annotations

import asyncio

from tandem.sip import Response
from tandem.sip.headers import Via
from tests.conftest import sip_port
from tests.edge.conftest import LOCAL, SAME_EDGE, MakeSystem, System, closer
from tests.edge.phones import SDP, Phone

CALLERS = 12  # gw1's calls, each from a socket of its own: both workers get some (1 - 2^-11)


async def workers(make_system: MakeSystem) -> tuple[System, int, dict[int, str]]:
    """edge-b and edge-c share one address and serve gw1; their own ports, by edge."""
    shared, own_b, own_c = sip_port(), sip_port(), sip_port()
    system = await make_system(
        edge_c=True,
        edges={
            "edge-b": {"sip": f"127.0.0.1:{shared}", "own_port": own_b},
            "edge-c": {"sip": f"127.0.0.1:{shared}", "own_port": own_c},
        },
        gw1={"edge": ["edge-b", "edge-c"], "pstn_usages": ["Local"]},
    )
    return system, shared, {own_b: "edge-b", own_c: "edge-c"}


async def final_with_source(phone: Phone) -> tuple[Response, tuple[str, int]]:
    message, addr = await phone.wait(lambda m: isinstance(m, Response) and m.status >= 200)
    assert isinstance(message, Response)
    return message, addr


async def test_calls_in_are_spread_and_each_dialog_comes_back_to_its_worker(
    make_system: MakeSystem,
) -> None:
    system, shared, own = await workers(make_system)
    gw3, taken, callers = system.gw3, [], []
    for _ in range(CALLERS):
        caller = await Phone.open("127.0.0.3")  # gw1, from a new port: a new flow
        system.closers.append(closer(caller))
        callers.append(caller)
        invite = caller.invite(("127.0.0.1", shared), SAME_EDGE)
        leg, addr = await gw3.request("INVITE")
        gw3.answer(leg, 200, addr, body=SDP)
        answer, source = await final_with_source(caller)
        assert answer.status == 200
        assert source[1] == shared  # the answer leaves from where the INVITE came
        contact = answer.contacts[0].uri
        assert contact.port in own  # the worker that has the call names its own port
        taken.append(own[contact.port])
        worker = ("127.0.0.1", contact.port)
        caller.in_dialog(invite, answer, "ACK", worker)
        await gw3.request("ACK")
        caller.in_dialog(invite, answer, "BYE", worker)
        bye_ok, source = await final_with_source(caller)
        assert (bye_ok.status, bye_ok.cseq.method, source) == (200, "BYE", worker)
        bye, addr = await gw3.request("BYE")
        gw3.answer(bye, 200, addr)
    assert set(taken) == {"edge-b", "edge-c"}, taken
    # the ACK came to the worker's own port, the 200 left from the shared one: it still
    # stopped the 200's retransmissions (timer G, first at T1 = 0.5 s)
    await asyncio.sleep(0.6)
    for caller in callers:
        while not caller.inbox.empty():
            message, _ = caller.inbox.get_nowait()
            assert not (isinstance(message, Response) and message.cseq.method == "INVITE")
    for edge in (system.edge_b, system.edge_c):
        assert edge is not None and not edge.registry.calls  # every call ended where it ran


async def test_a_leg_out_leaves_from_its_workers_own_port_and_the_callee_reaches_it_there(
    make_system: MakeSystem,
) -> None:
    system, shared, own = await workers(make_system)
    pbx, gw1, used = system.pbx, system.gw1, set()
    for _ in range(4):  # the legs are spread over both workers
        invite = pbx.invite(system.a, LOCAL)
        leg, addr = await gw1.request("INVITE")
        assert addr[1] in own and addr[1] != shared
        via = Via.parse(leg.headers.get("via") or "")
        assert via.port == addr[1]  # responses come back to the worker without rport
        assert leg.contacts[0].uri.port == addr[1]
        used.add(own[addr[1]])
        gw1.answer(leg, 200, addr, body=SDP)
        ok = await pbx.final()
        assert ok.status == 200
        pbx.in_dialog(invite, ok, "ACK", system.a)
        await gw1.request("ACK")
        gw1.callee_request(leg, "BYE", addr)  # the callee hangs up, to the worker's port
        bye_ok, source = await final_with_source(gw1)
        assert (bye_ok.status, source) == (200, addr)
        bye, at = await pbx.request("BYE")
        pbx.answer(bye, 200, at)
    assert used == {"edge-b", "edge-c"}
