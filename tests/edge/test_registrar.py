"""A PBX registering to tandem (`registrar: true`): its REGISTER authenticated by digest,
its Contact bound to the address the REGISTER came from (a PBX behind NAT is reached
there), calls to the trunk sent to it, its health the binding's: down until it registers,
down again when the binding is removed or lapses."""

from __future__ import annotations

import pytest

from tandem.edge import registrar
from tandem.sip import Request, Response
from tandem.sip.digest import Credentials, DigestClient
from tests.edge.conftest import MakeSystem, System
from tests.edge.phones import SDP, Phone, branch
from tests.edge.test_dns import health_when

PASSWORD = "pbx-registers-pw"
TO_PBX = "+15555550123"
ROUTES = [
    {"id": "to-pbx", "number_pattern": r"^\+1555", "pstn_usages": ["Local"], "trunks": ["pbx"]},
    {"id": "local", "number_pattern": r"^\+1425", "pstn_usages": ["Local"], "trunks": ["gw1"]},
]


async def registrar_system(make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch) -> System:
    """pbx (edge-a) registers to tandem; gw3 (edge-a) calls it on the route to-pbx."""
    monkeypatch.setenv("TANDEM_TEST_PBX_REG_PASSWORD", PASSWORD)
    auth = {"username": "hq", "password_env": "TANDEM_TEST_PBX_REG_PASSWORD", "challenge": True}
    return await make_system(
        {"routes": ROUTES},
        pbx={"registrar": True, "auth": auth, "sources": ["127.0.0.0/24"]},
        gw3={"pstn_usages": ["Local"]},
    )


def register(
    phone: Phone, edge: tuple[str, int], cseq: int, expires: int, *headers: tuple[str, str]
) -> Request:
    request = Request(
        "REGISTER",
        f"sip:{edge[0]}:{edge[1]}",
        [
            ("Via", f"SIP/2.0/UDP {phone.address};branch={branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", "<sip:hq@tandem.test>;tag=reg"),
            ("To", "<sip:hq@tandem.test>"),
            ("Call-ID", f"reg-{phone.port}@{phone.host}"),
            ("CSeq", f"{cseq} REGISTER"),
            ("Contact", "<sip:hq@192.168.1.20:5060>"),  # its address behind NAT
            ("Expires", str(expires)),
            *headers,
        ],
    )
    phone.send(request, edge)
    return request


async def registered(
    system: System, password: str = PASSWORD, expires: int = 600
) -> tuple[Request, Response]:
    """The PBX registers: challenged first, then with its credentials."""
    pbx, edge = system.pbx, system.a
    first = register(pbx, edge, 1, expires)
    challenge = await pbx.final("REGISTER")
    assert challenge.status == 401
    answer = DigestClient(Credentials("hq", password)).answer(challenge, first)
    second = register(pbx, edge, 2, expires, answer)
    return second, await pbx.final("REGISTER")


async def test_a_pbx_registers_and_its_calls_reach_it_where_it_registered_from(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = await registrar_system(make_system, monkeypatch)
    down = await health_when(system, "pbx", lambda h: not h.up)
    assert down.reason == "not registered"
    # no binding yet: the call to the trunk is refused at once
    system.gw3.invite(system.a, TO_PBX)
    assert (await system.gw3.final()).status == 503

    _, ok = await registered(system)
    assert ok.status == 200
    [contact] = ok.contacts
    assert str(contact.uri) == "sip:hq@192.168.1.20:5060" and contact.param("expires") == "600"
    up = await health_when(system, "pbx", lambda h: h.up)
    assert up.reason == f"registered from udp:127.0.0.2:{system.pbx.port}"

    invite = system.gw3.invite(system.a, TO_PBX)
    out, addr = await system.pbx.request("INVITE")  # at its NAT address, not its Contact's
    assert out.uri.startswith(f"sip:{TO_PBX}@192.168.1.20:5060")
    system.pbx.answer(out, 200, addr, body=SDP)
    answer = await system.gw3.response(200)
    system.gw3.in_dialog(invite, answer, "BYE", system.a)
    bye, addr = await system.pbx.request("BYE")  # its Contact is private: where it began
    system.pbx.answer(bye, 200, addr)

    # Expires: 0 removes the binding (a REGISTER without credentials is challenged first)
    unregister = register(system.pbx, system.a, 3, 0)
    challenge = await system.pbx.final("REGISTER")
    assert challenge.status == 401
    answer_header = DigestClient(Credentials("hq", PASSWORD)).answer(challenge, unregister)
    register(system.pbx, system.a, 4, 0, answer_header)
    assert (await system.pbx.final("REGISTER")).status == 200
    gone = await health_when(system, "pbx", lambda h: not h.up)
    assert gone.reason == "registration removed"


async def test_a_wrong_password_or_a_short_expiry_binds_nothing(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = await registrar_system(make_system, monkeypatch)
    _, refused = await registered(system, password="guess")
    assert refused.status == 403
    _, brief = await registered(system, expires=10)
    assert brief.status == 423 and brief.headers.get("min-expires") == "60"
    assert system.edge_a.registrar.binding("pbx") is None


async def test_a_binding_that_lapses_puts_the_trunk_down(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registrar, "MIN_EXPIRES_S", 1)
    system = await registrar_system(make_system, monkeypatch)
    _, ok = await registered(system, expires=1)
    assert ok.status == 200
    await health_when(system, "pbx", lambda h: h.up)
    lapsed = await health_when(system, "pbx", lambda h: not h.up, within=5)
    assert lapsed.reason == "registration lapsed"
    system.gw3.invite(system.a, TO_PBX)
    assert (await system.gw3.final()).status == 503


async def test_probes_go_where_the_pbx_registered_from(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_TEST_PBX_REG_PASSWORD", PASSWORD)
    auth = {"username": "hq", "password_env": "TANDEM_TEST_PBX_REG_PASSWORD", "challenge": True}
    system = await make_system(
        pbx={"registrar": True, "auth": auth, "options_interval_s": 0.5, "peer": "10.9.9.9:5060"}
    )
    _, ok = await registered(system)
    assert ok.status == 200
    probe, addr = await system.pbx.request("OPTIONS", within=3)  # not to its peer, 10.9.9.9
    assert probe.uri.startswith("sip:")
    system.pbx.answer(probe, 200, addr)
    health = await health_when(system, "pbx", lambda h: h.reason == "200 OK")
    assert health.up
