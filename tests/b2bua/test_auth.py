"""Digest challenges from a trunk with credentials (RFC 3261 22.2): each answered once, a
second one for the same request is a failure (no loop), and refused credentials fail the
leg over to the next trunk with the reason; in the dialog, BYE and re-INVITE alike."""

from __future__ import annotations

from tandem.b2bua import CallState, LegState
from tandem.b2bua import events as e
from tandem.b2bua.profile import Profile
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, Response, make_response
from tandem.sip.digest import Authorization, Credentials, DigestServer, Verdict
from tests.b2bua.world import ANSWER_SDP, SDP, World, target

REALM = "carrier.test"
KEY = b"k" * 32
GOOD = Credentials("tandem", "s3cret-pw")


def carrier(credentials: Credentials | None = GOOD) -> World:
    """A call to gw1, whose profile has `credentials`, then gw2."""
    profile = Profile(
        trunk="gw1", session_expires_s=0, auth=credentials is not None, credentials=credentials
    )
    w = World(target("gw1"), target("gw2"), gw1=profile)
    w.start()
    return w


def challenged(w: World, request: Request, status: int = 401, stale: bool = False) -> Response:
    """The carrier's 401 (or 407) to `request`, with its challenges."""
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    values = DigestServer(REALM, KEY).challenges(w.now, stale=stale)
    return make_response(request, status, to_tag="gwtag", headers=[(header, v) for v in values])


def challenge(w: World, request: Request, status: int = 401, stale: bool = False) -> None:
    """The carrier challenges the leg's INVITE."""
    w.feed(w.leg(), e.InviteResponse(challenged(w, request, status, stale)))
    w.settle()


def verdict(w: World, request: Request, header: str) -> Verdict:
    """What the carrier, knowing the right password, makes of the answer."""
    value = request.headers.get(header)
    assert value is not None, f"no {header} in {request.method}"
    answer = Authorization.parse(value)
    return DigestServer(REALM, KEY).verify(
        answer, request.method, request.uri, GOOD.password, w.now
    )


def test_a_challenged_invite_is_sent_again_with_credentials_and_its_ack_carries_them() -> None:
    w = carrier()
    leg = w.leg()
    first = leg.invite
    challenge(w, first)
    assert w.methods_to(leg) == ["INVITE", "INVITE"]
    second = leg.invite
    assert second.cseq.number == first.cseq.number + 1 and second.call_id == first.call_id
    assert verdict(w, second, "authorization") is Verdict.OK
    assert leg.state is LegState.CALLING and w.call.state is CallState.TRYING
    w.respond_leg(1, 200, body=ANSWER_SDP)
    w.caller_request("ACK")
    ack = w.sent[id(leg)][-1]
    assert ack.method == "ACK" and ack.cseq.number == second.cseq.number
    assert ack.headers.get("authorization") == second.headers.get("authorization")
    assert w.caller_statuses == [100, 200]


def test_a_proxy_challenge_is_answered_with_proxy_authorization() -> None:
    w = carrier()
    challenge(w, w.leg().invite, status=407)
    assert verdict(w, w.leg().invite, "proxy-authorization") is Verdict.OK
    assert "authorization" not in w.leg().invite.headers


def test_a_wrong_password_is_tried_once_then_the_call_fails_over_with_the_reason() -> None:
    w = carrier(Credentials("tandem", "wrong"))
    leg = w.leg()
    challenge(w, leg.invite)
    assert verdict(w, leg.invite, "authorization") is Verdict.WRONG  # what the carrier finds
    challenge(w, leg.invite)  # refused again: no third INVITE
    assert w.methods_to(leg) == ["INVITE", "INVITE"]
    assert leg.state is LegState.ENDED
    failed = [ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED]
    [gw1] = failed
    assert (gw1.trunk, gw1.failure, gw1.received_status) == ("gw1", "auth", 401)
    assert "credentials refused" in gw1.reason and "wrong" not in gw1.reason
    assert len(w.legs) == 2 and w.legs[1].profile.trunk == "gw2"  # failed over
    assert w.failovers == ["auth"]


def test_a_stale_nonce_is_answered_once_more() -> None:
    w = carrier()
    leg = w.leg()
    challenge(w, leg.invite)
    challenge(w, leg.invite, stale=True)  # the nonce ran out: not a refusal
    assert w.methods_to(leg) == ["INVITE"] * 3
    challenge(w, leg.invite, stale=True)  # but not for ever
    assert leg.state is LegState.ENDED and w.methods_to(leg) == ["INVITE"] * 3


def test_without_credentials_a_challenge_is_a_final_like_any_other() -> None:
    w = carrier(credentials=None)
    challenge(w, w.leg().invite)
    assert w.methods_to(w.leg()) == ["INVITE"]
    assert w.caller_statuses == [100, 401] and len(w.legs) == 1


def test_a_challenge_for_another_realm_is_no_answer_for_us() -> None:
    w = carrier(Credentials("tandem", "s3cret-pw", realm="other.test"))
    challenge(w, w.leg().invite)
    [failed] = [ev for ev in w.call_events if ev.kind == pb.CallEvent.LEG_FAILED]
    assert failed.failure == "auth" and "no Digest challenge" in failed.reason


def answered_call() -> tuple[World, Response]:
    w = carrier()
    w.respond_leg(1, 200, body=ANSWER_SDP)
    w.caller_request("ACK")
    return w, w.invite_txn.responses[-1]


def test_a_challenged_bye_is_sent_again_after_the_leg_ended() -> None:
    w, _ = answered_call()
    leg = w.leg()
    w.caller_request("BYE")
    bye = w.sent[id(leg)][-1]
    assert bye.method == "BYE" and leg.state is LegState.ENDED and id(leg) in w.released
    w.feed(leg, e.InDialogResponse("bye", challenged(w, bye)))
    again = w.sent[id(leg)][-1]
    assert again.method == "BYE" and again.cseq.number == bye.cseq.number + 1
    assert verdict(w, again, "authorization") is Verdict.OK
    w.feed(leg, e.InDialogResponse("bye", challenged(w, again)))
    assert w.methods_to(leg).count("BYE") == 2  # refused again: given up, no loop
    assert leg.side.authenticating == {}


def test_a_challenged_reinvite_crosses_once_answered() -> None:
    w, _ = answered_call()
    leg = w.leg()
    reinvite = w.caller_request("INVITE", body=SDP.replace(b"4000", b"4002"))
    out = w.sent[id(leg)][-1]
    [request_id] = leg.side.authenticating  # the relayed re-INVITE, kept in case
    w.feed(leg, e.InDialogResponse(request_id, challenged(w, out, 407)))
    w.settle()
    again = w.sent[id(leg)][-1]
    assert (again.method, again.cseq.number) == ("INVITE", out.cseq.number + 1)
    assert verdict(w, again, "proxy-authorization") is Verdict.OK
    assert reinvite.statuses == [100]  # the caller hears nothing of the challenge
    sdp = [("Content-Type", "application/sdp")]
    w.feed(
        leg, e.InDialogResponse(request_id, make_response(again, 200, headers=sdp, body=ANSWER_SDP))
    )
    w.settle()
    assert reinvite.statuses == [100, 200] and reinvite.responses[-1].body == ANSWER_SDP
    assert leg.side.authenticating == {}
    w.caller_request("ACK")
    ack = w.sent[id(leg)][-1]
    assert (ack.method, ack.cseq.number) == ("ACK", again.cseq.number)
