"""Trunks over TLS through two running edges: an SBC reached by its FQDN, verified against
it and shown the edge's certificate (mutual TLS); Via and Contact saying TLS; OPTIONS
probes over TLS; bad certificates (expired, another name, an unknown CA) failing the call
over and putting the trunk down with the reason; and a Teams Direct Routing-style SBC
admitted by the names in its client certificate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tandem.tls import TlsContexts
from tests.conftest import free_port
from tests.edge.certs import Ca, Issued
from tests.edge.conftest import LOCAL, MakeSystem, System
from tests.edge.dnsmasq import Dnsmasq
from tests.edge.phones import SDP, TlsPhone
from tests.edge.test_dns import dns, health_when, leg_failures

SBC_IP, CUSTOMER_IP = "127.0.0.6", "127.0.0.2"
SBC_NAME, EDGE_NAME, CUSTOMER_NAME = "sbc.carrier.test", "edge.tandem.test", "sbc.customer.test"


@dataclass
class Pki:
    ca: Ca
    edge: Issued
    other_ca: Ca

    def edge_tls(self) -> dict[str, str]:
        return {"cert": str(self.edge.cert), "key": str(self.edge.key), "ca": str(self.ca.bundle)}

    def contexts(self, issued: Issued) -> TlsContexts:
        return TlsContexts(str(issued.cert), str(issued.key), str(self.ca.bundle))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = Ca(tmp_path / "pki")
    edge = ca.issue("edge", [EDGE_NAME], ips=("127.0.0.1",))
    return Pki(ca, edge, Ca(tmp_path / "other", "a CA nobody trusts"))


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq([f"--host-record={SBC_NAME},{SBC_IP}"], tmp_path / "dnsmasq.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def sbcs() -> AsyncIterator[list[TlsPhone]]:
    started: list[TlsPhone] = []
    yield started
    for phone in started:
        await phone.stop()


async def carrier(
    make_system: MakeSystem,
    pki: Pki,
    dnsmasq: Dnsmasq,
    sbcs: list[TlsPhone],
    issued: Issued,
    **gw1: Any,
) -> tuple[System, TlsPhone]:
    """gw1 is an SBC at sbc.carrier.test over TLS, with the certificate `issued`."""
    port = free_port(SBC_IP)
    sbc = await TlsPhone.listen(SBC_IP, port, pki.contexts(issued))
    sbcs.append(sbc)
    system = await make_system(
        dns(dnsmasq.address),
        edges={"edge-b": {"tls": pki.edge_tls()}},
        gw1={"peer": f"{SBC_NAME}:{port}", "transport": "tls", "sources": [SBC_IP]} | gw1,
    )
    return system, sbc


async def test_a_call_over_mutual_tls_to_an_sbc_named_by_its_fqdn(
    make_system: MakeSystem, pki: Pki, dnsmasq: Dnsmasq, sbcs: list[TlsPhone]
) -> None:
    system, sbc = await carrier(make_system, pki, dnsmasq, sbcs, pki.ca.issue("sbc", [SBC_NAME]))
    pbx = system.pbx
    invite = pbx.invite(system.a, LOCAL)
    out, addr = await sbc.request("INVITE", within=5)
    assert sbc.names[addr] == (EDGE_NAME,)  # the edge presented its certificate
    assert out.uri == f"sip:{LOCAL}@{SBC_NAME}:{sbc.port};transport=tls"
    assert out.via.transport == "TLS"
    assert (out.headers.get("contact") or "").endswith(";transport=tls>")
    sbc.answer(out, 180, addr)
    await pbx.response(180)
    sbc.answer(out, 200, addr, body=SDP)
    answer = await pbx.response(200)
    pbx.in_dialog(invite, answer, "ACK", system.a)
    ack, ack_from = await sbc.request("ACK")
    assert ack.cseq.number == out.cseq.number
    pbx.in_dialog(invite, answer, "BYE", system.a)
    bye, bye_from = await sbc.request("BYE")
    assert ack_from == bye_from == addr  # one connection, reused
    sbc.answer(bye, 200, bye_from)
    assert (await pbx.final("BYE")).status == 200
    [connection] = [
        c for p, c in system.edge_b.transports.connections.items() if p.transport == "tls"
    ]
    assert connection.tls is not None and connection.tls.version() in ("TLSv1.2", "TLSv1.3")


async def test_options_probes_run_over_tls(
    make_system: MakeSystem, pki: Pki, dnsmasq: Dnsmasq, sbcs: list[TlsPhone]
) -> None:
    issued = pki.ca.issue("sbc", [SBC_NAME])
    system, sbc = await carrier(make_system, pki, dnsmasq, sbcs, issued, options_interval_s=1.0)
    probe, addr = await sbc.request("OPTIONS", within=5)
    assert probe.via.transport == "TLS" and probe.uri == f"sip:{SBC_NAME}:{sbc.port};transport=tls"
    sbc.answer(probe, 200, addr)
    health = await health_when(system, "gw1", lambda h: h.reason == "200 OK")
    assert health.up


BAD: list[tuple[str, Callable[[Pki], Issued], str]] = [
    ("expired", lambda p: p.ca.issue("old", [SBC_NAME], expired=True), "certificate has expired"),
    ("wrong-name", lambda p: p.ca.issue("wrong", ["other.test"]), "Hostname mismatch"),
    (
        "unknown-ca",
        lambda p: p.other_ca.issue("stranger", [SBC_NAME]),
        "unable to get local issuer",
    ),
]


@pytest.mark.parametrize(("make", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_a_bad_certificate_fails_the_call_over_and_the_trunk_down(
    make_system: MakeSystem,
    pki: Pki,
    dnsmasq: Dnsmasq,
    sbcs: list[TlsPhone],
    caplog: pytest.LogCaptureFixture,
    make: Callable[[Pki], Issued],
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="tandem")
    system, sbc = await carrier(make_system, pki, dnsmasq, sbcs, make(pki), options_interval_s=0.5)
    pbx, gw2 = system.pbx, system.gw2
    pbx.invite(system.a, LOCAL)
    out, addr = await gw2.request("INVITE", within=5)  # at once: the handshake failed
    gw2.answer(out, 200, addr, body=SDP)
    assert (await pbx.final()).status == 200
    assert sbc.inbox.empty()  # nothing crossed the failed handshake
    [failed] = leg_failures(await system.call_events(last="answered"))
    assert (failed.trunk, failed.failure) == ("gw1", "transport_error")
    assert f"tls: certificate verify failed: {reason}" in failed.reason
    health = await health_when(system, "gw1", lambda h: not h.up)
    assert health.reason.startswith("tls: certificate verify failed") and reason in health.reason
    assert f"trunk gw1 is down (tls: certificate verify failed: {reason}" in caplog.text


async def test_without_verification_a_certificate_for_another_name_is_taken(
    make_system: MakeSystem, pki: Pki, dnsmasq: Dnsmasq, sbcs: list[TlsPhone]
) -> None:
    issued = pki.ca.issue("wrong", ["other.test"])
    system, sbc = await carrier(make_system, pki, dnsmasq, sbcs, issued, tls_verify=False)
    system.pbx.invite(system.a, LOCAL)
    out, addr = await sbc.request("INVITE", within=5)
    sbc.answer(out, 486, addr)
    assert (await system.pbx.final()).status == 486


async def customer_sbc(sbcs: list[TlsPhone], tls: TlsContexts, serve: bool = True) -> TlsPhone:
    """The customer's SBC on CUSTOMER_IP, with the certificate `tls` gives; stopped after."""
    phone = await TlsPhone.listen(CUSTOMER_IP, free_port(CUSTOMER_IP), tls, serve)
    sbcs.append(phone)
    return phone


async def customer_edge(make_system: MakeSystem, pki: Pki) -> tuple[System, int]:
    """edge-a listens for TLS; its trunk pbx is an SBC that must present sbc.customer.test."""
    tls_port = free_port()
    system = await make_system(
        edges={"edge-a": {"sip_tls": f"127.0.0.1:{tls_port}", "tls": pki.edge_tls()}},
        pbx={"transport": "tls", "tls_names": [CUSTOMER_NAME]},
    )
    assert f"tls:127.0.0.1:{tls_port}" in system.edge_a.transports.listeners
    return system, tls_port


async def test_a_teams_style_sbc_is_admitted_by_its_certificate_names(
    make_system: MakeSystem, pki: Pki, sbcs: list[TlsPhone]
) -> None:
    system, tls_port = await customer_edge(make_system, pki)
    customer = await customer_sbc(sbcs, pki.contexts(pki.ca.issue("cust", [CUSTOMER_NAME])))
    edge = ("127.0.0.1", tls_port)
    invite = customer.invite(edge, LOCAL)
    out, addr = await system.gw1.request("INVITE", within=5)
    system.gw1.answer(out, 200, addr, body=SDP)
    answer = await customer.response(200)
    assert customer.names[edge] == (EDGE_NAME,)
    assert answer.contacts[0].uri.param("transport") == "tls"
    assert answer.via.transport == "TLS"
    customer.in_dialog(invite, answer, "BYE", edge)
    assert (await customer.final("BYE")).status == 200


async def test_a_sips_request_gets_a_sips_contact(
    make_system: MakeSystem, pki: Pki, sbcs: list[TlsPhone]
) -> None:
    system, tls_port = await customer_edge(make_system, pki)
    customer = await customer_sbc(sbcs, pki.contexts(pki.ca.issue("cust", [CUSTOMER_NAME])))
    edge = ("127.0.0.1", tls_port)
    customer.invite(edge, LOCAL, scheme="sips")
    out, addr = await system.gw1.request("INVITE", within=5)
    system.gw1.answer(out, 200, addr, body=SDP)
    answer = await customer.response(200)
    assert str(answer.contacts[0].uri).startswith("sips:127.0.0.1:")


@pytest.mark.parametrize("names", [["other.test"], None], ids=["other-names", "no-certificate"])
async def test_an_sbc_without_the_names_is_refused(
    make_system: MakeSystem,
    pki: Pki,
    sbcs: list[TlsPhone],
    caplog: pytest.LogCaptureFixture,
    names: list[str] | None,
) -> None:
    caplog.set_level(logging.INFO, logger="tandem")
    system, tls_port = await customer_edge(make_system, pki)
    if names is None:
        tls = TlsContexts(ca=str(pki.ca.bundle))  # no certificate of its own
    else:
        tls = pki.contexts(pki.ca.issue("cust", names))
    customer = await customer_sbc(sbcs, tls, serve=names is not None)
    customer.invite(("127.0.0.1", tls_port), LOCAL)
    refused = await customer.final()
    assert refused.status == 403
    assert "certificate names" in (refused.headers.get("warning") or "")
    assert await system.gw1.silent(lambda m: True, 0.5)
    given = ", ".join(names or ["none"])
    assert f"certificate names {given}, the trunk wants {CUSTOMER_NAME}" in caplog.text


async def test_an_edge_without_tls_files_refuses_to_listen(make_system: MakeSystem) -> None:
    from tandem.config import ConfigError

    with pytest.raises(ConfigError, match="sip_tls needs tls"):
        await make_system(edges={"edge-a": {"sip_tls": "127.0.0.1:5061"}})
    await asyncio.sleep(0)
