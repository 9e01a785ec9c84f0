"""A leg walks the targets of its trunk (RFC 3263 4.3) before the call moves to the next
trunk: each target gets its own INVITE transaction, on a timeout (the trunk's failover
timer), a transport failure or a failover code; a peer that is a name is resolved first."""

from __future__ import annotations

from tandem.b2bua import CallState, LegState
from tandem.b2bua import events as e
from tandem.pb import tandem_pb2 as pb
from tandem.sip import make_response
from tests.b2bua.world import ANSWER_SDP, World, target

A, B, C = ("udp", "10.2.0.11", 5060), ("udp", "10.2.0.12", 5060), ("udp", "10.2.0.13", 5070)


def walking(*hops: e.Hop, timer_s: float = 2.0) -> World:
    """A call to gw1 (whose peer has `hops`), then gw2; started and routed."""
    w = World(target("gw1", timer_s=timer_s), target("gw2", timer_s=timer_s))
    w.hops["gw1"] = list(hops)
    w.start()
    return w


def retrying(w: World) -> list[pb.LegEvent]:
    return [ev for ev in w.leg_events if ev.kind == pb.LegEvent.RETRYING]


def test_a_silent_first_target_gives_way_to_the_second_within_one_leg() -> None:
    w = walking(A, B)
    leg = w.leg()
    assert w.invite_to[id(leg)] == [A]
    # the call hears that two targets may take two failover timers, and waits for them
    assert [ev.wait_s for ev in retrying(w)] == [4.0]
    w.advance(2.1)
    assert len(w.legs) == 1 and w.invite_to[id(leg)] == [A, B]
    assert leg in w.cancelled  # the INVITE to A is given up (and CANCELled if it got a 100)
    first, second = w.sent[id(leg)]
    assert (second.call_id, second.from_.tag) == (first.call_id, first.from_.tag)
    assert second.cseq.number == first.cseq.number + 1
    assert "via" not in second.headers  # a new transaction: a new Via, a new branch
    assert retrying(w)[-1].wait_s == 2.0
    assert "10.2.0.12:5060/udp after 10.2.0.11:5060/udp: no provisional" in retrying(w)[-1].reason
    w.advance(1.5)  # 3.6 s into the call: past one timer, the call waits on
    assert w.call.state is CallState.TRYING and len(w.legs) == 1
    w.respond_leg(1, 180)
    w.respond_leg(1, 200, body=ANSWER_SDP)
    assert w.caller_statuses == [100, 180, 200]
    assert w.kinds.count("leg_attempt") == 1 and "leg_failed" not in w.kinds
    assert w.failovers == []


def test_a_transport_failure_or_failover_code_moves_on_at_once() -> None:
    w = walking(A, B, C)
    leg = w.leg()
    w.feed(leg, e.InviteResponse(None, "transport_error", leg.invite.cseq.number))
    w.settle()
    assert w.invite_to[id(leg)] == [A, B]
    w.respond_leg(1, 503)
    assert w.invite_to[id(leg)] == [A, B, C]
    assert [ev.wait_s for ev in retrying(w)] == [6.0, 4.0, 2.0]
    assert "transport_error" in retrying(w)[1].reason and "503" in retrying(w)[2].reason
    assert leg.state is LegState.CALLING and w.kinds.count("leg_attempt") == 1


def test_a_final_that_is_no_failover_code_ends_the_walk() -> None:
    w = walking(A, B)
    w.respond_leg(1, 486)
    assert w.invite_to[id(w.leg())] == [A]
    assert w.caller_statuses == [100, 486] and len(w.legs) == 1


def test_when_every_target_fails_the_call_moves_to_the_next_trunk() -> None:
    w = walking(A, B)
    w.respond_leg(1, 503)
    w.respond_leg(1, 503)
    assert len(w.legs) == 2 and w.legs[1].profile.trunk == "gw2"
    failed = [ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED]
    assert [(ev.trunk, ev.status) for ev in failed] == [("gw1", 503)]
    assert w.failovers == ["response"]


def test_the_last_target_has_the_call_s_failover_timer() -> None:
    w = walking(A, B)
    w.advance(2.1)  # A given up: B gets one failover timer, the call's
    assert w.invite_to[id(w.leg())] == [A, B]
    w.advance(1.8)
    assert len(w.legs) == 1
    w.advance(0.3)  # 2 s after B was tried: the call gives up on gw1
    assert len(w.legs) == 2 and w.leg(1).state is LegState.CANCELLING
    failed = [ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED]
    assert [(ev.trunk, ev.failure) for ev in failed] == [("gw1", "failover_timer")]


def test_a_provisional_ends_the_walk() -> None:
    w = walking(A, B)
    w.respond_leg(1, 180)
    w.advance(30)
    assert w.invite_to[id(w.leg())] == [A] and w.call.state is CallState.RINGING
    w.respond_leg(1, 503)  # the caller is ringing: no other target, no other trunk
    assert w.caller_statuses == [100, 180, 503] and len(w.legs) == 1


def test_a_late_answer_from_a_target_given_up_is_acked_and_hung_up() -> None:
    w = walking(A, B)
    leg = w.leg()
    first = leg.invite
    w.advance(2.1)
    w.respond_leg(1, 200, body=ANSWER_SDP)  # B answers
    late = make_response(first, 200, to_tag="late", headers=[("Contact", "<sip:gw@10.2.0.11>")])
    w.feed(leg, e.InviteResponse(late))
    w.settle()
    ack, bye = w.sent[id(leg)][-2:]
    assert (ack.method, ack.cseq.number, ack.to.tag) == ("ACK", first.cseq.number, "late")
    assert (bye.method, bye.to.tag) == ("BYE", "late")
    assert leg.state is LegState.ANSWERED and leg.dialog is not None
    assert leg.dialog.remote.tag == "callee"  # B's dialog is the call's
    # a late failure of the abandoned INVITE changes nothing either
    w.feed(leg, e.InviteResponse(None, "timeout", first.cseq.number))
    assert leg.state is LegState.ANSWERED


def test_a_single_target_leaves_the_timing_to_the_call() -> None:
    w = walking(A)
    assert retrying(w) == [] and w.invite_to[id(w.leg())] == [A]
    w.feed(w.leg(), e.InviteResponse(None, "timeout", w.leg().invite.cseq.number))
    w.settle()
    failed = [ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED]
    assert [(ev.trunk, ev.failure) for ev in failed] == [("gw1", "timeout")]
    assert len(w.legs) == 2


def test_a_name_is_resolved_before_the_invite() -> None:
    w = World(target("gw1"), target("gw2"))
    w.named["gw1"] = "carrier.test"
    w.start()
    leg = w.leg()
    assert leg.state is LegState.RESOLVING and w.methods_to(leg) == []
    [(asked_by, asked)] = w.resolves
    assert asked_by is leg and (asked.name, asked.transport) == ("carrier.test", "udp")
    w.feed(leg, e.Resolved((A, B)))
    w.settle()
    assert leg.state is LegState.CALLING and w.invite_to[id(leg)] == [A]
    # the Request-URI and To name the trunk, not the address it resolved to
    assert leg.invite.uri == "sip:+14255550123@carrier.test"
    assert str(leg.invite.to.uri) == "sip:+14255550123@carrier.test"


def test_a_failed_lookup_is_a_transport_failure_of_the_trunk() -> None:
    w = World(target("gw1"), target("gw2"))
    w.named["gw1"] = "nowhere.test"
    w.start()
    w.feed(w.leg(), e.Resolved((), "nowhere.test: no such domain"))
    w.settle()
    assert w.leg().state is LegState.ENDED and id(w.leg()) in w.released
    failed = [ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED]
    assert [(ev.trunk, ev.failure, ev.reason) for ev in failed] == [
        ("gw1", "dns", "dns: nowhere.test: no such domain")
    ]
    assert w.failovers == ["dns"] and len(w.legs) == 2  # on to gw2


def test_a_leg_cancelled_while_resolving_sends_nothing() -> None:
    w = World(target("gw1"))
    w.named["gw1"] = "carrier.test"
    w.start()
    leg = w.leg()
    w.feed(w.call, e.CallerCancelled())
    w.settle()
    assert leg.state is LegState.ENDED and id(leg) in w.released
    assert w.methods_to(leg) == [] and w.finished[id(leg)].cancelled
    w.feed(leg, e.Resolved((A,)))  # the answer comes after all: dropped
    assert w.methods_to(leg) == []
    assert w.caller_statuses == [100, 487]
