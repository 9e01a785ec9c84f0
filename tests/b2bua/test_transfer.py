"""Transfers tandem handles (REFER, RFC 3515, and Replaces, RFC 3891), relays or refuses, by
the referring trunk's `refer`, with an explicit clock."""

from __future__ import annotations

from tandem.b2bua import CallState, LegState
from tandem.b2bua import events as e
from tandem.b2bua.profile import Profile
from tandem.pb import tandem_pb2 as pb
from tandem.sip import make_response
from tests.b2bua.world import ANSWER_SDP, SDP, Txn, World, target

TARGET_SDP = SDP.replace(b"10.1.0.2", b"10.3.0.3")


def answered_call(w: World) -> None:
    w.start()
    w.respond_leg(1, 200, body=ANSWER_SDP)
    w.caller_request("ACK")


def route_transfer(w: World, trunk: str = "gw2") -> None:
    decision = pb.RouteDecision(
        result=pb.RouteDecision.ROUTED, targets=[target(trunk, called="+14255550199")]
    )
    w.feed(w.call, e.RouteDecided(decision))
    w.settle()


def notifies(w: World, machine: object) -> list[bytes]:
    return [r.body for r in w.sent.get(id(machine), []) if r.method == "NOTIFY"]


def callee_refers(w: World, refer_to: str = "<sip:+14255550199@10.2.0.2>") -> Txn:
    return w.callee_request(1, "REFER", extra=[("Refer-To", refer_to)])


def test_the_callee_transfers_the_caller_blind() -> None:
    w = World()
    answered_call(w)
    old_id = w.call.id
    refer = callee_refers(w)
    assert refer.statuses == [202]
    ask = w.route_requests[-1]
    assert (ask.called, ask.ingress_trunk) == ("+14255550199", "gw1")  # the referrer's trunk
    assert len(w.call_ids) == 2  # both records are live on the edge
    route_transfer(w)
    new_leg = w.leg(2)
    assert new_leg.invite.body == SDP  # the caller's own offer
    w.respond_leg(2, 180)
    w.respond_leg(2, 200, body=TARGET_SDP)
    reinvite = w.sent[id(w.call)][-1]  # the caller is pointed at the target
    assert reinvite.method == "INVITE" and reinvite.body == TARGET_SDP
    ok = make_response(reinvite, 200, headers=[("Content-Type", "application/sdp")], body=SDP)
    w.feed(w.call, e.InDialogResponse("join", ok))
    w.settle()
    assert w.methods_to(w.call)[-1] == "ACK"
    assert w.methods_to(new_leg)[-1] == "ACK"
    old_leg = w.leg(1)
    assert w.methods_to(old_leg)[-1] == "BYE"
    assert [b.split(b"\r\n")[0] for b in notifies(w, old_leg)] == [
        b"SIP/2.0 100 Trying",
        b"SIP/2.0 180 Ringing",
        b"SIP/2.0 200 OK",
    ]
    ended = next(ev for ev in w.call_events if ev.kind == pb.CallEvent.ENDED)
    assert (ended.call_id, ended.end_reason) == (old_id, "transferred")
    assert ended.transferred_to == w.call.id != old_id
    started = [ev for ev in w.call_events if ev.kind == pb.CallEvent.STARTED][-1]
    assert started.transferred_from == old_id and started.call_id == w.call.id
    assert w.call_ids == (w.call.id,)
    assert w.call.state is CallState.ANSWERED
    # the call goes on with the target: its BYE ends it
    w.callee_request(2, "BYE")
    assert w.methods_to(w.call)[-1] == "BYE"
    assert w.call_events[-1].call_id == w.call.id
    assert w.call_events[-1].end_reason == "normal"


def test_the_caller_transfers_the_callee_blind_and_the_legs_are_bridged() -> None:
    w = World()
    answered_call(w)
    refer = w.caller_request("REFER", extra=[("Refer-To", "<sip:+14255550199@tandem>")])
    assert refer.statuses == [202]
    assert w.route_requests[-1].ingress_trunk == "pbx"
    route_transfer(w)
    new_leg = w.leg(2)
    assert new_leg.invite.body == ANSWER_SDP  # the callee's SDP, as the offer to the target
    w.respond_leg(2, 200, body=TARGET_SDP)
    old_leg = w.leg(1)
    join = w.sent[id(old_leg)][-1]
    assert join.method == "INVITE" and join.body == TARGET_SDP
    request_id = next(r for r, sent in old_leg.relay.sent.items() if r == "join")
    ok = make_response(join, 200, headers=[("Content-Type", "application/sdp")], body=ANSWER_SDP)
    w.feed(old_leg, e.InDialogResponse(request_id, ok))
    w.settle()
    assert w.methods_to(old_leg)[-1] == "ACK" and w.methods_to(new_leg)[-1] == "ACK"
    assert [r.method for r in w.sent[id(w.call)] if r.method in ("NOTIFY", "BYE")] == [
        "NOTIFY",
        "NOTIFY",
        "BYE",
    ]
    assert w.call.bridged is old_leg_attempt(w)
    # the two legs relay to each other now
    w.callee_request(1, "INFO")
    assert w.methods_to(new_leg)[-1] == "INFO"
    w.callee_request(2, "BYE")
    assert w.methods_to(old_leg)[-1] == "BYE"
    assert w.call.state is CallState.ENDED


def old_leg_attempt(w: World) -> object:
    return w.call.attempts[w.leg(1).id]


def test_a_transfer_no_route_matches_is_reported_and_the_call_goes_on() -> None:
    w = World()
    answered_call(w)
    callee_refers(w)
    refused = pb.RouteDecision(result=pb.RouteDecision.NO_ROUTE, status=403)
    w.feed(w.call, e.RouteDecided(refused))
    w.settle()
    final = notifies(w, w.leg(1))[-1]
    assert final.startswith(b"SIP/2.0 403")
    assert w.call.state is CallState.ANSWERED and w.leg(1).state is LegState.ANSWERED
    failed = [ev for ev in w.call_events if ev.end_reason == "transfer_failed"]
    assert len(failed) == 1 and failed[0].call_id != w.call.id
    assert len(w.call_ids) == 1


def test_a_busy_target_is_reported_and_the_call_goes_on() -> None:
    w = World()
    answered_call(w)
    callee_refers(w)
    route_transfer(w)
    w.respond_leg(2, 486)
    assert notifies(w, w.leg(1))[-1].startswith(b"SIP/2.0 486")
    assert w.call.state is CallState.ANSWERED


def test_refer_without_refer_to_gets_400_and_a_trunk_that_rejects_gets_403() -> None:
    w = World()
    answered_call(w)
    assert w.callee_request(1, "REFER").statuses == [400]
    strict = World(caller=Profile(trunk="pbx", refer="reject", session_expires_s=0))
    answered_call(strict)
    refused = strict.caller_request("REFER", extra=[("Refer-To", "<sip:+1425@x>")])
    assert refused.statuses == [403]


def test_a_relayed_refer_crosses_with_its_refer_to() -> None:
    gw1 = Profile(trunk="gw1", refer="relay", session_expires_s=0)
    w = World(target("gw1"), gw1=gw1)
    answered_call(w)
    callee_refers(w, "<sip:+14255550199@carrier.example>")
    refer = w.sent[id(w.call)][-1]
    assert refer.method == "REFER"
    assert refer.headers.get("refer-to") == "<sip:+14255550199@carrier.example>"
    assert refer.call_id == "caller-call-id"  # in the caller's own dialog: topology hidden


def test_an_attended_transfer_replaces_the_dialog_the_referrer_names() -> None:
    w = World()
    answered_call(w)
    replaced = target("gw3", called="+14255550177")
    w.dialogs[("call2", "ourtag", "theirtag")] = e.DialogFound(
        replaced, "leg2-call-id;to-tag=c;from-tag=t"
    )
    refer_to = "<sip:+14255550177@tandem?Replaces=call2%3Bto-tag%3Dourtag%3Bfrom-tag%3Dtheirtag>"
    w.caller_request("REFER", extra=[("Refer-To", refer_to)])
    new_leg = w.leg(2)
    assert new_leg.invite.headers.get("replaces") == "leg2-call-id;to-tag=c;from-tag=t"
    assert new_leg.invite.uri.startswith("sip:+14255550177@")
    w.respond_leg(2, 200, body=TARGET_SDP)
    join = w.sent[id(w.leg(1))][-1]
    assert join.method == "INVITE" and join.body == TARGET_SDP


def test_an_unknown_dialog_to_replace_is_reported() -> None:
    w = World()
    answered_call(w)
    refer_to = "<sip:x@tandem?Replaces=nope%3Bto-tag%3Da%3Bfrom-tag%3Db>"
    w.caller_request("REFER", extra=[("Refer-To", refer_to)])
    final = [r for r in w.sent[id(w.call)] if r.method == "NOTIFY"][-1]
    assert final.body.startswith(b"SIP/2.0 481")
    assert w.call.state is CallState.ANSWERED


def test_a_callees_replaces_is_looked_up_on_the_legs_edge() -> None:
    """The dialog a callee's Replaces names is its trunk's: the leg's edge finds it."""
    w = World()
    answered_call(w)
    replaced = target("gw3", edge="edge-c", called="+12065550151")
    w.dialogs[("consult", "ours", "theirs")] = e.DialogFound(replaced, "c2;to-tag=x;from-tag=y")
    refer_to = "<sip:+12065550151@t?Replaces=consult%3Bto-tag%3Dours%3Bfrom-tag%3Dtheirs>"
    assert callee_refers(w, refer_to).statuses == [202]
    new_leg = w.leg(2)
    assert new_leg.invite.headers.get("replaces") == "c2;to-tag=x;from-tag=y"
    assert new_leg.edge == "edge-c"
    assert w.route_requests[-1].called != "+12065550151"  # no routing: the dialog says where
