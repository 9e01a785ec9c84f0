"""A call and its legs through failover, cancel, forking and crossing requests, in memory,
with an explicit clock: every race the bus and the network allow, in milliseconds."""

from __future__ import annotations

from tandem.b2bua import CallState, LegState
from tandem.b2bua import events as e
from tandem.pb import tandem_pb2 as pb
from tandem.sip import make_response
from tests.b2bua.world import ANSWER_SDP, SDP, World, target


def test_a_call_answered_on_the_first_target() -> None:
    w = World()
    w.start()
    assert w.caller_statuses == [100]
    assert w.route_requests[0].called == "+14255550123"
    leg = w.leg()
    assert w.methods_to(leg) == ["INVITE"]
    assert leg.invite.body == SDP  # the offer passes through (media bypass)
    w.respond_leg(1, 180)
    w.respond_leg(1, 200, body=ANSWER_SDP)
    assert w.caller_statuses == [100, 180, 200]
    assert w.invite_txn.responses[-1].body == ANSWER_SDP
    assert w.call.state is CallState.ANSWERED
    w.caller_request("ACK")
    assert w.methods_to(leg) == ["INVITE", "ACK"]
    bye = w.caller_request("BYE")
    assert bye.statuses == [200]
    assert w.methods_to(leg) == ["INVITE", "ACK", "BYE"]
    assert w.kinds == [
        "started",
        "routed",
        "leg_attempt",
        "leg_progress",
        "leg_answered",
        "answered",
        "ended",
    ]
    assert [ev.seq for ev in w.call_events] == list(range(1, 8))
    ended = w.call_events[-1]
    assert (ended.ended_by, ended.status, ended.trunk) == ("caller", 200, "gw1")
    assert w.call.state is CallState.ENDED and leg.state is LegState.ENDED
    assert id(w.call) in w.released and id(leg) in w.released


def test_the_failover_timer_runs_after_100_only() -> None:
    w = World(target("gw1", timer_s=2.0), target("gw2"))
    w.start()
    w.respond_leg(1, 100)
    w.advance(1.9)
    assert len(w.legs) == 1
    w.advance(0.2)  # 2 s after the attempt began: gw1 is given up, gw2 tried
    assert len(w.legs) == 2
    assert w.leg(1) in w.cancelled and w.leg(1).state is LegState.CANCELLING
    failed = [ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED]
    assert [(ev.trunk, ev.status, ev.failure) for ev in failed] == [("gw1", 408, "failover_timer")]
    assert w.failovers == ["failover_timer"]
    assert w.caller_statuses == [100]  # the caller heard nothing but 100 all along


def test_no_failover_after_a_180() -> None:
    w = World(target("gw1", timer_s=2.0), target("gw2"))
    w.start()
    w.respond_leg(1, 180)
    w.advance(60)
    assert len(w.legs) == 1 and w.call.state is CallState.RINGING
    w.respond_leg(1, 503)  # a failover code, but the caller is ringing: it hears it
    assert w.caller_statuses == [100, 180, 503]
    assert len(w.legs) == 1
    assert w.call.state is CallState.ENDED


def test_a_failover_code_moves_on_and_the_last_failure_is_the_answer() -> None:
    w = World(target("gw1"), target("gw2"))
    w.start()
    w.respond_leg(1, 503)
    assert len(w.legs) == 2
    w.respond_leg(2, 486)  # not a failover code: the caller hears it
    assert w.caller_statuses == [100, 486]
    assert [ev.status for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED] == [
        503,
        486,
    ]


def test_every_target_silent_gives_503_with_retry_after() -> None:
    w = World(target("gw1", timer_s=1), target("gw2", timer_s=1))
    w.start()
    w.advance(2.5)
    final = w.invite_txn.responses[-1]
    assert final.status == 503 and final.headers.get("retry-after") == "5"
    assert w.failovers == ["failover_timer"]  # the second had no target left to fail over to


def test_a_refused_leg_fails_over_at_once() -> None:
    w = World(target("gw1"), target("gw2"))
    w.refuse_create.add("gw1")
    w.start()
    assert [leg.invite.uri for leg in w.legs] == ["sip:+14255550123@10.2.0.2:5060"]
    failed = next(ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED)
    assert (failed.trunk, failed.failure) == ("gw1", "transport_error")


def test_cancel_while_the_leg_is_being_created() -> None:
    w = World()
    w.start(route=False)
    decision = pb.RouteDecision(result=pb.RouteDecision.ROUTED, targets=w.targets)
    w.feed(w.call, e.RouteDecided(decision))
    # the create command is on the bus, not delivered yet: the caller gives up
    w.feed(w.call, e.CallerCancelled())
    assert w.caller_statuses == [100, 487]
    w.settle()  # now the leg is created, and the cancel (sent after it) reaches it
    leg = w.leg()
    assert leg.state is LegState.CANCELLING and leg in w.cancelled
    w.respond_leg(1, 487)
    assert leg.state is LegState.ENDED
    assert w.kinds[-1] == "ended" and w.call_events[-1].ended_by == "caller"


def test_cancel_while_it_rings() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 180)
    w.feed(w.call, e.CallerCancelled())
    w.settle()
    assert w.caller_statuses == [100, 180, 487]
    assert w.leg() in w.cancelled
    w.respond_leg(1, 487)
    assert w.finished[id(w.leg())].cancelled
    assert w.leg().state is LegState.ENDED


def test_cancel_crossing_the_200() -> None:
    """The caller's CANCEL and the callee's 200 cross: the caller gets 487, the callee's
    dialog is ACKed and ended with a BYE."""
    w = World()
    w.start()
    w.respond_leg(1, 180)
    w.feed(w.call, e.CallerCancelled())  # the cancel command is on the bus
    leg = w.leg()
    w.respond_leg(1, 200, body=ANSWER_SDP)  # the leg answers before the cancel reaches it
    assert w.caller_statuses == [100, 180, 487]
    assert w.methods_to(leg) == ["INVITE", "ACK", "BYE"]
    assert leg.state is LegState.ENDED


def test_a_late_2xx_after_a_failover_is_acked_and_ended() -> None:
    w = World(target("gw1", timer_s=1), target("gw2"))
    w.start()
    w.advance(1.1)  # gw1 silent: cancelled, gw2 tried
    first = w.leg(1)
    assert first.state is LegState.CANCELLING
    w.respond_leg(1, 200, body=ANSWER_SDP)  # gw1 answers after all
    assert w.methods_to(first) == ["INVITE", "ACK", "BYE"]
    assert first.state is LegState.ENDED
    w.respond_leg(2, 200, body=ANSWER_SDP)
    assert w.caller_statuses == [100, 200]
    assert w.call_events[-1].kind == pb.CallEvent.ANSWERED
    assert w.call_events[-1].trunk == "gw2"


def test_forking_two_18x_and_the_200_from_the_second() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 180, tag="fork1")
    w.respond_leg(1, 183, tag="fork2", body=ANSWER_SDP)
    assert w.caller_statuses == [100, 180, 183]
    to_tags = {r.to.tag for r in w.invite_txn.responses[1:]}
    assert to_tags == {w.call.local_tag}  # the caller sees one dialog, ours
    w.respond_leg(1, 200, tag="fork2", body=ANSWER_SDP)
    leg = w.leg()
    assert leg.dialog is not None and leg.dialog.remote.tag == "fork2"
    w.caller_request("ACK")
    assert w.sent[id(leg)][-1].to.tag == "fork2"
    # the first fork answers late: ACKed and hung up, the call stays on fork2
    w.respond_leg(1, 200, tag="fork1")
    ack, bye = w.sent[id(leg)][-2:]
    assert (ack.method, ack.to.tag, bye.method, bye.to.tag) == ("ACK", "fork1", "BYE", "fork1")
    assert w.call.state is CallState.ANSWERED


def test_a_2xx_retransmission_gets_our_ack_again() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 200)
    w.caller_request("ACK")
    w.respond_leg(1, 200)  # our ACK was lost
    assert w.methods_to(w.leg()) == ["INVITE", "ACK", "ACK"]


def test_bye_crossing_the_200() -> None:
    """The caller hangs up (BYE after a 18x with our tag) as the callee answers."""
    w = World()
    w.start()
    w.respond_leg(1, 180)
    bye = w.caller_request("BYE")  # an early-dialog BYE: as good as a CANCEL
    assert bye.statuses == [200]
    assert w.caller_statuses == [100, 180, 487]
    leg = w.leg()
    w.respond_leg(1, 200)
    assert w.methods_to(leg) == ["INVITE", "ACK", "BYE"]
    assert w.call.state is CallState.ENDED and leg.state is LegState.ENDED


def test_the_callee_hangs_up() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 200)
    w.caller_request("ACK")
    bye = w.callee_request(1, "BYE")
    assert bye.statuses == [200]
    assert w.methods_to(w.call) == ["BYE"]  # to the caller, in its dialog
    assert w.call_events[-1].ended_by == "callee"


def test_a_reinvite_crosses_both_ways_with_its_sdp() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 200, body=ANSWER_SDP)
    w.caller_request("ACK")
    hold = SDP.replace(b"m=audio", b"a=sendonly\r\nm=audio")
    reinvite = w.caller_request("INVITE", hold)
    assert reinvite.statuses == [100]
    leg = w.leg()
    sent = w.sent[id(leg)][-1]
    assert (sent.method, sent.body) == ("INVITE", hold)
    # the callee's 200 comes back through the leg's transaction
    request_id = next(iter(leg.relay.sent))
    answer = make_response(sent, 200, headers=[("Content-Type", "application/sdp")], body=SDP)
    w.feed(leg, e.InDialogResponse(request_id, answer))
    w.settle()
    assert reinvite.statuses == [100, 200]
    assert reinvite.responses[-1].body == SDP
    assert reinvite.responses[-1].headers.get("contact") == w.call.local.contact
    w.caller_request("ACK")
    assert w.methods_to(leg)[-1] == "ACK"


def test_reinvite_before_the_answer_gets_491() -> None:
    """A re-INVITE in the early dialog (glare with our pending INVITE): 491 (RFC 3261 14.1)."""
    w = World()
    w.start()
    w.respond_leg(1, 180)
    reinvite = w.caller_request("INVITE", SDP)
    assert reinvite.statuses == [491]
    info = w.caller_request("INFO")
    assert info.statuses == [481]
    assert w.call.state is CallState.RINGING


def test_a_stale_cseq_gets_500() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 200)
    w.caller_request("ACK")
    w.caller_request("INFO")  # CSeq 2, relayed to the leg
    dialog = w.call.dialog
    assert dialog is not None and dialog.remote_cseq == 2
    stale = w.caller_request("INFO", cseq=2)  # again, as a new transaction: out of order
    assert stale.statuses == [500]  # RFC 3261 12.2.2


def test_no_ack_for_our_2xx_ends_the_call_both_ways() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 200)
    w.feed(w.call, e.AckTimedOut())
    w.settle()
    assert w.methods_to(w.call) == ["BYE"]
    assert w.methods_to(w.leg())[-1] == "BYE"
    assert (w.call_events[-1].status, w.call_events[-1].ended_by) == (408, "system")


def test_hangup_by_the_api_before_and_after_answer() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 180)
    w.feed(w.call, e.HangupRequested("api", "hangup by api"))
    w.settle()
    final = w.invite_txn.responses[-1]
    assert final.status == 487 and "hangup by api" in (final.headers.get("reason") or "")
    w2 = World()
    w2.start()
    w2.respond_leg(1, 200)
    w2.feed(w2.call, e.HangupRequested("api", "hangup by api"))
    w2.settle()
    assert w2.methods_to(w2.call) == ["BYE"] and w2.methods_to(w2.leg())[-1] == "BYE"
    assert w2.call_events[-1].ended_by == "api"


def test_a_refused_route_answers_with_the_diagnostic() -> None:
    w = World()
    w.start(route=False)
    decision = pb.RouteDecision(
        result=pb.RouteDecision.NO_ROUTE, status=403, reason="no route for +1999"
    )
    w.feed(w.call, e.RouteDecided(decision))
    final = w.invite_txn.responses[-1]
    assert final.status == 403
    assert final.headers.get("reason") == 'SIP;cause=403;text="no route for +1999"'
    assert w.kinds == ["started", "ended"]


def test_each_leg_has_its_own_identity() -> None:
    w = World()
    w.start()
    invite = w.leg().invite
    assert invite.call_id != "caller-call-id"
    assert invite.from_.tag != "caller"
    assert invite.headers.get("contact") == "<sip:10.0.0.2:5060>"
    assert invite.max_forwards == 69
