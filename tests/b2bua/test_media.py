"""Anchored media in memory: every SDP that crosses an anchored call goes through rtpengine
(a fake one that puts its own address in), in order, and what happens when it refuses, does
not answer, forgets the call, or a party's RTP stops."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.b2bua import CallState, LegState, ProtocolError
from tandem.b2bua import actions as a
from tandem.b2bua import events as e
from tandem.b2bua.profile import Profile
from tandem.pb import tandem_pb2 as pb
from tandem.sip import make_response
from tests.b2bua.world import ANSWER_SDP, RTPENGINE, SDP, Txn, World, caller_invite, target

HOLD = SDP.replace(b"m=audio 4000 RTP/AVP 0\r\n", b"m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n")
HELD = ANSWER_SDP.replace(
    b"m=audio 4000 RTP/AVP 0\r\n", b"m=audio 4000 RTP/AVP 0\r\na=recvonly\r\n"
)
CALLEE_OFFER = SDP.replace(b"10.1.0.2", b"10.3.0.2").replace(b"4000", b"6000")


def anchored(**more: Any) -> pb.RouteTarget:
    return target("gw1", media="anchor", media_timeout_s=30, **more)


def answered(w: World) -> None:
    w.respond_leg(1, 200, body=ANSWER_SDP)
    w.caller_request("ACK")


def only_rtpengine(body: bytes) -> None:
    assert RTPENGINE.encode() in body
    assert b"10.1.0.2" not in body and b"10.2.0.2" not in body and b"10.3.0.2" not in body


def ended(w: World) -> pb.CallEvent:
    assert w.call_events[-1].kind == pb.CallEvent.ENDED
    return w.call_events[-1]


def test_a_bypassed_call_asks_rtpengine_nothing() -> None:
    w = World(target("gw1"))
    w.start()
    answered(w)
    w.caller_request("BYE")
    assert w.rtpengine.requests == []
    assert w.leg().invite.body == SDP and w.invite_txn.responses[-1].body == ANSWER_SDP
    assert ended(w).media == "" and not ended(w).quality


def test_the_offer_and_the_answer_go_through_rtpengine() -> None:
    w = World(anchored(srtp="sdes", ice="force"))
    w.start()
    (offer,) = w.rtpengine.of(a.MediaOffer)
    assert (offer.sdp, offer.from_tag, offer.to_tag) == (SDP, "caller", "")
    assert offer.towards == a.Towards("sdes", "force")  # what the gateway's side speaks
    leg = w.leg()
    only_rtpengine(leg.invite.body)
    assert w.leg_created and leg.id in w.leg_created
    w.respond_leg(1, 200, body=ANSWER_SDP)
    (answer,) = w.rtpengine.of(a.MediaAnswer)
    assert (answer.sdp, answer.from_tag, answer.to_tag) == (ANSWER_SDP, "caller", leg.id)
    assert answer.towards == a.Towards("off", "remove")  # the caller's trunk: plain RTP
    only_rtpengine(w.invite_txn.responses[-1].body)
    assert w.call.state is CallState.ANSWERED
    media = [ev.media for ev in w.call_events if ev.kind == pb.CallEvent.ANSWERED]
    assert media == ["anchored"]


def test_the_caller_trunk_anchoring_is_enough() -> None:
    w = World(target("gw1"), caller=Profile(trunk="pbx", session_expires_s=0, media="anchor"))
    w.start()
    only_rtpengine(w.leg().invite.body)
    w.respond_leg(1, 200, body=ANSWER_SDP)
    only_rtpengine(w.invite_txn.responses[-1].body)


def test_early_media_then_the_answer_each_rewritten_in_order() -> None:
    """The 183 and the 200 both arrive while rtpengine still rewrites the 183: the caller
    hears the 183 first, then the 200, each with rtpengine's SDP."""
    w = World(anchored())
    w.start()
    w.rtpengine.holding = True
    w.respond_leg(1, 183, body=ANSWER_SDP)
    w.respond_leg(1, 200, body=ANSWER_SDP)
    assert w.caller_statuses == [100]  # nothing crossed yet: the 183 is being rewritten
    w.rtpengine.release(w)  # the 183's rewrite; the 200's goes out now
    assert w.caller_statuses == [100, 183]
    w.rtpengine.release(w)
    assert w.caller_statuses == [100, 183, 200]
    for response in w.invite_txn.responses[1:]:
        only_rtpengine(response.body)
    answers = w.rtpengine.of(a.MediaAnswer)
    assert [x.to_tag for x in answers] == [w.leg().id] * 2


def test_hold_and_resume_by_re_invite_both_ways() -> None:
    w = World(anchored())
    w.start()
    answered(w)
    leg = w.leg()
    hold = w.caller_request("INVITE", body=HOLD)
    offer = w.rtpengine.of(a.MediaOffer)[-1]
    assert (offer.sdp, offer.from_tag, offer.to_tag) == (HOLD, "caller", leg.id)
    reinvite = w.sent[id(leg)][-1]
    assert reinvite.method == "INVITE" and b"a=sendonly" in reinvite.body
    only_rtpengine(reinvite.body)
    ok = make_response(reinvite, 200, headers=[("Content-Type", "application/sdp")], body=HELD)
    w.feed(leg, e.InDialogResponse(next(iter(leg.relay.sent)), ok))
    w.settle()
    answer = w.rtpengine.of(a.MediaAnswer)[-1]
    assert (answer.sdp, answer.from_tag, answer.to_tag) == (HELD, "caller", leg.id)
    assert hold.statuses[-1] == 200
    only_rtpengine(hold.responses[-1].body)
    assert b"a=recvonly" in hold.responses[-1].body
    # the callee resumes: its re-INVITE is an offer from its leg to the caller
    w.callee_request(1, "INVITE", body=ANSWER_SDP)
    offer = w.rtpengine.of(a.MediaOffer)[-1]
    assert (offer.from_tag, offer.to_tag) == (leg.id, "caller")
    only_rtpengine(w.sent[id(w.call)][-1].body)


def test_an_early_update_crosses_through_rtpengine() -> None:
    w = World(anchored())
    w.start()
    w.respond_leg(1, 183, body=ANSWER_SDP)
    update = w.caller_request("UPDATE", body=HOLD)
    leg = w.leg()
    sent = w.sent[id(leg)][-1]
    assert sent.method == "UPDATE"
    only_rtpengine(sent.body)
    ok = make_response(sent, 200, headers=[("Content-Type", "application/sdp")], body=HELD)
    w.feed(leg, e.InDialogResponse(next(iter(leg.relay.sent)), ok))
    w.settle()
    assert update.statuses == [200]
    only_rtpengine(update.responses[-1].body)


def test_a_delayed_offer_the_callee_offers_and_the_caller_answers_in_its_ack() -> None:
    w = World(anchored())
    w.invite_txn = Txn(caller_invite(body=b""))  # an INVITE without SDP
    w.start()
    assert w.leg().invite.body == b"" and w.rtpengine.requests == []
    w.respond_leg(1, 200, body=CALLEE_OFFER)
    (offer,) = w.rtpengine.of(a.MediaOffer)
    assert (offer.sdp, offer.from_tag) == (CALLEE_OFFER, w.leg().id)
    only_rtpengine(w.invite_txn.responses[-1].body)
    w.caller_request("ACK", body=SDP)
    (answer,) = w.rtpengine.of(a.MediaAnswer)
    assert (answer.from_tag, answer.to_tag, answer.sdp) == (w.leg().id, "caller", SDP)
    ack = w.sent[id(w.leg())][-1]
    assert ack.method == "ACK"
    only_rtpengine(ack.body)


def test_rtpengine_unreachable_at_offer_time_is_503() -> None:
    w = World(anchored())
    w.rtpengine.unreachable = True
    w.start()
    assert w.caller_statuses == [100, 503]
    refusal = w.invite_txn.responses[-1]
    assert refusal.headers.get("retry-after")
    assert "media relay unavailable" in (refusal.headers.get("warning") or "")
    assert w.legs == []
    assert ended(w).end_reason == "media_unavailable"
    assert id(w.call) in w.released
    assert w.rtpengine.of(a.MediaDelete) == []  # no session was made: none to delete


def test_rtpengine_unreachable_with_fallback_bypasses_it() -> None:
    w = World(anchored(media_fallback="bypass"))
    w.rtpengine.unreachable = True
    w.start()
    assert w.leg().invite.body == SDP  # the caller's own SDP, as in media bypass
    answered(w)
    assert w.invite_txn.responses[-1].body == ANSWER_SDP
    assert len(w.rtpengine.requests) == 1  # nothing more was asked of it
    answered_event = next(ev for ev in w.call_events if ev.kind == pb.CallEvent.ANSWERED)
    assert answered_event.media == "fallback"


def test_an_sdp_rtpengine_refuses_is_488_with_its_reason() -> None:
    w = World(anchored())
    w.rtpengine.refuse = "Incomplete SDP specification"
    w.start()
    assert w.caller_statuses == [100, 488]
    warning = w.invite_txn.responses[-1].headers.get("warning") or ""
    assert "rtpengine refused the SDP: Incomplete SDP specification" in warning
    assert ended(w).end_reason == "media_rejected" and w.legs == []


def test_a_re_invite_rtpengine_refuses_is_answered_488_and_the_call_goes_on() -> None:
    w = World(anchored())
    w.start()
    answered(w)
    sent_before = list(w.methods_to(w.leg()))
    w.rtpengine.refuse = "Failed to parse SDP"
    reinvite = w.caller_request("INVITE", body=b"v=0\r\ngarbage\r\n")
    assert reinvite.statuses == [100, 488]
    assert w.methods_to(w.leg()) == sent_before  # nothing crossed
    assert w.call.state is CallState.ANSWERED
    w.rtpengine.refuse = ""
    again = w.caller_request("INVITE", body=HOLD)
    assert w.methods_to(w.leg())[-1] == "INVITE" and again.statuses == [100]


def test_the_end_waits_for_rtpengine_and_carries_each_partys_figures() -> None:
    w = World(anchored())
    w.start()
    answered(w)
    leg = w.leg()
    w.rtpengine.packets = {"caller": 500, leg.id: 480}
    w.rtpengine.holding = True
    w.caller_request("BYE")
    assert w.methods_to(leg)[-1] == "BYE"  # the BYE does not wait
    assert w.call_events[-1].kind != pb.CallEvent.ENDED and id(w.call) not in w.released
    w.rtpengine.release(w)
    end = ended(w)
    assert [(q.leg_id, q.packets_from) for q in end.quality] == [("", 500), (leg.id, 480)]
    assert end.media == "anchored" and all(q.rtpengine for q in end.quality)
    assert w.qualities[leg.id].packets_from == 480  # the leg's span gets its own figures
    assert id(w.call) in w.released


def test_a_silent_party_is_ended_by_the_media_timeout() -> None:
    w = World(anchored())  # the gateway's media_timeout_s is 30
    w.start()
    answered(w)
    leg = w.leg()
    for second in range(0, 60, 5):
        w.rtpengine.packets = {"caller": 50 * second, leg.id: 50 * min(second, 10)}
        w.advance(5)
        if w.call.state is CallState.ENDED:
            break
    end = ended(w)
    assert end.end_reason == "media_timeout" and end.reason == "no RTP from gw1 for 30 s"
    # the gateway's packets stopped moving at 10 s; 30 s later, at most a check later, BYE
    assert 40 <= w.now - 1_700_000_000.0 <= 45
    assert w.methods_to(leg)[-1] == "BYE" and w.methods_to(w.call)[-1] == "BYE"
    assert w.rtpengine.of(a.MediaQuery)


def test_a_held_party_is_not_silent() -> None:
    w = World(anchored())
    w.start()
    answered(w)
    leg = w.leg()
    w.caller_request("INVITE", body=HOLD)
    reinvite = w.sent[id(leg)][-1]
    ok = make_response(reinvite, 200, headers=[("Content-Type", "application/sdp")], body=HELD)
    w.feed(leg, e.InDialogResponse(next(iter(leg.relay.sent)), ok))
    w.settle()
    for second in range(0, 120, 5):  # the held gateway sends nothing, the caller keeps on
        w.rtpengine.packets = {"caller": 50 * second, leg.id: 0}
        w.advance(5)
    assert w.call.state is CallState.ANSWERED


def test_an_rtpengine_restart_mid_call_is_in_the_record() -> None:
    w = World(anchored())
    w.start()
    answered(w)
    leg = w.leg()
    w.rtpengine.packets = {"caller": 100, leg.id: 90}
    w.advance(8)  # two queries read the figures
    w.rtpengine.lost = True
    w.advance(40)  # it no longer knows the call: no RTP can move, the timeout ends it
    end = ended(w)
    assert end.end_reason == "media_timeout"
    assert end.media_note.startswith("rtpengine lost the session")
    assert [(q.packets_from, q.lost) for q in end.quality] == [(100, True), (90, True)]


def test_a_cancel_while_rtpengine_rewrites_the_offer() -> None:
    w = World(anchored())
    w.rtpengine.holding = True
    w.start()
    w.feed(w.call, e.CallerCancelled())
    w.settle()
    assert w.caller_statuses == [100, 487] and w.legs == []
    assert id(w.call) not in w.released  # the offer is still out: a session may follow
    w.rtpengine.release(w)  # the rewrite comes: the session it made is deleted
    assert w.legs == [] and len(w.rtpengine.of(a.MediaDelete)) == 1
    w.rtpengine.release(w)
    assert ended(w).end_reason == "cancelled" and id(w.call) in w.released


def test_a_request_behind_a_rewrite_waits_for_it() -> None:
    w = World(anchored())
    w.start()
    answered(w)
    leg = w.leg()
    w.rtpengine.holding = True
    w.caller_request("INVITE", body=HOLD)
    info = w.caller_request("INFO")
    assert w.methods_to(leg)[-1] == "ACK"  # the re-INVITE waits for rtpengine, INFO behind it
    w.rtpengine.release(w)
    assert w.methods_to(leg)[-2:] == ["INVITE", "INFO"]
    assert info.statuses == []


def test_a_blind_transfer_by_the_callee_anchors_the_new_leg() -> None:
    w = World(anchored(), target("gw3", called="+14255550199", media="anchor"))
    w.start()
    answered(w)
    refer = w.callee_request(1, "REFER", extra=[("Refer-To", "<sip:+14255550199@x>")])
    assert refer.statuses == [202]
    decision = pb.RouteDecision(
        result=pb.RouteDecision.ROUTED,
        targets=[target("gw3", called="+14255550199", media="anchor", media_timeout_s=30)],
    )
    w.feed(w.call, e.RouteDecided(decision))
    w.settle()
    new = w.leg(2)
    only_rtpengine(new.invite.body)
    offer = w.rtpengine.of(a.MediaOffer)[-1]
    assert offer.from_tag == "caller" and offer.sdp == SDP
    w.respond_leg(2, 200, body=CALLEE_OFFER)
    answer = w.rtpengine.of(a.MediaAnswer)[-1]
    assert (answer.from_tag, answer.to_tag) == ("caller", new.id)
    join = w.sent[id(w.call)][-1]
    assert join.method == "INVITE"
    only_rtpengine(join.body)
    assert new.state is LegState.ANSWERED
    ok = make_response(join, 200, headers=[("Content-Type", "application/sdp")], body=SDP)
    w.feed(w.call, e.InDialogResponse("join", ok))
    w.settle()
    answers = [ev for ev in w.call_events if ev.kind == pb.CallEvent.ANSWERED]
    assert answers[-1].media == "anchored" and answers[-1].leg_id == new.id
    # the caller and its new party: a silent new party is timed out as the first would be
    w.rtpengine.packets = {"caller": 100, new.id: 0}
    for _ in range(12):
        w.rtpengine.packets["caller"] += 250
        w.advance(5)
    assert ended(w).end_reason == "media_timeout"
    assert ended(w).reason == "no RTP from gw3 for 30 s"


MEDIA_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("leg"), st.sampled_from([180, 183, 200, 486, 503]), st.booleans()),
        st.tuples(st.just("time"), st.floats(0.1, 20.0), st.just(False)),
        st.tuples(st.just("caller"), st.sampled_from(["ACK", "BYE", "INVITE"]), st.booleans()),
        st.tuples(st.just("callee"), st.sampled_from(["BYE", "INVITE"]), st.booleans()),
        st.tuples(st.just("cancel"), st.just(0), st.just(False)),
        st.tuples(st.just("hangup"), st.just(0), st.just(False)),
        st.tuples(
            st.just("rtpengine"),
            st.sampled_from(["hold", "release", "refuse", "unreachable", "lost", "fine"]),
            st.just(False),
        ),
    ),
    max_size=16,
)


@settings(max_examples=300, deadline=None)
@given(steps=MEDIA_STEPS)
def test_no_sequence_leaves_an_anchored_call_stuck(steps: list[tuple[str, Any, bool]]) -> None:
    """Whatever rtpengine and the parties do, an anchored call ends, its INVITE answered
    once, every leg released, and its end published after rtpengine's figures (or none)."""
    w = World(anchored(), target("gw2", media="anchor", media_fallback="bypass"))
    rtpengine = w.rtpengine
    w.start()
    for step, arg, sdp in steps:
        live = id(w.call) not in w.released
        try:
            if step == "leg" and w.legs and id(w.legs[-1]) not in w.released:
                body = ANSWER_SDP if arg in (183, 200) else b""
                w.respond_leg(len(w.legs), arg, body=body)
            elif step == "time":
                w.advance(arg)
            elif step == "caller" and live and w.call.dialog is not None:
                w.caller_request(arg, body=HOLD if sdp and arg != "BYE" else b"")
            elif step == "callee" and w.legs and w.legs[-1].dialog is not None:
                if id(w.legs[-1]) not in w.released:
                    w.callee_request(len(w.legs), arg, body=ANSWER_SDP if sdp else b"")
            elif step == "cancel" and live and w.caller_statuses[-1] < 200:
                w.feed(w.call, e.CallerCancelled())
                w.settle()
            elif step == "hangup" and live:
                w.feed(w.call, e.HangupRequested("api", "test"))
                w.settle()
            elif step == "rtpengine":
                rtpengine.holding = arg == "hold"
                rtpengine.refuse = "Failed to parse SDP" if arg == "refuse" else ""
                rtpengine.unreachable = arg == "unreachable"
                rtpengine.lost = arg == "lost"
                if arg != "hold":
                    rtpengine.release(w)
        except ProtocolError:
            pass
    rtpengine.holding, rtpengine.refuse, rtpengine.unreachable = False, "", False
    rtpengine.release(w)
    w.end_everything()
    assert id(w.call) in w.released
    assert w.caller_statuses[-1] >= 200
    assert all(id(leg) in w.released for leg in w.legs)
    assert w.call_events[-1].kind == pb.CallEvent.ENDED
    assert sum(ev.kind == pb.CallEvent.ENDED for ev in w.call_events) == 1
    # a session rtpengine made is deleted once, and only then is the end published
    assert len(rtpengine.of(a.MediaDelete)) == (1 if rtpengine.made else 0)
