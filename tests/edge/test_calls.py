"""Calls through two edges and the real router: relay, failover, CANCEL, call events."""

from __future__ import annotations

import asyncio
import gc
import weakref

from tandem import bus
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, Response, StreamFramer, make_response, parse
from tests.edge.conftest import LOCAL, MakeSystem, System
from tests.edge.phones import SDP


async def test_a_call_is_relayed_end_to_end(make_system: MakeSystem) -> None:
    system = await make_system()
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL)
    trying = await pbx.response(100, within=0.5)
    assert trying.call_id == invite.call_id

    out, b_addr = await gw1.request("INVITE")
    assert out.call_id != invite.call_id
    assert out.request_uri.user == LOCAL
    assert out.to.uri.user == LOCAL
    assert out.from_.uri.user == "+14255550100"
    assert out.body == SDP
    assert out.max_forwards == 69
    head = bytes(out).partition(b"\r\n\r\n")[0]
    assert b"127.0.0.2" not in head and invite.call_id.encode() not in head  # no topology leak
    assert (out.headers.get("user-agent") or "").startswith("tandem/")

    gw1.answer(out, 180, b_addr)
    ringing = await pbx.response(180)
    gw1.answer(out, 200, b_addr, body=SDP)
    answer = await pbx.response(200)
    assert answer.body == SDP
    assert ringing.to.tag == answer.to.tag
    assert out.call_id not in str(bytes(answer))

    pbx.in_dialog(invite, answer, "ACK", system.a)
    ack, _ = await gw1.request("ACK")
    assert ack.call_id == out.call_id

    pbx.in_dialog(invite, answer, "BYE", system.a)
    assert (await pbx.final("BYE")).status == 200
    bye, addr = await gw1.request("BYE")
    gw1.answer(bye, 200, addr)

    events = await system.call_events()
    kinds = [bus.CALL_EVENT_KINDS[e.kind] for e in events]
    assert kinds == [
        "started",
        "routed",
        "leg_attempt",
        "leg_progress",
        "leg_answered",
        "answered",
        "ended",
    ]
    assert [e.seq for e in events] == list(range(1, 8))
    assert events[0].sip_call_id == invite.call_id
    assert events[2].sip_call_id == out.call_id and events[2].trunk == "gw1"
    assert events[-1].ended_by == "caller"
    assert all(e.trace_id == events[0].trace_id != "" for e in events)


async def test_503_fails_over_to_the_next_gateway(make_system: MakeSystem) -> None:
    system = await make_system()
    pbx, gw1, gw2 = system.pbx, system.gw1, system.gw2
    pbx.invite(system.a, LOCAL)
    first, addr = await gw1.request("INVITE")
    gw1.answer(first, 503, addr)
    second, addr2 = await gw2.request("INVITE")
    assert second.call_id != first.call_id
    gw2.answer(second, 486, addr2)
    final = await pbx.final()
    assert final.status == 486  # not a failover code: relayed, no third attempt
    events = await system.call_events()
    failed = [e for e in events if e.kind == pb.CallEvent.LEG_FAILED]
    assert [(e.trunk, e.status) for e in failed] == [("gw1", 503), ("gw2", 486)]


async def test_a_silent_gateway_fails_over_after_its_timer(make_system: MakeSystem) -> None:
    system = await make_system(gw1={"failover_timer_s": 0.5})
    pbx, gw1, gw2 = system.pbx, system.gw1, system.gw2
    pbx.invite(system.a, LOCAL)
    first, addr = await gw1.request("INVITE")
    gw1.answer(first, 100, addr)  # a 100 does not stop the failover timer: only 18x does
    second, addr = await gw2.request("INVITE", within=2.0)
    gw2.answer(second, 200, addr, body=SDP)
    assert (await pbx.final()).status == 200


async def _silent_until_failover(system: System) -> tuple[Request, tuple[str, int]]:
    """The call's INVITE to gw1, unanswered until the edge has failed over to gw2."""
    pbx, gw1, gw2 = system.pbx, system.gw1, system.gw2
    pbx.invite(system.a, LOCAL)
    first, addr = await gw1.request("INVITE")
    await gw2.request("INVITE", within=2.0)  # the failover timer fired (0.7 s)
    while not gw1.inbox.empty():  # what reached gw1 before (timer A's resend at 0.5 s)
        gw1.inbox.get_nowait()
    # timer A would resend at 1.5 s and 3.5 s: nothing may reach the silent gateway
    assert await gw1.silent(lambda m: isinstance(m, Request) and m.method == "INVITE", 2.0)
    return first, addr


async def test_failover_stops_the_invite_to_the_silent_gateway(make_system: MakeSystem) -> None:
    system = await make_system(gw1={"failover_timer_s": 0.7})
    first, addr = await _silent_until_failover(system)
    # no provisional came, so no CANCEL either (RFC 3261 9.1) ...
    assert await system.gw1.silent(lambda m: isinstance(m, Request), 0.2)
    # ... until a late one does: it is CANCELled at once
    system.gw1.answer(first, 180, addr)
    cancel, addr = await system.gw1.request("CANCEL")
    assert cancel.call_id == first.call_id
    system.gw1.answer(cancel, 200, addr)
    system.gw1.answer(first, 487, addr)
    ack, _ = await system.gw1.request("ACK")
    assert ack.cseq.number == first.cseq.number


async def test_a_late_2xx_from_the_silent_gateway_is_acked_and_ended(
    make_system: MakeSystem,
) -> None:
    system = await make_system(gw1={"failover_timer_s": 0.7})
    first, addr = await _silent_until_failover(system)
    system.gw1.answer(first, 200, addr, body=SDP)
    ack, _ = await system.gw1.request("ACK")
    bye, addr = await system.gw1.request("BYE")
    assert ack.call_id == bye.call_id == first.call_id
    system.gw1.answer(bye, 200, addr)


async def test_failover_after_a_100_cancels_the_invite(make_system: MakeSystem) -> None:
    system = await make_system(gw1={"failover_timer_s": 0.7})
    gw1 = system.gw1
    system.pbx.invite(system.a, LOCAL)
    first, addr = await gw1.request("INVITE")
    gw1.answer(first, 100, addr)
    await system.gw2.request("INVITE", within=2.0)
    cancel, addr = await gw1.request("CANCEL")
    assert cancel.call_id == first.call_id
    gw1.answer(cancel, 200, addr)
    gw1.answer(first, 487, addr)
    await gw1.request("ACK")
    assert await gw1.silent(lambda m: isinstance(m, Request) and m.method == "INVITE", 2.0)


async def test_every_target_timing_out_gives_503(make_system: MakeSystem) -> None:
    system = await make_system(gw1={"failover_timer_s": 0.3}, gw2={"failover_timer_s": 0.3})
    system.pbx.invite(system.a, LOCAL)
    final = await system.pbx.final(within=3.0)
    assert final.status == 503
    assert final.headers.get("retry-after")


async def test_no_failover_after_180(make_system: MakeSystem) -> None:
    system = await make_system()
    pbx, gw1, gw2 = system.pbx, system.gw1, system.gw2
    pbx.invite(system.a, LOCAL)
    out, addr = await gw1.request("INVITE")
    gw1.answer(out, 180, addr)
    await pbx.response(180)
    gw1.answer(out, 503, addr)
    assert (await pbx.final()).status == 503
    assert await gw2.silent(lambda m: isinstance(m, Request), 0.5)


async def test_caller_cancel_while_ringing(make_system: MakeSystem) -> None:
    system = await make_system()
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL)
    out, addr = await gw1.request("INVITE")
    gw1.answer(out, 180, addr)
    await pbx.response(180)
    pbx.cancel(invite, system.a)
    assert (await pbx.response(200, "CANCEL")).status == 200
    assert (await pbx.final()).status == 487
    cancel, addr = await gw1.request("CANCEL")
    assert cancel.call_id == out.call_id
    gw1.answer(cancel, 200, addr)
    gw1.answer(out, 487, addr)
    ack, _ = await gw1.request("ACK")
    assert ack.cseq.method == "ACK"
    events = await system.call_events()
    assert events[-1].status == 487 and events[-1].ended_by == "caller"


async def test_no_route_gives_403_with_a_reason(make_system: MakeSystem) -> None:
    system = await make_system()
    system.pbx.invite(system.a, "+4930123456")
    final = await system.pbx.final()
    assert final.status == 403
    assert final.headers.get("warning") and final.headers.get("reason")


async def test_callee_bye_ends_both_sides(make_system: MakeSystem) -> None:
    system = await make_system()
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL)
    out, addr = await gw1.request("INVITE")
    gw1.answer(out, 200, addr, body=SDP)
    answer = await pbx.response(200)
    pbx.in_dialog(invite, answer, "ACK", system.a)
    await gw1.request("ACK")
    gw1.callee_request(out, "BYE", addr)
    assert (await gw1.final("BYE")).status == 200
    bye, _ = await pbx.request("BYE")
    assert bye.call_id == invite.call_id
    assert isinstance(answer, Response)
    events = await system.call_events()
    assert events[-1].ended_by == "callee"


async def test_a_transport_error_fails_over(make_system: MakeSystem) -> None:
    system = await make_system(gw1={"transport": "tcp"})  # gw1 listens on UDP only
    system.pbx.invite(system.a, LOCAL)
    second, addr = await system.gw2.request("INVITE")
    system.gw2.answer(second, 200, addr, body=SDP)
    assert (await system.pbx.final()).status == 200
    events = await system.call_events(last="answered")
    failed = next(e for e in events if e.kind == pb.CallEvent.LEG_FAILED)
    assert failed.trunk == "gw1" and "transport_error" in failed.reason


async def test_a_2xx_crossing_a_cancel_is_acked_and_ended(make_system: MakeSystem) -> None:
    system = await make_system()
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL)
    out, addr = await gw1.request("INVITE")
    gw1.answer(out, 180, addr)
    await pbx.response(180)
    pbx.cancel(invite, system.a)
    assert (await pbx.final()).status == 487
    await gw1.request("CANCEL")
    gw1.answer(out, 200, addr, body=SDP)  # too late: the callee answered anyway
    ack, _ = await gw1.request("ACK")
    bye, _ = await gw1.request("BYE")
    assert ack.call_id == bye.call_id == out.call_id


async def test_a_cancel_before_any_leg_exists(make_system: MakeSystem) -> None:
    system = await make_system()
    pbx = system.pbx
    invite = pbx.invite(system.a, LOCAL)
    pbx.cancel(invite, system.a)  # at once: the route decision is not even back
    assert (await pbx.response(200, "CANCEL")).status == 200
    assert (await pbx.final()).status == 487
    events = await system.call_events()
    assert events[-1].ended_by == "caller" and events[-1].status == 487
    try:  # if the leg was created after all, it is cancelled as soon as it rings
        out, addr = await system.gw1.request("INVITE", within=0.5)
    except TimeoutError:
        return
    system.gw1.answer(out, 180, addr)
    cancel, _ = await system.gw1.request("CANCEL")
    assert cancel.call_id == out.call_id


async def test_a_call_to_a_tcp_trunk(make_system: MakeSystem) -> None:
    received: asyncio.Queue[Request] = asyncio.Queue()

    async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = StreamFramer()
        while data := await reader.read(65536):
            for frame in framer.feed(data):
                message = parse(frame)
                if isinstance(message, Request):
                    await received.put(message)
                    if message.method == "INVITE":
                        writer.write(bytes(make_response(message, 486, to_tag="gw")))

    server = await asyncio.start_server(gateway, "127.0.0.3", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        system = await make_system(gw1={"transport": "tcp", "peer": f"127.0.0.3:{port}"})
        system.pbx.invite(system.a, LOCAL)
        async with asyncio.timeout(3):
            invite = await received.get()
            ack = await received.get()
        assert invite.via.transport == "TCP" and "transport=tcp" in invite.uri
        assert ack.method == "ACK" and ack.call_id == invite.call_id
        assert (await system.pbx.final()).status == 486
    finally:
        server.close()


async def test_a_second_fork_answering_is_acked_and_ended(make_system: MakeSystem) -> None:
    system = await make_system()
    pbx, gw1 = system.pbx, system.gw1
    pbx.invite(system.a, LOCAL)
    out, addr = await gw1.request("INVITE")
    gw1.answer(out, 200, addr, tag="fork1", body=SDP)
    await pbx.response(200)
    first, _ = await gw1.request("ACK")  # the leg ACKs its 2xx at once (its INVITE had SDP)
    assert first.to.tag == "fork1"
    gw1.answer(out, 200, addr, tag="fork2", body=SDP)
    ack, _ = await gw1.request("ACK")
    bye, _ = await gw1.request("BYE")
    assert ack.to.tag == bye.to.tag == "fork2"


async def test_an_ended_call_is_not_kept_by_the_transactions_that_linger(
    make_system: MakeSystem,
) -> None:
    """A finished INVITE transaction lingers 32 s for retransmissions (timers D, L, M): it must
    not keep its call alive so long, or an edge at a few hundred calls/s holds thousands of
    ended calls and the collector's full passes over them stall the SIP loop. Nor may the
    call refer to itself: the call and its leg are freed when they end, by reference
    counting, not by a pass of the cycle collector (which stalled an edge 400 ms)."""
    system = await make_system()
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL)
    out, b_addr = await gw1.request("INVITE")
    gw1.answer(out, 200, b_addr, body=SDP)
    answer = await pbx.response(200)
    assert system.edge_a.transactions.no_ack and system.edge_b.transactions.client
    runners = [*system.edge_a.registry.calls.values(), *system.edge_b.registry.legs.values()]
    machines = [weakref.ref(runner.machine) for runner in runners]
    assert len(machines) == 2
    del runners
    gc.disable()  # what ends the call must free it: the cycle collector is not waited for
    try:
        await system.ack_and_hang_up(invite, answer)
        await system.call_events()
        await asyncio.sleep(0.2)
        assert not system.edge_a.registry.calls and not system.edge_b.registry.legs
        assert system.edge_a.transactions.no_ack == {}
        lingering = [key for key in system.edge_b.transactions.client if key[-1] == "INVITE"]
        assert lingering == []
        assert [machine() for machine in machines] == [None, None]
    finally:
        gc.enable()
