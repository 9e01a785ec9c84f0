"""Calls always end (ring and call limits), a full trunk is refused or skipped, a trunk's
codes are translated before the failover decision, and redirects are relayed with their
Contacts or followed."""

from __future__ import annotations

from tandem.b2bua import CallState, LegState
from tandem.b2bua import events as e
from tandem.b2bua.profile import Profile
from tandem.pb import tandem_pb2 as pb
from tandem.sip import make_response
from tests.b2bua.world import World, target


def test_a_callee_that_rings_too_long_is_cancelled_and_the_caller_gets_480() -> None:
    w = World(target("gw1", max_ring_s=30), target("gw2"))
    w.start()
    w.respond_leg(1, 180)
    w.advance(29.9)
    assert w.call.state is CallState.RINGING
    w.advance(0.2)
    assert w.caller_statuses == [100, 180, 480]
    assert w.leg(1) in w.cancelled
    assert len(w.legs) == 1  # no failover: it already rang
    ended = w.call_events[-1]
    assert (ended.end_reason, ended.status) == ("no_answer", 480)


def test_no_ring_limit_when_it_is_zero() -> None:
    w = World(target("gw1", max_ring_s=0))
    w.start()
    w.respond_leg(1, 180)
    w.advance(3600)
    assert w.call.state is CallState.RINGING


def test_a_call_past_max_call_s_is_ended_both_ways() -> None:
    caller = Profile(trunk="pbx", max_call_s=3600, session_expires_s=0)
    w = World(target("gw1", max_call_s=600), caller=caller)
    w.start()
    w.respond_leg(1, 200)
    w.caller_request("ACK")
    w.advance(599)
    assert w.call.state is CallState.ANSWERED
    w.advance(2)  # the shorter of the two trunks' limits
    assert w.methods_to(w.call) == ["BYE"]
    assert w.methods_to(w.leg())[-1] == "BYE"
    assert w.call_events[-1].end_reason == "max_call"


def test_a_call_from_a_full_trunk_gets_503_before_it_is_routed() -> None:
    w = World()
    w.start(route=False)
    w.feed(w.call, e.AtLimit("trunk pbx is at its limit of 50 calls"))
    final = w.invite_txn.responses[-1]
    assert final.status == 503 and final.headers.get("retry-after") == "5"
    assert "at its limit of 50 calls" in (final.headers.get("reason") or "")
    assert not w.legs and w.call.state is CallState.ENDED
    assert w.call_events[-1].end_reason == "trunk_limit"


def test_a_full_egress_trunk_gives_the_call_to_the_next_target() -> None:
    w = World(target("gw1"), target("gw2"))
    w.full.add("gw1")
    w.start()
    assert len(w.legs) == 1 and w.legs[0].profile.trunk == "gw2"
    failed = next(ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED)
    assert (failed.trunk, failed.failure, failed.status) == ("gw1", "trunk_limit", 503)
    assert w.failovers == ["trunk_limit"]


def test_a_translated_code_decides_the_failover_and_the_event_keeps_both() -> None:
    gw1 = Profile(trunk="gw1", response_map=((404, 503),), session_expires_s=0)
    w = World(target("gw1"), target("gw2"), gw1=gw1)
    w.start()
    w.respond_leg(1, 404)
    assert len(w.legs) == 2  # 503 is a failover code, 404 is not
    failed = next(ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED)
    assert (failed.status, failed.received_status) == (503, 404)
    assert w.leg_events[0].received_status == 404


def test_a_code_no_map_changed_is_recorded_once() -> None:
    """received_status is the trunk's own code only when its map changed it: a failover's
    503 and a relayed 486 as they came are not recorded twice, nor a timeout as received."""
    w = World(target("gw1"), target("gw2"), target("gw3"))
    w.start()
    w.respond_leg(1, 503)
    w.feed(w.leg(2), e.InviteResponse(None, "timeout"))
    w.settle()
    w.respond_leg(3, 486)
    failed = [ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED]
    assert [(ev.status, ev.received_status) for ev in failed] == [(503, 0), (408, 0), (486, 0)]


def redirect(w: World, n: int, contacts: list[str]) -> None:
    leg = w.leg(n)
    response = make_response(
        leg.invite, 302, to_tag="r", headers=[("Contact", c) for c in contacts]
    )
    w.feed(leg, e.InviteResponse(response))
    w.settle()


def test_a_3xx_is_relayed_to_the_caller_with_its_contacts() -> None:
    w = World(target("gw1"), target("gw2"))
    w.start()
    redirect(w, 1, ["<sip:+14255559999@10.2.0.9>"])
    final = w.invite_txn.responses[-1]
    assert final.status == 302
    assert final.headers.get("contact") == "<sip:+14255559999@10.2.0.9>"
    assert len(w.legs) == 1


def test_a_followed_redirect_routes_each_contact_as_the_next_targets() -> None:
    w = World(target("gw1", redirect="follow"), target("gw2"))
    w.start()
    redirect(w, 1, ["<sip:+14255559999@10.2.0.9>", "<sip:+14255558888@10.2.0.8>"])
    assert [r.called for r in w.route_requests] == ["+14255550123", "+14255559999"]
    assert w.route_requests[-1].ingress_trunk == "pbx"
    decision = pb.RouteDecision(
        result=pb.RouteDecision.ROUTED, targets=[target("gw3", called="+14255559999")]
    )
    w.feed(w.call, e.RouteDecided(decision))
    w.settle()
    assert [leg.invite.uri.split("@")[0] for leg in w.legs] == [
        "sip:+14255550123",
        "sip:+14255559999",
    ]
    w.respond_leg(2, 486)  # not a failover code: the caller hears it; gw2 is never tried
    assert w.caller_statuses[-1] == 486


def test_a_redirect_no_route_matches_goes_on_with_the_next_contact_then_the_targets() -> None:
    w = World(target("gw1", redirect="follow"), target("gw2"))
    w.start()
    redirect(w, 1, ["<sip:+19995550000@10.2.0.9>"])
    refused = pb.RouteDecision(result=pb.RouteDecision.NO_ROUTE, status=403)
    w.feed(w.call, e.RouteDecided(refused))
    w.settle()
    assert w.leg(2).invite.uri.startswith("sip:+14255550123")  # gw2, the original target


def test_a_leg_answered_twice_over_gives_the_caller_one_2xx() -> None:
    w = World()
    w.start()
    w.respond_leg(1, 200)
    w.respond_leg(1, 200)
    assert w.caller_statuses.count(200) == 1
    assert w.leg().state is LegState.ANSWERED
