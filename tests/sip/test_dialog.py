"""Dialogs (tandem.sip.dialog): creation from 1xx/2xx, forking, in-dialog requests."""

from __future__ import annotations

from tandem.sip import Request, Response, make_response, parse
from tandem.sip.dialog import Dialog, DialogSet, DialogState

INVITE = parse(
    b"INVITE sip:+14155550123@gw.example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-1\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:+14155550123@gw.example.net>\r\n"
    b'From: "Alice" <sip:alice@pbx.example.com>;tag=a1\r\n'
    b"Call-ID: call-1@pbx.example.com\r\n"
    b"CSeq: 10 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.5:5060>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"Content-Length: 0\r\n\r\n"
)
assert isinstance(INVITE, Request)


def answer(status: int, tag: str, contact: str, record_route: list[str]) -> Response:
    response = make_response(INVITE, status, to_tag=tag)
    response.headers.remove("Record-Route")
    for rr in record_route:
        response.headers.add("Record-Route", rr)
    response.headers.add("Contact", contact)
    return parse(bytes(response))  # type: ignore[return-value]


def test_forking_gives_one_early_dialog_per_to_tag() -> None:
    dialogs = DialogSet(INVITE)
    assert dialogs.on_response(make_response(INVITE, 100)) is None
    one = dialogs.on_response(answer(180, "b1", "<sip:gw1@192.0.2.1>", ["<sip:p1;lr>"]))
    two = dialogs.on_response(answer(183, "b2", "<sip:gw2@192.0.2.2>", ["<sip:p9;lr>"]))
    assert one is not None and two is not None and one is not two
    assert [d.id for d in dialogs.early] == [
        ("call-1@pbx.example.com", "a1", "b1"),
        ("call-1@pbx.example.com", "a1", "b2"),
    ]
    ok = answer(
        200, "b2", "<sip:gw2@192.0.2.22>", ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    )
    assert dialogs.on_response(ok) is two
    assert two.state is DialogState.CONFIRMED and dialogs.confirmed == [two]
    # 13.2.2.4: the 2xx's Record-Route, reversed, is the route set; its Contact the target
    assert [str(r.uri) for r in two.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert str(two.remote_target) == "sip:gw2@192.0.2.22"
    assert one.state is DialogState.EARLY


def test_a_failure_ends_every_early_dialog() -> None:
    dialogs = DialogSet(INVITE)
    dialogs.on_response(answer(180, "b1", "<sip:gw1@192.0.2.1>", []))
    assert dialogs.on_response(make_response(INVITE, 486, to_tag="b1")) is None
    assert dialogs.early == [] and dialogs.dialogs["b1"].state is DialogState.TERMINATED


def test_requests_within_a_uac_dialog() -> None:
    ok = answer(
        200, "b1", "<sip:gw@192.0.2.1:5070>", ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    )
    dialog = Dialog.as_uac(INVITE, ok)
    assert dialog.state is DialogState.CONFIRMED and dialog.next_hop.host == "p1.example.com"
    ack = dialog.create_ack()
    assert (ack.method, ack.cseq.number, ack.uri) == ("ACK", 10, "sip:gw@192.0.2.1:5070")
    bye = dialog.create_request("BYE")
    assert bye.cseq.number == 11 and bye.uri == "sip:gw@192.0.2.1:5070"
    assert [str(r.uri) for r in bye.route] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert (bye.from_.tag, bye.to.tag, bye.call_id) == ("a1", "b1", "call-1@pbx.example.com")
    assert "Contact" not in bye.headers and "Via" not in bye.headers
    reinvite = dialog.create_request("INVITE", body=b"v=0\r\n")
    assert reinvite.cseq.number == 12 and reinvite.contacts[0].uri.host == "10.0.0.5"
    assert dialog.create_ack().cseq.number == 12  # ACKs the latest INVITE
    update = dialog.create_request("UPDATE")
    info = dialog.create_request("INFO", headers=[("Content-Type", "application/dtmf-relay")])
    assert (update.cseq.number, info.cseq.number) == (13, 14)
    assert info.headers.get("content-type") == "application/dtmf-relay"
    dialog.on_response(update, answer(200, "b1", "<sip:gw@192.0.2.99>", []))
    assert dialog.remote_target.host == "192.0.2.99"  # a target refresh
    dialog.on_response(bye, make_response(bye, 200))
    assert dialog.state is DialogState.TERMINATED


def test_strict_route_takes_the_request_uri() -> None:
    ok = answer(200, "b1", "<sip:gw@192.0.2.1>", ["<sip:strict.example.com>"])
    bye = Dialog.as_uac(INVITE, ok).create_request("BYE")
    assert bye.uri == "sip:strict.example.com"
    assert [str(r.uri) for r in bye.route] == ["sip:gw@192.0.2.1"]


def test_uas_dialog_checks_remote_cseq_and_refreshes_its_target() -> None:
    ok = make_response(INVITE, 200, to_tag="b1", headers=[("Contact", "<sip:tandem@10.0.0.9>")])
    dialog = Dialog.as_uas(INVITE, ok)
    assert dialog.id == ("call-1@pbx.example.com", "b1", "a1")
    assert [str(r.uri) for r in dialog.route_set] == [
        "sip:p1.example.com;lr",
        "sip:p2.example.com;lr",
    ]
    assert str(dialog.remote_target) == "sip:alice@10.0.0.5:5060"
    bye = dialog.create_request("BYE")
    assert (bye.from_.tag, bye.to.tag, bye.cseq.number) == ("b1", "a1", 1)
    stale = Request("INFO", "sip:tandem@10.0.0.9", [*INVITE.headers])
    stale.headers.set("CSeq", "9 INFO")
    assert dialog.on_request(stale) == 500
    reinvite = Request("INVITE", "sip:tandem@10.0.0.9", [*INVITE.headers])
    reinvite.headers.set("CSeq", "11 INVITE")
    reinvite.headers.set("Contact", "<sip:alice@10.0.0.6>")
    assert dialog.on_request(reinvite) is None and dialog.remote_target.host == "10.0.0.6"
    assert dialog.on_request(reinvite) == 500  # not newer than the last one
    byebye = Request("BYE", "sip:tandem@10.0.0.9", [*INVITE.headers])
    byebye.headers.set("CSeq", "12 BYE")
    assert dialog.on_request(byebye) is None and dialog.state is DialogState.TERMINATED
