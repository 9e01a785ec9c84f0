"""Each dialog's own duties, with an explicit clock: reliable provisionals both ways (RFC
3262), session timers (RFC 4028), glare (RFC 3261 14, RFC 3311), in-dialog OPTIONS."""

from __future__ import annotations

from tandem.b2bua import CallState, LegState
from tandem.b2bua import events as e
from tandem.b2bua.profile import Profile
from tandem.sip import Response, make_response
from tests.b2bua.world import ANSWER_SDP, SDP, Txn, World, target


def reliable_caller(w: World, require: bool = False) -> None:
    w.invite_txn.request.headers.add("Require" if require else "Supported", "100rel")


def prack(w: World, response: Response, rseq: str | None = None) -> Txn:
    rack = f"{rseq or response.headers.get('rseq')} 1 INVITE"
    return w.caller_request("PRACK", extra=[("RAck", rack)])


# ---- reliable provisionals to the caller --------------------------------------------


def test_a_caller_that_supports_100rel_gets_reliable_provisionals() -> None:
    w = World()
    reliable_caller(w)
    w.start()
    w.respond_leg(1, 183, body=ANSWER_SDP)
    ringing = w.invite_txn.responses[-1]
    assert ringing.status == 183 and ringing.headers.get("require") == "100rel"
    assert ringing.headers.get("rseq") is not None
    w.advance(0.5)
    w.advance(1.0)  # retransmitted at T1, then 2*T1
    assert w.invite_txn.statuses == [100, 183, 183, 183]
    ok = prack(w, ringing)
    assert ok.statuses == [200]
    w.advance(10)
    assert w.invite_txn.statuses == [100, 183, 183, 183]  # no more after its PRACK


def test_a_prack_that_matches_nothing_gets_481() -> None:
    w = World()
    reliable_caller(w)
    w.start()
    w.respond_leg(1, 180)
    ringing = w.invite_txn.responses[-1]
    wrong = prack(w, ringing, rseq=str(int(ringing.headers.get("rseq") or 0) + 5))
    assert wrong.statuses == [481]


def test_the_2xx_waits_for_the_prack_of_a_provisional_with_sdp() -> None:
    w = World()
    reliable_caller(w, require=True)
    w.start()
    w.respond_leg(1, 183, body=ANSWER_SDP)
    early = w.invite_txn.responses[-1]
    w.respond_leg(1, 200, body=ANSWER_SDP)
    assert w.caller_statuses == [100, 183]  # the 200 waits (RFC 3262 3)
    prack(w, early)
    assert w.caller_statuses == [100, 183, 200]


def test_a_reliable_provisional_never_pracked_fails_the_call_with_500() -> None:
    w = World()
    reliable_caller(w)
    w.start()
    w.respond_leg(1, 180)
    w.advance(40)  # 64 * T1 = 32 s
    assert w.caller_statuses[-1] == 500
    assert w.leg() in w.cancelled
    assert w.call_events[-1].end_reason == "no_prack"


def test_a_caller_without_100rel_gets_plain_provisionals() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 180)
    assert w.invite_txn.responses[-1].headers.get("rseq") is None


# ---- reliable provisionals from the callee ------------------------------------------


def reliable(w: World, n: int, status: int, rseq: int, body: bytes = b"") -> Response:
    leg = w.leg(n)
    headers = [("Contact", "<sip:gw@10.2.0.2>"), ("Require", "100rel"), ("RSeq", str(rseq))]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    response = make_response(leg.invite, status, to_tag="callee", headers=headers, body=body)
    w.feed(leg, e.InviteResponse(response))
    w.settle()
    return response


def test_the_leg_pracks_a_reliable_provisional_once() -> None:
    w = World()
    w.start()
    reliable(w, 1, 183, 7, ANSWER_SDP)
    pracks = [r for r in w.sent[id(w.leg())] if r.method == "PRACK"]
    assert [p.headers.get("rack") for p in pracks] == ["7 1 INVITE"]
    assert w.caller_statuses == [100, 183]
    reliable(w, 1, 183, 7, ANSWER_SDP)  # a retransmission: discarded
    assert len([r for r in w.sent[id(w.leg())] if r.method == "PRACK"]) == 1
    assert w.caller_statuses == [100, 183]
    reliable(w, 1, 180, 8)
    assert w.caller_statuses == [100, 183, 180]


def test_the_leg_offers_100rel_and_the_session_timer() -> None:
    gw1 = Profile(trunk="gw1", session_expires_s=1800, min_se_s=120)
    w = World(target("gw1"), gw1=gw1)
    w.start()
    invite = w.leg().invite
    assert "100rel" in (invite.headers.get("supported") or "")
    assert invite.headers.get("session-expires") == "1800"
    assert invite.headers.get("min-se") == "120"


# ---- session timers ------------------------------------------------------------------


def timed_caller(w: World, expires: str, supported: bool = True) -> None:
    headers = w.invite_txn.request.headers
    headers.add("Session-Expires", expires)
    if supported:
        headers.add("Supported", "timer")


def test_a_session_interval_below_our_min_se_gets_422() -> None:
    w = World(caller=Profile(trunk="pbx", session_expires_s=1800, min_se_s=300))
    timed_caller(w, "120")
    w.start()
    final = w.invite_txn.responses[-1]
    assert (final.status, final.headers.get("min-se")) == (422, "300")
    assert w.legs == [] and w.call.state is CallState.ENDED


def answered(w: World) -> Response:
    w.respond_leg(1, 200, body=ANSWER_SDP)
    w.caller_request("ACK")
    return w.invite_txn.responses[-1]


def test_a_caller_that_refreshes_and_then_stops_is_ended_as_expired() -> None:
    w = World(caller=Profile(trunk="pbx", session_expires_s=1800))
    timed_caller(w, "600;refresher=uac")
    w.start()
    ok = answered(w)
    assert ok.headers.get("session-expires") == "600;refresher=uac"
    assert ok.headers.get("require") == "timer"
    w.advance(500)
    refresh = w.caller_request("UPDATE")  # a refresh without SDP: answered here
    assert refresh.statuses == [200]
    assert [r.method for r in w.sent[id(w.leg())]] == ["INVITE", "ACK"]  # not relayed
    w.advance(600 - 32 - 1)
    assert w.call.state is CallState.ANSWERED
    w.advance(2)  # 600 s after the last refresh, less 32 s: it is gone
    assert w.methods_to(w.call) == ["BYE"]
    assert w.call_events[-1].end_reason == "session_expired"


def test_tandem_refreshes_a_caller_that_does_not_support_timers() -> None:
    w = World(caller=Profile(trunk="pbx", session_expires_s=1800))
    w.invite_txn.request.headers.add("Allow", "INVITE, ACK, BYE, CANCEL, UPDATE")
    w.start()
    ok = answered(w)
    assert ok.headers.get("session-expires") == "1800;refresher=uas"
    assert ok.headers.get("require") is None  # it does not know the extension
    w.advance(900)
    refresh = w.sent[id(w.call)][-1]
    assert refresh.method == "UPDATE"
    assert refresh.headers.get("session-expires") == "1800;refresher=uac"
    answer = make_response(refresh, 200)
    w.feed(w.call, e.InDialogResponse("refresh", answer))
    w.advance(899)
    assert [r.method for r in w.sent[id(w.call)]] == ["UPDATE"]
    w.advance(2)
    assert [r.method for r in w.sent[id(w.call)]] == ["UPDATE", "UPDATE"]


def test_a_refresh_answered_481_ends_the_call() -> None:
    w = World(caller=Profile(trunk="pbx", session_expires_s=1800))
    w.start()
    answered(w)
    w.advance(900)
    refresh = w.sent[id(w.call)][-1]
    assert refresh.method == "INVITE" and refresh.body == ANSWER_SDP  # no UPDATE allowed
    w.feed(w.call, e.InDialogResponse("refresh", make_response(refresh, 481)))
    w.settle()
    assert w.call.state is CallState.ENDED
    assert w.call_events[-1].end_reason == "session_expired"
    assert w.methods_to(w.leg())[-1] == "BYE"


def test_the_leg_refreshes_a_callee_that_ignores_timers_and_retries_after_491() -> None:
    gw1 = Profile(trunk="gw1", session_expires_s=1800)
    w = World(target("gw1"), gw1=gw1)
    w.start()
    answered(w)  # the 200 carries no Session-Expires: tandem refreshes itself
    leg = w.leg()
    w.advance(900)
    refresh = w.sent[id(leg)][-1]
    assert refresh.method == "INVITE" and refresh.body == SDP  # the offer it last sent
    w.feed(leg, e.InDialogResponse("refresh", make_response(refresh, 491)))
    w.advance(2.0)
    assert w.sent[id(leg)][-1] is refresh  # we own the Call-ID: wait 2.1 to 4 s
    w.advance(2.1)
    again = w.sent[id(leg)][-1]
    assert again is not refresh and again.method == "INVITE"
    w.feed(leg, e.InDialogResponse("refresh", make_response(again, 200)))
    assert w.sent[id(leg)][-1].method == "ACK"  # a re-INVITE's 2xx is ACKed
    assert leg.state is LegState.ANSWERED


def test_an_expired_leg_ends_the_call_with_its_reason() -> None:
    gw1 = Profile(trunk="gw1", session_expires_s=1800)
    w = World(target("gw1"), gw1=gw1)
    w.start()
    leg = w.leg()
    headers = [("Contact", "<sip:gw@10.2.0.2>"), ("Session-Expires", "1800;refresher=uas")]
    response = make_response(leg.invite, 200, to_tag="callee", headers=headers)
    w.feed(leg, e.InviteResponse(response))
    w.settle()
    w.caller_request("ACK")
    w.advance(1800 - 32 + 1)  # the callee was to refresh, and did not
    assert leg.state is LegState.ENDED
    assert w.call.state is CallState.ENDED
    assert w.call_events[-1].end_reason == "session_expired"
    assert w.methods_to(w.call) == ["BYE"]


# ---- glare, OPTIONS ------------------------------------------------------------------


def test_crossing_reinvites_get_491() -> None:
    w = World()
    w.start()
    answered(w)
    w.callee_request(1, "INVITE", SDP)  # relayed to the caller, awaiting its answer
    assert w.methods_to(w.call)[-1] == "INVITE"
    crossing = w.caller_request("INVITE", SDP)
    assert crossing.statuses == [491]


def test_an_update_with_an_offer_while_ours_is_pending_gets_491() -> None:
    w = World()
    w.start()
    answered(w)
    w.callee_request(1, "UPDATE", SDP)  # its offer goes to the caller
    crossing = w.caller_request("UPDATE", SDP)
    assert crossing.statuses == [491]


def test_in_dialog_options_are_answered_here() -> None:
    w = World()
    w.start()
    answered(w)
    options = w.caller_request("OPTIONS")
    assert options.statuses == [200]
    assert [r.method for r in w.sent[id(w.leg())]] == ["INVITE", "ACK"]


def test_requests_in_the_callers_dialog_go_to_its_contact() -> None:
    w = World()
    w.start()
    answered(w)
    w.callee_request(1, "BYE")
    bye = w.sent[id(w.call)][-1]
    assert bye.method == "BYE" and bye.uri == "sip:100@10.1.0.2:5060"


def test_an_early_update_crosses_both_ways() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 183, body=ANSWER_SDP)
    update = w.caller_request("UPDATE", SDP)
    sent = w.sent[id(w.leg())][-1]
    assert sent.method == "UPDATE" and sent.to.tag == "callee"
    request_id = next(iter(w.leg().relay.sent))
    answer = make_response(sent, 200, headers=[("Content-Type", "application/sdp")], body=SDP)
    w.feed(w.leg(), e.InDialogResponse(request_id, answer))
    w.settle()
    assert update.statuses == [200]
