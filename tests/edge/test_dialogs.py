"""What crosses an answered call, and what each leg's headers carry and hide."""

from __future__ import annotations

from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, Response
from tests.edge.conftest import LOCAL, PRIVATE, SAME_EDGE, MakeSystem, System
from tests.edge.phones import SDP, Phone

HOLD = SDP.replace(b"a=rtpmap", b"a=sendonly\r\na=rtpmap")


async def answer(
    system: System, callee: Phone, called: str = LOCAL, **invite_kw: object
) -> tuple[Request, Response, Request, tuple[str, int]]:
    pbx = system.pbx
    invite = pbx.invite(system.a, called, **invite_kw)  # type: ignore[arg-type]
    out, addr = await callee.request("INVITE")
    callee.answer(out, 200, addr, body=SDP)
    answered = await pbx.response(200)
    pbx.in_dialog(invite, answered, "ACK", system.a)
    await callee.request("ACK")
    return invite, answered, out, addr


async def test_a_call_on_the_same_edge_takes_the_same_path(make_system: MakeSystem) -> None:
    system = await make_system()
    _, _, out, addr = await answer(system, system.gw3, SAME_EDGE)
    assert out.request_uri.user == SAME_EDGE
    system.gw3.callee_request(out, "BYE", addr)
    await system.pbx.request("BYE")
    events = await system.call_events()
    assert [e.trunk for e in events if e.kind == pb.CallEvent.LEG_ATTEMPT] == ["gw3"]
    assert events[-1].ended_by == "callee"


async def test_reinvite_hold_and_resume_and_info_cross_the_call(make_system: MakeSystem) -> None:
    system = await make_system()
    pbx, gw1 = system.pbx, system.gw1
    invite, answered, out, _ = await answer(system, gw1)

    for offer in (HOLD, SDP):  # hold, then resume
        pbx.in_dialog(invite, answered, "INVITE", system.a, body=offer)
        reinvite, addr = await gw1.request("INVITE")
        assert reinvite.call_id == out.call_id and reinvite.body == offer
        assert reinvite.to.tag == "gw"
        gw1.answer(reinvite, 200, addr, body=offer)
        ok = await pbx.response(200)
        assert ok.body == offer
        pbx.in_dialog(invite, answered, "ACK", system.a)
        ack, _ = await gw1.request("ACK")
        assert ack.cseq.number == reinvite.cseq.number

    dtmf = b"Signal=5\r\nDuration=160\r\n"
    pbx.in_dialog(invite, answered, "INFO", system.a, dtmf, "application/dtmf-relay")
    relayed, addr = await gw1.request("INFO")
    assert relayed.body == dtmf and relayed.content_type == "application/dtmf-relay"
    gw1.answer(relayed, 200, addr)
    assert (await pbx.final("INFO")).status == 200


async def test_a_callee_reinvite_reaches_the_caller(make_system: MakeSystem) -> None:
    system = await make_system()
    pbx, gw1 = system.pbx, system.gw1
    invite, _, out, addr = await answer(system, gw1)
    gw1.callee_request(out, "INVITE", addr, body=HOLD)
    reinvite, pbx_addr = await pbx.request("INVITE")
    assert reinvite.call_id == invite.call_id and reinvite.body == HOLD
    pbx.answer(reinvite, 200, pbx_addr, tag=reinvite.to.tag or "", body=HOLD)
    ok = await gw1.final()
    assert ok.status == 200 and ok.body == HOLD


async def test_identity_headers_follow_the_trunks_trust_and_settings(
    make_system: MakeSystem,
) -> None:
    identity = [
        ("P-Asserted-Identity", "<sip:+14255550100@pbx.example>"),
        ("History-Info", "<sip:+14255550999@pbx.example>;index=1"),
        ("Diversion", "<sip:+14255550999@pbx.example>;reason=unconditional"),
    ]
    # a trusted PBX's assertion reaches a trusted gateway as it is (RFC 3325)
    system = await make_system(gw1={"trusted": True}, pbx={"trusted": True})
    system.pbx.invite(system.a, LOCAL, headers=identity)
    out, addr = await system.gw1.request("INVITE")
    assert out.headers.get("p-asserted-identity") == identity[0][1]
    assert "history-info" not in out.headers and "diversion" not in out.headers
    system.gw1.answer(out, 486, addr)
    await system.pbx.final()

    # an untrusted PBX's is not believed: the trusted gateway gets tandem's own
    system = await make_system(gw1={"forward_pai": True})  # the wave-1 name of trusted
    system.pbx.invite(system.a, LOCAL, headers=identity)
    out, addr = await system.gw1.request("INVITE")
    assert out.headers.get("p-asserted-identity") == "<sip:+14255550100@127.0.0.1>"
    system.gw1.answer(out, 486, addr)
    await system.pbx.final()

    system = await make_system(gw1={"forward_call_history": True})
    system.pbx.invite(system.a, LOCAL, headers=identity)
    out, _ = await system.gw1.request("INVITE")
    assert "p-asserted-identity" not in out.headers
    assert out.headers.get("history-info") == identity[1][1]
    assert out.headers.get("diversion") == identity[2][1]


async def test_a_suppressed_caller_id_presents_the_alternate(make_system: MakeSystem) -> None:
    """Lync: a route's suppress_caller_id shows its alternate_caller_id instead."""
    system = await make_system()
    system.pbx.invite(system.a, PRIVATE)
    out, _ = await system.gw2.request("INVITE")
    assert out.from_.uri.user == "+14255550000" and out.from_.display is None
    assert "privacy" not in out.headers
    assert "+14255550100" not in bytes(out).decode()
