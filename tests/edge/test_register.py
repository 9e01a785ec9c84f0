"""An edge registering to a carrier trunk (`register`): 423 and digest on the way, the
trunk's health its registration's state, the carrier's calls to the registered Contact
that trunk's, a refusal (403) said in the log and the health, the binding removed when
the edge stops registering."""

from __future__ import annotations

import logging
import time

import pytest

from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, make_response
from tandem.sip.digest import Authorization, DigestServer, Verdict
from tests.edge.conftest import SAME_EDGE, MakeSystem, System
from tests.edge.phones import SDP
from tests.edge.test_dns import health_when

AOR = "sip:tandem@carrier.test"
CARRIER = DigestServer("carrier.test", b"the registrar's key, 32 bytes..")
PASSWORD = "reg1ster-pw"


async def registering(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch, **gw2: object
) -> System:
    """gw2 (edge-b) registers as AOR; its carrier also calls from gw1's address."""
    monkeypatch.setenv("TANDEM_TEST_REG_PASSWORD", PASSWORD)
    return await make_system(
        gw2={
            "register": {"aor": AOR, "expires": 60},
            "auth": {"username": "tandem", "password_env": "TANDEM_TEST_REG_PASSWORD"},
            "sources": ["127.0.0.4", "127.0.0.3"],
            "pstn_usages": ["Local"],
        }
        | gw2,
    )


async def test_register_through_423_and_a_challenge_then_take_the_carrier_s_calls(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = await registering(make_system, monkeypatch)
    carrier = system.gw2
    first, addr = await carrier.request("REGISTER", within=5)
    assert first.uri == "sip:carrier.test"
    assert str(first.to.uri) == AOR and str(first.from_.uri) == AOR
    contact = first.contacts[0].uri
    assert contact.user == "tandem" and contact.port == system.edge_b.transports.port
    assert first.headers.get("expires") == "60"
    carrier.send(make_response(first, 423, headers=[("Min-Expires", "120")]), addr)
    second, addr = await carrier.request("REGISTER")
    assert second.headers.get("expires") == "120" and second.call_id == first.call_id
    values = CARRIER.challenges(time.time())
    carrier.send(
        make_response(second, 401, headers=[("WWW-Authenticate", v) for v in values]), addr
    )
    third, addr = await carrier.request("REGISTER")
    answer = Authorization.parse(third.headers.get("authorization") or "")
    assert (
        CARRIER.verify(answer, "REGISTER", "sip:carrier.test", PASSWORD, time.time()) is Verdict.OK
    )
    granted = [("Contact", f"<{contact}>;expires=120")]
    carrier.send(make_response(third, 200, headers=granted), addr)
    health = await health_when(system, "gw2", lambda h: h.up and h.reason == "registered")
    assert health.edge == "edge-b"
    gw2 = next(t for t in system.edge_b.status()["trunks"] if t["id"] == "gw2")
    assert gw2["registration"] == "registered" and gw2["up"] is True

    # the carrier calls our Contact from another of its addresses (gw1's, too): the call is
    # gw2's, and the number called is its To's
    caller = system.gw1
    edge_b = ("127.0.0.1", system.edge_b.transports.port)
    caller.invite(edge_b, SAME_EDGE, request_uri=f"sip:tandem@127.0.0.1:{edge_b[1]}")
    out, out_addr = await system.gw3.request("INVITE")
    assert out.request_uri.user == SAME_EDGE
    system.gw3.answer(out, 200, out_addr, body=SDP)
    assert (await caller.response(200)).status == 200
    events = await system.call_events(last="answered")
    assert events[0].ingress_trunk == "gw2"
    started = [e for e in events if e.kind == pb.CallEvent.STARTED]
    assert started[0].called == SAME_EDGE

    # no longer registering: the binding is removed
    system.edge_b.registrations["gw2"].stop()
    bye, addr = await carrier.request("REGISTER")
    assert bye.headers.get("expires") == "0"
    carrier.send(make_response(bye, 200), addr)


async def test_a_call_to_another_user_is_the_source_s_trunk(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = await registering(make_system, monkeypatch, options_interval_s=0)
    caller = system.gw1  # gw1's own calls come from there too, for numbers of their own
    edge_b = ("127.0.0.1", system.edge_b.transports.port)
    caller.invite(edge_b, SAME_EDGE)
    final = await caller.final()
    assert final.status == 403  # gw1 has no usages: the call is gw1's, and has no route
    events = await system.call_events()
    assert events[0].ingress_trunk == "gw1"


async def test_a_refused_registration_is_said_and_puts_the_trunk_down(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tandem")
    system = await registering(make_system, monkeypatch)
    carrier = system.gw2
    request, addr = await carrier.request("REGISTER", within=5)
    carrier.send(make_response(request, 403, "Forbidden"), addr)
    health = await health_when(system, "gw2", lambda h: not h.up)
    assert health.reason == "register: 403 Forbidden"
    assert "trunk gw2: registration failed: 403 Forbidden" in caplog.text
    assert "trunk gw2 is down (register: 403 Forbidden)" in caplog.text
    # it backs off (RFC 5626 4.5: 30 s and more), no REGISTER storm
    assert await carrier.silent(lambda m: isinstance(m, Request), 1.0)
    assert PASSWORD not in caplog.text
