"""Trunks whose peer is a name, against a real DNS server (dnsmasq): the leg resolves it
(RFC 3263) and walks its SRV targets before the call moves to the next trunk; a name that
does not exist or a DNS server that does not answer is a transport failure with reason
`dns`, for the call (failover) and for the trunk's health alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError

from tandem import bus
from tandem.pb import tandem_pb2 as pb
from tandem.sip import make_response
from tests.edge.conftest import LOCAL, MakeSystem, System
from tests.edge.dnsmasq import Dnsmasq
from tests.edge.phones import SDP, Phone

FIRST, SECOND = "127.0.0.6", "127.0.0.7"  # the SRV targets of carrier.test


@pytest.fixture
async def targets() -> AsyncIterator[tuple[Phone, Phone]]:
    first, second = await Phone.open(FIRST), await Phone.open(SECOND)
    yield first, second
    first.close()
    second.close()


@pytest.fixture
def dnsmasq(tmp_path: Path, targets: tuple[Phone, Phone]) -> Iterator[Dnsmasq]:
    first, second = targets
    server = Dnsmasq(
        [
            "--naptr-record=carrier.test,10,50,s,SIP+D2U,,_sip._udp.carrier.test",
            f"--srv-host=_sip._udp.carrier.test,first.carrier.test,{first.port},10,0",
            f"--srv-host=_sip._udp.carrier.test,second.carrier.test,{second.port},20,0",
            f"--host-record=first.carrier.test,{FIRST}",
            f"--host-record=second.carrier.test,{SECOND}",
            f"--host-record=contact.carrier.test,{FIRST}",
        ],
        tmp_path / "dnsmasq.log",
    )
    server.start()
    yield server
    server.stop()


def dns(server: tuple[str, int], timeout_s: float = 2.0) -> dict[str, object]:
    return {"dns": {"nameservers": [f"{server[0]}:{server[1]}"], "timeout_s": timeout_s}}


async def health_when(
    system: System, trunk: str, check: Callable[[pb.TrunkHealth], bool], within: float = 8.0
) -> pb.TrunkHealth:
    kv = await system.js.key_value(bus.TRUNK_HEALTH_BUCKET)
    async with asyncio.timeout(within):
        while True:
            with contextlib.suppress(KeyNotFoundError):
                health = pb.TrunkHealth.FromString((await kv.get(trunk)).value or b"")
                if check(health):
                    return health
            await asyncio.sleep(0.05)


def leg_failures(events: list[pb.CallEvent]) -> list[pb.CallEvent]:
    return [e for e in events if e.kind == pb.CallEvent.LEG_FAILED]


async def test_the_call_completes_on_the_second_srv_target_when_the_first_is_silent(
    make_system: MakeSystem, dnsmasq: Dnsmasq, targets: tuple[Phone, Phone]
) -> None:
    silent, answering = targets
    system = await make_system(
        dns(dnsmasq.address),
        gw1={"peer": "carrier.test", "sources": [FIRST, SECOND], "failover_timer_s": 1.0},
    )
    pbx = system.pbx
    invite = pbx.invite(system.a, LOCAL)
    first, _ = await silent.request("INVITE", within=5)
    assert first.uri == f"sip:{LOCAL}@carrier.test"  # the trunk's name, not the address
    # nothing but silence: after the failover timer, the same call to the next SRV target
    second, addr = await answering.request("INVITE", within=4)
    assert (second.call_id, second.from_.tag) == (first.call_id, first.from_.tag)
    assert second.cseq.number == first.cseq.number + 1
    assert second.via.branch != first.via.branch
    while not silent.inbox.empty():  # timer A's resends before the switch
        silent.inbox.get_nowait()
    # the callee's Contact is a name too: requests in the dialog resolve it (here to the
    # first target's address, which is the trunk's too)
    contact = [("Contact", f"<sip:gw@contact.carrier.test:{silent.port}>")]
    answering.send(make_response(second, 180, to_tag="gw", headers=contact), addr)
    await pbx.response(180)
    answer_200 = make_response(
        second,
        200,
        to_tag="gw",
        headers=[*contact, ("Content-Type", "application/sdp")],
        body=SDP,
    )
    answering.send(answer_200, addr)
    answer = await pbx.response(200)
    pbx.in_dialog(invite, answer, "ACK", system.a)
    ack, _ = await silent.request("ACK", within=3)
    assert ack.call_id == second.call_id and ack.cseq.number == second.cseq.number
    pbx.in_dialog(invite, answer, "BYE", system.a)
    bye, bye_from = await silent.request("BYE", within=3)
    silent.answer(bye, 200, bye_from)
    assert (await pbx.final("BYE")).status == 200
    # no INVITE reached the silent target after the switch, and gw2 saw nothing at all
    assert silent.inbox.empty()
    assert system.gw2.inbox.empty()
    events = await system.call_events()
    attempts = [e for e in events if e.kind == pb.CallEvent.LEG_ATTEMPT]
    assert [a.trunk for a in attempts] == ["gw1"] and leg_failures(events) == []
    assert dnsmasq.queries("NAPTR", "carrier.test") >= 1
    assert dnsmasq.queries("SRV", "_sip._udp.carrier.test") >= 1
    assert dnsmasq.queries("A", "contact.carrier.test") >= 1


async def test_probes_resolve_and_try_the_targets_in_order(
    make_system: MakeSystem, dnsmasq: Dnsmasq, targets: tuple[Phone, Phone]
) -> None:
    silent, answering = targets
    system = await make_system(
        dns(dnsmasq.address),
        gw1={"peer": "carrier.test", "sources": [FIRST, SECOND], "options_interval_s": 1.5},
    )
    probe, addr = await silent.request("OPTIONS", within=5)
    assert probe.uri == "sip:carrier.test"
    second, addr = await answering.request("OPTIONS", within=5)  # the first stays silent
    answering.answer(second, 200, addr)
    health = await health_when(system, "gw1", lambda h: h.reason.startswith("200"))
    assert health.up and health.edge == "edge-b"


async def test_a_name_that_does_not_exist_fails_over_and_puts_the_trunk_down(
    make_system: MakeSystem, dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tandem")
    system = await make_system(
        dns(dnsmasq.address), gw1={"peer": "nowhere.test", "options_interval_s": 0.5}
    )
    pbx, gw2 = system.pbx, system.gw2
    pbx.invite(system.a, LOCAL)
    out, addr = await gw2.request("INVITE", within=3)  # at once, not after a timer
    gw2.answer(out, 200, addr, body=SDP)
    assert (await pbx.final()).status == 200
    events = await system.call_events(last="answered")
    [failed] = leg_failures(events)
    assert (failed.trunk, failed.failure) == ("gw1", "dns")
    assert failed.reason == "dns: nowhere.test: no such domain"
    health = await health_when(system, "gw1", lambda h: not h.up)
    assert health.reason == "dns: nowhere.test: no such domain"
    assert health.failed_probes == 1  # at once: a name that does not resolve will not soon
    assert "trunk gw1 is down (dns: nowhere.test: no such domain)" in caplog.text
    assert "leg" in caplog.text and "to trunk gw1 failed (dns): nowhere.test" in caplog.text


async def test_a_dns_server_that_does_not_answer_is_a_transport_failure(
    make_system: MakeSystem, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tandem")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as deaf:
        deaf.bind(("127.0.0.1", 0))
        system = await make_system(
            dns(deaf.getsockname(), timeout_s=0.5),
            gw1={"peer": "carrier.test", "options_interval_s": 0.5},
        )
        pbx, gw2 = system.pbx, system.gw2
        pbx.invite(system.a, LOCAL)
        out, addr = await gw2.request("INVITE", within=4)
        gw2.answer(out, 486, addr)
        final = await pbx.final()
        # gw1 failed for DNS, gw2 said busy: the caller hears the real answer
        assert final.status == 486
        events = await system.call_events()
        failed = leg_failures(events)
        assert [(e.trunk, e.failure) for e in failed] == [("gw1", "dns"), ("gw2", "response")]
        assert "nameservers did not answer" in failed[0].reason
        health = await health_when(system, "gw1", lambda h: not h.up)
        assert health.reason.startswith("dns: carrier.test: nameservers did not answer")
    assert "trunk gw1 is down (dns: carrier.test: nameservers did not answer" in caplog.text


async def test_every_srv_target_failing_moves_the_call_to_the_next_trunk(
    make_system: MakeSystem, dnsmasq: Dnsmasq, targets: tuple[Phone, Phone]
) -> None:
    first, second = targets
    system = await make_system(
        dns(dnsmasq.address), gw1={"peer": "carrier.test", "sources": [FIRST, SECOND]}
    )
    system.pbx.invite(system.a, LOCAL)
    for target in (first, second):
        request, addr = await target.request("INVITE", within=3)
        target.answer(request, 503, addr)
    out, addr = await system.gw2.request("INVITE", within=3)
    system.gw2.answer(out, 200, addr, body=SDP)
    assert (await system.pbx.final()).status == 200
    events = await system.call_events(last="answered")
    assert [(e.trunk, e.status) for e in leg_failures(events)] == [("gw1", 503)]
