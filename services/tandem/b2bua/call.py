"""The call: the machine of a call that entered through this edge, from INVITE to the end.

Theory of operation
-------------------
The edge where a call arrives owns it. The call is the UAS of the caller's dialog (its
`Side` does what RFC 3262 and 4028 ask of that dialog) and the owner of an ordered list of
targets from one route decision; it tries them one at a time, each as a new egress leg
(`tandem.b2bua.leg`) on whichever edge serves the target's trunk, and relays between the
caller's dialog and the leg that answered. It publishes the call's events (started, routed,
leg_attempt, leg_progress, leg_answered, leg_failed, answered, ended) from which callstate
builds the records and CDRs.

States (`CallState`, the same names as the proto's and callstate's): ROUTING until the
decision, TRYING while an attempt runs and the caller has heard nothing but 100, RINGING
once a 18x reached the caller (RFC 3261 16.7: from then on there is no failover), ANSWERED
once a 2xx did, ENDED. The transitions, each checkable against RFC 3261:

    ROUTING  InviteReceived         100 Trying (8.2.6.1), started, ask the router; 422 when
                                    the session interval is below our Min-SE (RFC 4028)
    ROUTING  RouteDecided           refused: 403/503 with Reason and Warning -> ENDED
                                    routed: create the leg of target 1, failover timer -> TRYING
    ROUTING  RouteFailed            503 with Retry-After -> ENDED
    ROUTING  AtLimit                the caller's trunk is full (max_concurrent_calls across
                                    its edges): 503 with Retry-After -> ENDED
    TRYING   LegProgress            the 18x to the caller (reliable when it supports 100rel),
                                    no failover timer any more, ring timer -> RINGING
    TRYING   TimerFired(failover)   CANCEL the leg, next target
    TRYING   LegFailed              failover code, timeout, transport error: next target;
                                    3xx: relayed with its Contacts, or each Contact routed
                                    (the trunk's `redirect: follow`); other finals: that final
                                    to the caller -> ENDED
    TRYING   LegCreateAnswered      the edge refused the leg (or the trunk is full): next
                                    target
    TRYING   LegRetrying            the leg walks its trunk's targets (RFC 3263): the failover
                                    timer covers those left (a transfer's leg: its timer)
    TRYING   RouteDecided           a followed redirect's targets, tried next
    RINGING  LegProgress            each further 18x to the caller
    RINGING  LegFailed              its final to the caller -> ENDED
    RINGING  TimerFired(ring)       rang past max_ring_s: CANCEL the leg, 480 -> ENDED
    early    LegAnswered            the 2xx to the caller (13.3.1.4), call timer -> ANSWERED
    early    CallerCancelled        487 to the INVITE (9.2), CANCEL the leg -> ENDED
    early    InDialogRequest        PRACK (RFC 3262), UPDATE relayed (RFC 3311), BYE: as a
                                    CANCEL, OPTIONS answered, INVITE 491, others 481
    early    TimerFired(prack)      our reliable 18x again; unPRACKed for 64*T1: 500 -> ENDED
    early    LegEnded               480 -> ENDED
    any      HangupRequested        before answer 487, after it BYE both ways -> ENDED
    ANSWERED AckReceived            ACK to the leg
    ANSWERED InDialogRequest        BYE: 200, BYE to the leg -> ENDED; a pure session refresh
                                    and OPTIONS are answered here; others relayed to the leg
    ANSWERED LegRequested           the callee's request sent in the caller's dialog
    ANSWERED LegResponded           the leg's answer to the caller's relayed request
    ANSWERED InDialogResponse       the caller's answer relayed back to the leg
    ANSWERED LegEnded               BYE to the caller -> ENDED
    ANSWERED AckTimedOut            timer L: BYE both ways (RFC 6026) -> ENDED
    ANSWERED TimerFired             refresh: our session refresh (UPDATE or re-INVITE);
                                    expiry: no refresh came, BYE both ways; call_limit:
                                    max_call_s, BYE both ways -> ENDED
    ANSWERED InDialogRequest REFER  the trunk's `refer`: reject 403, relay it, or handle it:
    ANSWERED LegTransferRequested   202, route the Refer-To (or find the dialog its Replaces
                                    names), a new leg to the target, NOTIFY the referrer of
                                    its progress; on answer re-INVITE the transferee with the
                                    target's SDP, end the referrer: the call goes on as a new
                                    record (transferred_from/_to); on failure it goes on as
                                    it was
    ENDED    late answers           a leg created after the end is cancelled; a challenge to
                                    our BYE is answered (RFC 3261 22.2); others dropped

Anchored media (`tandem.b2bua.media`): every SDP that crosses goes through `_cross`, which
decides whether rtpengine rewrites it; while a rewrite is out, the events that would cross
behind it wait, and are replayed in order when it comes back:

    any      MediaRewritten         the crossing goes on with rtpengine's SDP
    any      MediaRefused           the crossing fails: the offer 488 (refused) or 503
                                    (unreachable; bypassed instead when the trunks allow), a
                                    relayed request answered so, an answer's call ended
    ANSWERED TimerFired(media)      query rtpengine for the call's figures
    ANSWERED MediaReported          a party silent for its media_timeout_s: BYE both ways
    ENDED    MediaReported(final)   the session's last figures: ended, with them (the end
                                    of an anchored call waits for rtpengine's delete)

("early" is ROUTING, TRYING and RINGING.) Every other pair raises `ProtocolError`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from typing import Any

from tandem.b2bua.actions import (
    Action,
    AskRoute,
    CallIds,
    CommandLeg,
    CreateLeg,
    DropLeg,
    Failover,
    FindDialog,
    Finished,
    MediaAnswer,
    MediaDelete,
    MediaOffer,
    MediaQuery,
    Publish,
    Release,
    Respond,
    StartTimer,
    StopTimer,
)
from tandem.b2bua.events import (
    AckReceived,
    AckTimedOut,
    AtLimit,
    CallerCancelled,
    DialogFound,
    Event,
    HangupRequested,
    InDialogRequest,
    InDialogResponse,
    InviteReceived,
    LegAnswered,
    LegCreateAnswered,
    LegEnded,
    LegFailed,
    LegProgress,
    LegRequested,
    LegResponded,
    LegRetrying,
    LegTransferRequested,
    MediaRefused,
    MediaReported,
    MediaRewritten,
    RouteDecided,
    RouteFailed,
    TimerFired,
    Txn,
)
from tandem.b2bua.local import ALLOW, RETRY_AFTER_S, USER_AGENT, Local, new_id, new_tag
from tandem.b2bua.machine import Handler, Machine, ProtocolError
from tandem.b2bua.media import (
    ANCHORED,
    SDP,
    Anchor,
    Crossing,
    Silence,
    TrunkMedia,
    direction,
    is_sdp,
)
from tandem.b2bua.profile import DEFAULT_FAILOVER_CODES, DEFAULT_FAILOVER_TIMER_S, Profile
from tandem.b2bua.records import Attempt, Record
from tandem.b2bua.relay import Relay, body_headers, respond, sip_body
from tandem.b2bua.side import REFRESH, Side
from tandem.b2bua.transfer import (
    CALLER,
    SIPFRAG,
    Referral,
    Transfer,
    notify_headers,
    referral,
    sipfrag,
)
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request
from tandem.sip.dialog import Dialog, DialogState
from tandem.sip.uri import NameAddr

Kind = pb.CallEvent.Kind
FORWARDED = ("History-Info", "Diversion")  # the leg's trunk decides whether they cross
MAX_REDIRECTS = 5  # Contacts followed per call, at most: a redirect loop ends here
HIDE_IDENTITY = frozenset(("id", "user", "header"))  # RFC 3323/3325 Privacy values


class CallState(Enum):
    ROUTING = pb.ROUTING
    TRYING = pb.TRYING
    RINGING = pb.RINGING
    ANSWERED = pb.ANSWERED
    ENDED = pb.ENDED


EARLY = (CallState.ROUTING, CallState.TRYING, CallState.RINGING)
# what would cross behind an SDP rtpengine is rewriting waits for it, in order
HELD = (
    LegProgress,
    LegAnswered,
    LegFailed,
    LegEnded,
    LegRequested,
    LegResponded,
    LegTransferRequested,
    InDialogRequest,
    InDialogResponse,
    AckReceived,
)
Then = Callable[[pb.SipBody], None]
Refused = Callable[[MediaRefused], None]


def number_of(uri_text: str) -> str:
    """The user part of a sip/tel URI: the number, as received."""
    scheme, _, rest = uri_text.partition(":")
    if scheme.lower() == "tel":
        return rest.partition(";")[0]
    user, at, _ = rest.partition("@")
    return user.partition(";")[0] if at else ""


def privacy_of(request: Request) -> set[str]:
    """The privacy a request asks for (RFC 3323 4.2: priv-values joined by ';', which some
    user agents write with ',')."""
    values = ",".join(request.headers.values("privacy")).replace(";", ",").lower()
    return {v.strip() for v in values.split(",") if v.strip()} - {"none"}


def _changed(status: int, received: int) -> int:
    """The trunk's own code for the record, when its response map changed it (else 0)."""
    return received if received != status else 0


def _number_in(name_addr: str) -> str:
    try:
        return number_of(str(NameAddr.parse(name_addr).uri))
    except ValueError:
        return ""


class Call(Machine):
    """One call this edge owns. `id` and `local_tag` exist before the first event."""

    KIND = "call"
    state: CallState

    def __init__(self, edge: str, profile: Profile, local: Local, trace_id: str = "") -> None:
        super().__init__()
        self.record = Record(new_id(), profile.trunk)
        self.edge = edge
        self.profile = profile
        self.trunk = profile.trunk
        self.local = local
        self.local_tag = new_tag()
        self.trace_id = trace_id
        self.state = CallState.ROUTING
        self.side = Side(self.step, profile, uac=False)
        self.invite: Request | None = None
        self.txn: Txn | None = None
        self.called = self.calling = self.display = ""
        self.privacy = ""  # the caller's Privacy values, for the legs
        self.identity: list[str] = []  # its P-Asserted-Identity, when its trunk is trusted
        self.started_ms = self.answered_ms = 0
        self.targets: list[pb.RouteTarget] = []
        self.attempts: dict[str, Attempt] = {}  # by leg id
        self.attempt: Attempt | None = None  # the latest
        self.failures: list[tuple[int, str, bool]] = []  # status, reason, timed out
        self.contacts: list[str] = []  # a followed redirect's numbers still to route
        self.asked = False  # a redirect's Contact is with the router
        self.redirects = 0
        self.relay = Relay()
        self.bridged: Attempt | None = None  # the leg in the caller's place, after a transfer
        self.transfer: Transfer | None = None
        self.anchor = Anchor(self.record.id)  # the rtpengine session, if the media is anchored
        self.ending: tuple[dict[str, Any], Finished] | None = None  # waits for its figures

    def handle(self, event: Event, now: float) -> list[Action]:
        """As every machine does; but while rtpengine rewrites an SDP, what would cross
        behind it waits (and is replayed when the rewrite comes back). A leg's events say
        which edge runs it (several may serve its trunk)."""
        if isinstance(event, LegProgress | LegAnswered | LegFailed) and event.edge:
            leg = self.attempts.get(event.leg_id)
            if leg is not None:
                leg.edge = event.edge
        if self.anchor.busy and self.state is not CallState.ENDED and isinstance(event, HELD):
            self.now = now
            self.anchor.held.append(event)
            return []
        return super().handle(event, now)

    @property
    def id(self) -> str:
        """The call's id, as callstate records it (a transfer gives it a new one)."""
        return self.record.id

    @property
    def dialog(self) -> Dialog | None:
        return self.side.dialog

    # ---- events out ----------------------------------------------------------------------

    def _publish(
        self, kind: pb.CallEvent.Kind, record: Record | None = None, **fields: Any
    ) -> None:
        record = record or self.record
        record.seq += 1
        event = pb.CallEvent(
            call_id=record.id,
            kind=kind,
            seq=record.seq,
            time_unix_ms=self.now_ms,
            edge=self.edge,
            ingress_trunk=record.trunk,
            trace_id=self.trace_id,
            **fields,
        )
        self.do(Publish(event))

    def _leg_fields(self, attempt: Attempt | None = None) -> dict[str, Any]:
        attempt = attempt or self.attempt
        if attempt is None:
            return {}
        target = attempt.target
        return {
            "leg_id": attempt.id,
            "trunk": target.trunk,
            "sip_call_id": attempt.sip_call_id,
            "called": target.called,
            "calling": target.calling,
            "attempt": attempt.number,
            "leg_edge": attempt.edge,
        }

    def _command(self, leg: Attempt, **command: Any) -> None:
        message = pb.LegCommand(leg_id=leg.id, call_id=self.id, **command)
        self.do(CommandLeg(leg.target.edge, message))

    def _respond_caller(
        self,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        """A response to the caller's INVITE, through its Side (reliability, timers)."""
        assert self.invite is not None and self.txn is not None
        tag = self.local_tag if status > 100 else None
        response = respond(self.invite, status, reason, headers, body, to_tag=tag)
        if 100 < status < 300:
            if self.side.dialog is None:
                self.side.dialog = Dialog.as_uas(self.invite, response)
            elif status >= 200:
                self.side.dialog.state = DialogState.CONFIRMED
        if status < 200:
            self.side.provisional(self.txn, response)
        else:
            self.side.final(self.txn, response)
            if status < 300:
                self.side.confirmed()

    # ---- SDP across the call: bypassed, or anchored through rtpengine ---------------------

    def _cross(
        self,
        sender: str,
        receiver: str,
        body: pb.SipBody,
        *,
        offer: bool,
        then: Then,
        refused: Refused,
    ) -> None:
        """Every session description that crosses the call comes through here, from one
        party to the other (CALLER or a leg id). Bypassed, `then` sends it on at once;
        anchored, rtpengine rewrites it first (an offer, or the answer to the receiver's
        offer) and `then` sends its rewrite, or `refused` says why there is none."""
        anchor = self.anchor
        if anchor.busy:  # another rewrite is out: this one waits its turn
            anchor.held.append(
                functools.partial(
                    self._cross, sender, receiver, body, offer=offer, then=then, refused=refused
                )
            )
            return
        if not is_sdp(body) or not self._anchored(sender, receiver):
            then(body)
            return
        anchor.directions[sender] = direction(body.body)
        towards = self._side(receiver).towards
        if offer:
            to_tag = receiver if receiver in anchor.known else ""
            request: Action = MediaOffer(anchor.session, body.body, sender, to_tag, towards)
        else:
            request = MediaAnswer(anchor.session, body.body, receiver, sender, towards)
        anchor.pending = Crossing(sender, receiver, body.content_type, then, refused)
        self.do(request)

    def _anchored(self, sender: str, receiver: str) -> bool:
        """The one place that decides whether an SDP goes through rtpengine: when either
        party talks to rtpengine already, or either party's trunk anchors its media (and no
        earlier offer found rtpengine unreachable and let the call bypass it)."""
        anchor = self.anchor
        if sender in anchor.parties or receiver in anchor.parties:
            return True
        return not anchor.fallback and (self._side(sender).anchors or self._side(receiver).anchors)

    def _side(self, party: str) -> TrunkMedia:
        """The media settings of a party's trunk."""
        if party == CALLER:
            p = self.profile
            return TrunkMedia(p.media, p.srtp, p.ice, p.media_timeout_s, p.media_fallback)
        leg = self.attempts.get(party)
        return TrunkMedia.of(leg.target) if leg is not None else TrunkMedia()

    def _may_bypass(self, *parties: str) -> bool:
        """rtpengine is unreachable: bypass it only if every trunk that anchors allows it."""
        sides = [self._side(p) for p in parties]
        return all(side.fallback == "bypass" for side in sides if side.anchors)

    def _rewritten(self, event: MediaRewritten) -> None:
        anchor, crossing = self.anchor, self.anchor.pending
        if crossing is None:
            return
        anchor.pending = None
        anchor.opened, anchor.rtpengine = True, event.rtpengine
        anchor.known.add(crossing.sender)
        anchor.parties.add(crossing.receiver)
        anchor.heard(self.now)
        crossing.then(pb.SipBody(content_type=crossing.content_type or SDP, body=event.sdp))
        self._replay()

    def _refused(self, event: MediaRefused) -> None:
        crossing, self.anchor.pending = self.anchor.pending, None
        if crossing is not None:
            crossing.refused(event)
        self._replay()

    def _replay(self) -> None:
        """What waited behind a rewrite, in order, until the next rewrite goes out."""
        anchor = self.anchor
        while anchor.held and not anchor.busy:
            item = anchor.held.pop(0)
            if callable(item):
                item()  # a crossing that waited its turn
                continue
            handler = self.TRANSITIONS.get((self.state, type(item)))
            if handler is not None:
                handler(self, item)
            elif isinstance(item, InDialogRequest):  # what the edge does with a ProtocolError
                self.do(Respond(item.txn, respond(item.request, ProtocolError.status)))

    def _media_refusal(self, event: MediaRefused) -> tuple[int, str, str]:
        """The SIP status, reason and CDR end reason for a rewrite rtpengine did not do."""
        if event.unreachable:
            return 503, f"media relay unavailable ({event.reason})", "media_unavailable"
        return 488, f"rtpengine refused the SDP: {event.reason}", "media_rejected"

    def _refusal_headers(self, status: int, reason: str) -> list[tuple[str, str]]:
        text = reason.replace('"', "'")
        headers = [("Reason", f'SIP;cause={status};text="{text}"')]
        headers.append(("Warning", f'399 {self.local.host} "{text}"'))
        if status == 503:
            headers.append(("Retry-After", str(RETRY_AFTER_S)))
        return headers

    def _media_failed(self, event: MediaRefused) -> None:
        """An answer rtpengine did not take in an answered call: the call cannot go on."""
        status, reason, end = self._media_refusal(event)
        self._bye_both("media failed", "system", status, reason, end)

    def _refuse_request(self, txn: Txn, event: MediaRefused) -> None:
        """A request of the caller's whose offer rtpengine did not take: answered here."""
        status, reason, _ = self._media_refusal(event)
        headers = self._refusal_headers(status, reason)
        self.side.respond(txn, respond(txn.request, status, headers=headers))

    def _refuse_leg_request(self, leg: Attempt, request_id: str, event: MediaRefused) -> None:
        status, reason, _ = self._media_refusal(event)
        headers = [pb.Header(name=n, value=v) for n, v in self._refusal_headers(status, reason)]
        refusal = pb.LegResponse(
            request_id=request_id, status=status, reason=reason, headers=headers
        )
        self._command(leg, response=refusal)

    def _caller_offered(self) -> bool:
        """The caller's INVITE carried the offer (else the callee's answer offers)."""
        return self.invite is not None and is_sdp(sip_body(self.invite))

    # ---- the anchored call's figures and its media timeout ---------------------------------

    def _pair(self) -> tuple[str, str] | None:
        """The two parties talking now."""
        attempt = self.attempt
        if attempt is None or not attempt.live:
            return None
        return (self.bridged.id if self.bridged is not None else CALLER), attempt.id

    def _start_media_checks(self) -> None:
        pair = self._pair()
        if pair is None or not self.anchor.parties & set(pair):
            return
        for party in pair:
            self.anchor.silence[party] = Silence(0, self.now)
        timeouts = [self._side(p).timeout_s for p in pair]
        self.do(StartTimer("media", Anchor.check_every(timeouts)))

    def _media_check(self) -> None:
        pair = self._pair()
        if pair is None:
            return
        timeouts = [self._side(p).timeout_s for p in pair]
        self.do(MediaQuery(self.anchor.session), StartTimer("media", Anchor.check_every(timeouts)))

    def _media_reported(self, event: MediaReported) -> None:
        """A query's figures: a party silent for its trunk's media_timeout_s ends the call."""
        anchor = self.anchor
        anchor.lost = anchor.lost or event.lost
        anchor.report(event.quality, self.now)
        pair = self._pair()
        if pair is None:
            return
        silent = anchor.silent(pair, {p: self._side(p) for p in pair}, self.now)
        if silent is None:
            return
        trunk = self.trunk if silent == CALLER else self.attempts[silent].target.trunk
        timeout = self._side(silent).timeout_s
        reason = f"no RTP from {trunk} for {timeout:g} s"
        self._bye_both("media timeout", "system", 200, reason, "media_timeout")

    # ---- routing and attempts ------------------------------------------------------------

    def _invite(self, event: InviteReceived) -> None:
        if self.invite is not None:
            raise ProtocolError(self.KIND, self.state, event)
        invite = self.invite = event.request
        self.txn = event.txn
        self.started_ms = self.now_ms
        self.called = number_of(invite.uri) or number_of(str(invite.to.uri))
        from_ = invite.from_
        self.calling = number_of(str(from_.uri))
        privacy = privacy_of(invite)
        self.privacy = ", ".join(sorted(privacy))
        # RFC 3325: a P-Asserted-Identity is believed only from a trunk in the trust domain
        self.identity = invite.headers.values("p-asserted-identity") if self.profile.trusted else []
        if self.identity and (not self.calling or self.calling.lower() == "anonymous"):
            self.calling = _number_in(self.identity[0]) or self.calling
        self.display = "" if privacy & HIDE_IDENTITY else from_.display or ""
        refusal = self.side.negotiate(invite)
        self._respond_caller(100)
        self._publish(
            Kind.STARTED, sip_call_id=invite.call_id, called=self.called, calling=self.calling
        )
        if refusal is not None:  # 422: its session interval is too short for us
            self.do(Respond(event.txn, refusal))
            self._end("system", 422, "session interval too small", "rejected")
            return
        self._ask(self.called)

    def _ask(self, called: str) -> None:
        ask = pb.RouteRequest(
            call_id=self.id, ingress_trunk=self.trunk, called=called, calling=self.calling
        )
        self.do(AskRoute(ask))

    def _routed(self, event: RouteDecided) -> None:
        decision = event.decision
        if decision.result != pb.RouteDecision.ROUTED:
            refused = 403 if decision.result == pb.RouteDecision.NO_ROUTE else 503
            reason = decision.reason or "no route"
            self._reject(decision.status or refused, None, reason, "no_route", diagnostic=True)
            return
        self.targets = list(decision.targets)
        self._publish(
            Kind.ROUTED,
            usage=decision.usage,
            route=decision.route,
            normalized_called=decision.normalized_called,
            called=self.called,
            calling=self.calling,
        )
        self.state = CallState.TRYING
        self._next_attempt()

    def _route_failed(self, event: RouteFailed) -> None:
        self._reject(
            503, "Router Unavailable", "no route decision", "router_unavailable", retry_after=True
        )

    def _at_limit(self, event: AtLimit) -> None:
        self._reject(503, None, event.reason, "trunk_limit", retry_after=True)

    def _next_attempt(self) -> None:
        """Create the leg of the next target, or give the caller the final answer."""
        if len(self.attempts) >= len(self.targets):
            self._all_failed()
            return
        assert self.invite is not None
        target = self.targets[len(self.attempts)]
        attempt = Attempt(new_id(), target, len(self.attempts) + 1, new_id())
        self.attempts[attempt.id] = self.attempt = attempt
        self._publish(Kind.LEG_ATTEMPT, **self._leg_fields())
        invite = self.invite
        headers = [pb.Header(name="P-Asserted-Identity", value=v) for v in self.identity]
        headers += [
            pb.Header(name=name, value=value)
            for name in FORWARDED
            for value in invite.headers.get_all(name)
        ]
        max_forwards = invite.max_forwards
        create = pb.LegCreate(
            target=target,
            calling_display="" if target.suppress_caller_id else self.display,
            headers=headers,
            body=sip_body(invite),
            max_forwards=(70 if max_forwards is None else max_forwards) - 1,
            attempt=attempt.number,
            sip_call_id=attempt.sip_call_id,
            owner_edge=self.edge,
            privacy=self.privacy,
        )
        command = pb.LegCommand(leg_id=attempt.id, call_id=self.id, create=create)

        def create_leg(body: pb.SipBody) -> None:
            command.create.body.CopyFrom(body)
            command.create.anchored = attempt.id in self.anchor.parties
            self.do(StartTimer("failover", target.failover_timer_s or DEFAULT_FAILOVER_TIMER_S))
            self.do(CreateLeg(target.edge, command))

        def refused(event: MediaRefused) -> None:
            if event.unreachable and self._may_bypass(CALLER, attempt.id):
                self.anchor.fallback = True  # the call goes on, its media bypassed
                create_leg(create.body)
                return
            status, reason, end = self._media_refusal(event)
            self._reject(status, None, reason, end, retry_after=status == 503, diagnostic=True)

        self._cross(CALLER, attempt.id, create.body, offer=True, then=create_leg, refused=refused)

    def _drop_leg(self) -> None:
        """The current attempt's events are no longer wanted (nor its failover timer)."""
        self.do(StopTimer("failover"), StopTimer("ring"))
        attempt = self.attempt
        if attempt is not None and attempt.live:
            attempt.live = False
            self.do(DropLeg(attempt.id))

    def _failed(
        self, status: int, reason: str, failure: str, timed_out: bool, received: int = 0
    ) -> None:
        """The current attempt is over: record it; the caller does not hear of it (yet)."""
        self.failures.append((status, reason, timed_out))
        self._publish(
            Kind.LEG_FAILED,
            status=status,
            reason=f"{failure}: {reason}",
            failure=failure,
            received_status=_changed(status, received),
            **self._leg_fields(),
        )
        if len(self.attempts) < len(self.targets):  # a failover only if a target is left
            self.do(Failover(failure))
        self._drop_leg()

    def _all_failed(self) -> None:
        """Every target failed: the last real failure, or 503 when every attempt timed out."""
        answered = [(s, r) for s, r, timed_out in self.failures if not timed_out and s >= 300]
        if answered:
            status, reason = answered[-1]
            self._reject(status, None, reason, "rejected")
        else:
            reason = "every target failed or timed out"
            self._reject(503, None, reason, "rejected", retry_after=True)

    def _is_current(self, leg_id: str) -> bool:
        return self.attempt is not None and self.attempt.id == leg_id and self.attempt.live

    def _create_answered(self, event: LegCreateAnswered) -> None:
        if event.error and self._is_current(event.leg_id) and self.state is CallState.TRYING:
            self._failed(503, event.error, event.failure or "transport_error", timed_out=False)
            self._next_attempt()

    def _leg_retrying(self, event: LegRetrying) -> None:
        if self._is_current(event.leg_id) and self.state is CallState.TRYING:
            self.do(StartTimer("failover", event.wait_s))
        elif self._is_transfer_leg(event.leg_id) is not None:
            self.do(StartTimer("transfer", event.wait_s))

    def _created_after_end(self, event: LegCreateAnswered) -> None:
        leg = self.attempts.get(event.leg_id)
        if not event.error and leg is not None:  # cancelled while it was being created
            self._command(leg, cancel=pb.LegCancel(reason="call over"))

    # ---- redirects (a 3xx) ---------------------------------------------------------------

    def _redirected(self, event: LegFailed) -> bool:
        """A 3xx on a trunk whose redirects are followed: route each Contact, try them next."""
        attempt = self.attempt
        if attempt is None or attempt.target.redirect != "follow" or not event.contacts:
            return False
        numbers = [n for n in (_number_in(c) for c in event.contacts) if n]
        left = MAX_REDIRECTS - self.redirects
        if not numbers or left <= 0:
            return False
        self._failed(event.status, event.reason, "redirect", timed_out=True)
        self.contacts = numbers[:left]
        self.redirects += len(self.contacts)
        self._follow()
        return True

    def _follow(self) -> None:
        """Route the next Contact of a redirect, or carry on with the targets left."""
        self.asked = bool(self.contacts)
        if self.contacts:
            self._ask(self.contacts.pop(0))
        else:
            self._next_attempt()

    def _redirect_routed(self, event: RouteDecided) -> None:
        if not self.asked:
            raise ProtocolError(self.KIND, self.state, event)  # no redirect asked for one
        self.asked = False
        if event.decision.result == pb.RouteDecision.ROUTED:
            at = len(self.attempts)
            self.targets[at:at] = list(event.decision.targets)
            self.contacts.clear()
            self._next_attempt()
        else:
            self._follow()

    def _redirect_unrouted(self, event: RouteFailed) -> None:
        if not self.asked:
            raise ProtocolError(self.KIND, self.state, event)
        self._follow()

    # ---- the leg's events ----------------------------------------------------------------

    def _progress(self, event: LegProgress) -> None:
        if not self._is_current(event.leg_id) or self.attempt is None:
            return
        self.do(StopTimer("failover"))  # the caller is ringing: no failover any more
        if self.state is CallState.TRYING and self.attempt.target.max_ring_s:
            self.do(StartTimer("ring", self.attempt.target.max_ring_s))
        self.state = CallState.RINGING
        self.attempt.sdp = event.body.body or self.attempt.sdp

        def relay(body: pb.SipBody) -> None:
            self._relay_answer(event.status, event.reason, body)
            fields = self._leg_fields()
            self._publish(Kind.LEG_PROGRESS, status=event.status, reason=event.reason, **fields)

        offer = not self._caller_offered()  # an INVITE without SDP: the callee offers
        self._cross(
            event.leg_id, CALLER, event.body, offer=offer, then=relay, refused=self._answer_refused
        )

    def _answered(self, event: LegAnswered) -> None:
        if not self._is_current(event.leg_id) or self.attempt is None:
            self._stale_answer(event)
            return
        self.do(StopTimer("failover"), StopTimer("ring"))
        offer = not self._caller_offered()
        self._cross(
            event.leg_id,
            CALLER,
            event.body,
            offer=offer,
            then=lambda body: self._answer_caller(event, body),
            refused=self._answer_refused,
        )

    def _answer_caller(self, event: LegAnswered, body: pb.SipBody) -> None:
        """The callee's 2xx (its SDP as rtpengine rewrote it, if anchored) to the caller."""
        assert self.attempt is not None
        self.state = CallState.ANSWERED
        self.answered_ms = self.now_ms
        self._connected(self.attempt, event)
        limits = [s for s in (self.profile.max_call_s, self.attempt.target.max_call_s) if s]
        if limits:
            self.do(StartTimer("call_limit", min(limits)))
        self._relay_answer(event.status, event.reason, body)
        fields = {**self._leg_fields(), "media": self.anchor.mode(self._parties())}
        self._publish(Kind.LEG_ANSWERED, status=event.status, reason=event.reason, **fields)
        self._publish(Kind.ANSWERED, status=event.status, reason=event.reason, **fields)
        self._start_media_checks()

    def _answer_refused(self, event: MediaRefused) -> None:
        """rtpengine did not take the callee's early or final answer: the attempt is over."""
        self._cancel_leg("media refused")
        status, reason, end = self._media_refusal(event)
        self._reject(status, None, reason, end, retry_after=status == 503, diagnostic=True)

    def _stale_answer(self, event: LegAnswered) -> None:
        """An answer from a leg this call no longer wants: hang it up."""
        leg = self.attempts.get(event.leg_id)
        if leg is not None and leg is not self.attempt:
            self._command(leg, bye=pb.LegBye(reason="call over"))

    def _leg_failed(self, event: LegFailed) -> None:
        if not self._is_current(event.leg_id) or self.attempt is None:
            return
        if 300 <= event.status < 400 and self._redirected(event):
            return
        if self.state is CallState.TRYING:
            codes = self.attempt.target.failover_response_codes or DEFAULT_FAILOVER_CODES
            if event.failure != "response" or event.status in codes:
                timed_out = event.failure in ("timeout", "failover_timer")
                self._failed(event.status, event.reason, event.failure, timed_out, event.received)
                self._next_attempt()
                return
        # a final the caller must hear: after 18x, or a code that is no failover code
        self._publish(
            Kind.LEG_FAILED,
            status=event.status,
            reason=event.reason,
            failure=event.failure,
            received_status=_changed(event.status, event.received),
            **self._leg_fields(),
        )
        self._drop_leg()
        contacts = [("Contact", c) for c in event.contacts]  # a relayed 3xx keeps them
        self._reject(event.status, event.reason, event.reason, "rejected", headers=contacts)

    def _leg_ended_early(self, event: LegEnded) -> None:
        if self._is_current(event.leg_id):
            self._reject(480, None, event.reason or "callee ended", "rejected")

    def _leg_ended(self, event: LegEnded) -> None:
        transfer = self.transfer
        if transfer is not None and transfer.leg is not None and transfer.leg.id == event.leg_id:
            self._transfer_failed(480, event.reason or "the transfer target hung up")
            return
        other = self._other(event.leg_id)
        if other is None:
            return
        self._bye_party(other, "the other party hung up")
        reason = event.reason or "callee hung up"
        self._end("callee", 200, reason, event.why or "normal")

    def _relay_answer(self, status: int, reason: str, body: pb.SipBody) -> None:
        headers = [("Contact", self.local.contact)]
        if status >= 200:
            headers.append(("Allow", ALLOW))
        self._respond_caller(status, reason or None, headers + body_headers(body), body.body)

    def _leg_requested(self, event: LegRequested) -> None:
        """A request the callee sent in its dialog: the same request in the other party's."""
        request, dialog = event.request, self.dialog
        other = self._other(event.leg_id)
        leg = self.attempts.get(event.leg_id)
        if other is None or leg is None or (dialog is None and other == CALLER):
            return
        receiver = other.id if isinstance(other, Attempt) else CALLER
        if request.method == "ACK":  # its answer to the offer in the 2xx of its re-INVITE
            then = lambda body: self._ack_party(other, body)  # noqa: E731
            failed = self._media_failed
            self._cross(leg.id, receiver, request.body, offer=False, then=then, refused=failed)
            return
        self.anchor.offers[request.request_id] = is_sdp(request.body)

        def send(body: pb.SipBody) -> None:
            if isinstance(other, Attempt):  # two legs bridged: it crosses as it came
                relayed = pb.LegRequest()
                relayed.CopyFrom(request)
                relayed.body.CopyFrom(body)
                self._command(other, request=relayed)
                return
            assert dialog is not None
            headers = Relay.inbound_headers(request)
            out = dialog.create_request(request.method, headers, body.body)
            self.relay.sent[request.request_id] = False
            self.side.send(out, request.request_id)

        def refused(media: MediaRefused) -> None:
            self._refuse_leg_request(leg, request.request_id, media)

        self._cross(leg.id, receiver, request.body, offer=True, then=send, refused=refused)

    def _ack_party(self, party: Attempt | str, body: pb.SipBody) -> None:
        """The ACK of a re-INVITE's 2xx, with its body, in a party's dialog."""
        if isinstance(party, Attempt):
            self._command(party, ack=pb.LegAck(body=body))
        elif self.dialog is not None:
            self.side.ack(self.dialog.create_ack(body_headers(body), body.body))

    def _caller_answered(self, event: InDialogResponse) -> None:
        """The caller's answer to a request we sent: our refresh's, or the callee's request's
        (back to the leg)."""
        response = event.response
        if self.side.challenged(event.request_id, response):
            return
        if event.request_id == REFRESH:
            gone = self.side.refreshed(response)
            if gone is not None:
                self._session_over(gone)
            return
        if event.request_id == JOIN:
            self.side.answered(JOIN, response)
            if response is None or response.status >= 200:
                status = response.status if response is not None else 408
                if 200 <= status < 300 and self.dialog is not None:
                    self.side.ack(self.dialog.create_ack())
                self._joined(status)
            return
        answer = self.side.crossing(self.relay, event.request_id, response)
        if answer is None or self.attempt is None:
            return
        leg = self.attempt
        offered = self.anchor.offers.pop(event.request_id, False)

        def send(body: pb.SipBody) -> None:
            answer.body.CopyFrom(body)
            self._command(leg, response=answer)

        if not 200 <= answer.status < 300:
            send(answer.body)
            return
        self._cross(
            CALLER, leg.id, answer.body, offer=not offered, then=send, refused=self._media_failed
        )

    def _leg_responded(self, event: LegResponded) -> None:
        response = event.response
        if response.request_id == JOIN:
            self._joined(response.status)
            return
        other = self._other(event.leg_id)
        if response.request_id in self.relay.waiting:
            receiver = CALLER  # the answer to the caller's request
        elif isinstance(other, Attempt):
            receiver = other.id  # two legs bridged: the answer goes back as it came
        else:
            return
        offered = self.anchor.offers.get(response.request_id, False)
        if response.status >= 200:
            self.anchor.offers.pop(response.request_id, None)

        def deliver(body: pb.SipBody) -> None:
            answer = pb.LegResponse()
            answer.CopyFrom(response)
            answer.body.CopyFrom(body)
            if receiver != CALLER:
                self._command(self.attempts[receiver], response=answer)
                return
            to_caller = self.relay.answer(answer, self.local.contact)
            if to_caller is not None:
                self.side.respond(*to_caller)

        if not 200 <= response.status < 300:
            deliver(response.body)
            return
        self._cross(
            event.leg_id,
            receiver,
            response.body,
            offer=not offered,
            then=deliver,
            refused=self._media_failed,
        )

    # ---- the parties of an answered call -------------------------------------------------

    def _connected(self, attempt: Attempt, event: LegAnswered) -> None:
        attempt.sdp = event.body.body or attempt.sdp
        attempt.local_tag, attempt.remote_tag = event.local_tag, event.remote_tag

    def _other(self, leg_id: str) -> Attempt | str | None:
        """The party across from a connected leg: the caller (CALLER), the other leg of a
        bridge, or None when the leg is not one of the call's two parties."""
        attempt, bridged = self.attempt, self.bridged
        if attempt is None or not attempt.live:
            return None
        if leg_id == attempt.id:
            return bridged if bridged is not None else CALLER
        if bridged is not None and leg_id == bridged.id:
            return attempt
        return None

    def _bye_party(self, party: Attempt | str, reason: str) -> None:
        if isinstance(party, Attempt):
            self._command(party, bye=pb.LegBye(reason=reason))
        else:
            self._bye_caller()

    # ---- the caller ----------------------------------------------------------------------

    def _cancelled(self, event: CallerCancelled) -> None:
        self._cancel_leg("caller cancelled")
        self._respond_caller(487)
        self._end("caller", 487, "caller cancelled", "cancelled")

    def _cancel_leg(self, reason: str) -> None:
        if self.attempt is not None and self.attempt.live:
            self._command(self.attempt, cancel=pb.LegCancel(reason=reason))
        self._drop_leg()

    def _early_request(self, event: InDialogRequest) -> None:
        request = event.request
        if not self._checked(event) or self.side.receive(request, event.txn):
            return
        method = request.method
        if method == "BYE":  # BYE before our 2xx: the caller gave up early
            self.side.respond(event.txn, respond(request, 200))
            self._cancelled(CallerCancelled())
        elif method == "UPDATE" and self.state is CallState.RINGING and self.attempt is not None:
            self._relay_request(event.txn, self.attempt)  # RFC 3311
        else:
            status = 491 if method in ("INVITE", "UPDATE") else 481
            self.side.respond(event.txn, respond(request, status))

    def _request(self, event: InDialogRequest) -> None:
        request = event.request
        if self.bridged is not None:  # the caller was transferred away: its dialog is over
            status = 200 if request.method == "BYE" else 481
            self.do(Respond(event.txn, respond(request, status)))
            return
        if not self._checked(event) or self.side.receive(request, event.txn):
            return
        if self.attempt is None:
            return
        if request.method == "REFER" and self.profile.refer != "relay":
            self._refer_from_caller(event)
            return
        if request.method == "BYE":
            self.side.respond(event.txn, respond(request, 200))
            self._command(self.attempt, bye=pb.LegBye(reason="caller hung up"))
            self._end("caller", 200, "caller hung up", "normal")
            return
        if request.method == "INVITE":  # the far end may be slow: say so at once
            self.do(Respond(event.txn, respond(request, 100)))
        self._relay_request(event.txn, self.attempt)

    def _relay_request(self, txn: Txn, leg: Attempt) -> None:
        """The caller's request in the leg's dialog, its offer (if any) through `_cross`."""
        outbound = self.relay.outbound(txn)
        self.anchor.offers[outbound.request_id] = is_sdp(outbound.body)

        def send(body: pb.SipBody) -> None:
            outbound.body.CopyFrom(body)
            self._command(leg, request=outbound)

        def refused(event: MediaRefused) -> None:
            self.relay.waiting.pop(outbound.request_id, None)
            self.anchor.offers.pop(outbound.request_id, None)
            self._refuse_request(txn, event)

        self._cross(CALLER, leg.id, outbound.body, offer=True, then=send, refused=refused)

    def _checked(self, event: InDialogRequest) -> bool:
        """The dialog's CSeq check (RFC 3261 12.2.2); False when it answered the request."""
        error = self.dialog.on_request(event.request) if self.dialog is not None else None
        if error is not None:
            self.do(Respond(event.txn, respond(event.request, error)))
        return error is None

    def _ack(self, event: AckReceived) -> None:
        """The caller's ACK to the leg; a body in it is its answer to an offer in our 2xx."""
        leg = self.attempt
        if leg is None:
            return
        then = lambda body: self._command(leg, ack=pb.LegAck(body=body))  # noqa: E731
        body = sip_body(event.request)
        self._cross(CALLER, leg.id, body, offer=False, then=then, refused=self._media_failed)

    def _ack_timed_out(self, event: AckTimedOut) -> None:
        """The caller never ACKed our 2xx: the call is over on both sides."""
        self._bye_both("no ACK", "system", 408, "no ACK from the caller", "no_ack")

    def _bye_caller(self) -> None:
        if self.dialog is not None:
            self.side.send(self.dialog.create_request("BYE", [("User-Agent", USER_AGENT)]))

    def _bye_both(self, why: str, ended_by: str, status: int, reason: str, end: str) -> None:
        if self.attempt is not None:
            self._command(self.attempt, bye=pb.LegBye(reason=why))
        self._bye_party(self.bridged or CALLER, why)
        if self.transfer is not None:
            self._transfer_failed(487, why)
        self._end(ended_by, status, reason, end)

    def _session_over(self, reason: str) -> None:
        self._bye_both("session expired", "system", 200, reason, "session_expired")

    # ---- timers --------------------------------------------------------------------------

    def _timer(self, event: TimerFired) -> None:
        handler = TIMERS.get((self.state, event.name))
        if handler is None:
            raise ProtocolError(self.KIND, self.state, event)
        handler(self)

    def _failover_timer(self) -> None:
        assert self.attempt is not None
        self._command(self.attempt, cancel=pb.LegCancel(reason="failover timer"))
        self._failed(408, "no provisional response in time", "failover_timer", timed_out=True)
        self._next_attempt()

    def _ring_timer(self) -> None:
        """Rang past max_ring_s: 480, and no failover (it already rang)."""
        self._cancel_leg("ring limit")
        self._reject(480, None, "no answer within max_ring_s", "no_answer")

    def _prack_timer(self) -> None:
        if self.side.prack_timer():
            return
        # RFC 3262 3: a reliable provisional never PRACKed: the request fails with 5xx
        if self.state is CallState.ANSWERED and self.attempt is not None:
            self._command(self.attempt, bye=pb.LegBye(reason="no PRACK"))
        else:
            self._cancel_leg("no PRACK")
        self._reject(500, None, "no PRACK for a reliable provisional response", "no_prack")

    def _call_limit(self) -> None:
        self._bye_both("call limit", "system", 200, "max_call_s reached", "max_call")

    def _expiry(self) -> None:
        self._session_over("no session refresh in time")

    def _refresh(self) -> None:
        self.side.refresh()

    # ---- transfers (REFER, RFC 3515; Replaces, RFC 3891) --------------------------------

    def _refer_from_caller(self, event: InDialogRequest) -> None:
        request = event.request
        if self.profile.refer == "reject":
            self.do(Respond(event.txn, respond(request, 403, "Transfer Not Allowed")))
            return
        wanted = referral(request.headers.get("refer-to") or "")
        if wanted is None:
            self.do(Respond(event.txn, respond(request, 400, "Bad Refer-To")))
            return
        self.do(Respond(event.txn, respond(request, 202)))
        assert self.attempt is not None
        event_id = str(request.cseq.number)
        self._transfer(CALLER, self.attempt.id, wanted, event_id, self.profile.trunk)

    def _refer_from_leg(self, event: LegTransferRequested) -> None:
        """The leg answered its far end's REFER 202 already; it is for the call to do."""
        other = self._other(event.leg_id)
        leg = self.attempts.get(event.leg_id)
        wanted = referral(event.refer_to)
        if other is None or leg is None or wanted is None:
            return
        transferee = other.id if isinstance(other, Attempt) else CALLER
        self._transfer(leg.id, transferee, wanted, event.event_id, leg.target.trunk, event.found)

    def _transfer(
        self,
        referrer: str,
        transferee: str,
        wanted: Referral,
        event_id: str,
        trunk: str,
        found: DialogFound | None = None,
    ) -> None:
        """Start a transfer; a Replaces is looked up here, unless the referrer's edge did
        (`found`: the dialogs a leg's far end names are on the leg's edge)."""
        if self.transfer is not None:  # one at a time
            self._notify(referrer, event_id, 491, final=True)
            return
        record = Record(new_id(), trunk)
        self.transfer = Transfer(referrer, transferee, event_id, record, wanted)
        self.do(CallIds((self.record.id, record.id)))
        self._notify(referrer, event_id, 100)
        self._publish(
            Kind.STARTED,
            record,
            called=wanted.number,
            calling=self._number_of(transferee),
            transferred_from=self.record.id,
        )
        if wanted.replaces is not None:
            if found is not None:
                self._dialog_found(found)
            else:
                self.do(FindDialog(*wanted.replaces))
            return
        ask = pb.RouteRequest(
            call_id=record.id,
            ingress_trunk=trunk,
            called=wanted.number,
            calling=self._number_of(transferee),
        )
        self.do(AskRoute(ask))

    def _number_of(self, party: str) -> str:
        leg = self.attempts.get(party)
        return leg.target.called if leg is not None else self.calling

    def _transfer_routed(self, event: RouteDecided) -> None:
        transfer, decision = self.transfer, event.decision
        if transfer is None or transfer.targets or transfer.referral.replaces is not None:
            return
        if decision.result != pb.RouteDecision.ROUTED:
            refused = 403 if decision.result == pb.RouteDecision.NO_ROUTE else 503
            self._transfer_failed(decision.status or refused, decision.reason or "no route")
            return
        self._publish(
            Kind.ROUTED,
            transfer.record,
            usage=decision.usage,
            route=decision.route,
            normalized_called=decision.normalized_called,
        )
        transfer.targets = list(decision.targets)
        self._transfer_next()

    def _transfer_unrouted(self, event: RouteFailed) -> None:
        self._transfer_failed(503, "no route decision")

    def _dialog_found(self, event: DialogFound) -> None:
        """The dialog a Replaces names, found: the new leg replaces its far end's."""
        transfer = self.transfer
        if transfer is None or transfer.targets:
            return
        if event.target is None:
            self._transfer_failed(481, "the dialog to replace is not here")
            return
        transfer.targets, transfer.replaces = [event.target], event.replaces
        self._transfer_next()

    def _transfer_next(self) -> None:
        transfer = self.transfer
        assert transfer is not None
        if transfer.leg is not None:
            transfer.leg.live = False
            self.do(DropLeg(transfer.leg.id), StopTimer("transfer"))
        tried = sum(1 for a in self.attempts.values() if a.target in transfer.targets)
        if tried >= len(transfer.targets):
            self._transfer_failed(*transfer.last)
            return
        target = transfer.targets[tried]
        leg = Attempt(new_id(), target, tried + 1, new_id())
        self.attempts[leg.id] = transfer.leg = leg
        self._publish(Kind.LEG_ATTEMPT, transfer.record, **self._leg_fields(leg))
        self.do(StartTimer("transfer", target.failover_timer_s or DEFAULT_FAILOVER_TIMER_S))
        moving = self.attempts.get(transfer.transferee)
        offer = moving.sdp if moving is not None else self.side.sdp_received
        headers = [pb.Header(name="Replaces", value=transfer.replaces)] if transfer.replaces else []
        create = pb.LegCreate(
            target=target,
            headers=headers,
            body=pb.SipBody(content_type="application/sdp", body=offer) if offer else None,
            max_forwards=70,
            attempt=leg.number,
            sip_call_id=leg.sip_call_id,
            owner_edge=self.edge,
            privacy=self.privacy,
        )
        command = pb.LegCommand(leg_id=leg.id, call_id=transfer.record.id, create=create)

        def create_leg(body: pb.SipBody) -> None:
            if self.transfer is transfer and transfer.leg is leg:
                command.create.body.CopyFrom(body)
                command.create.anchored = leg.id in self.anchor.parties
                self.do(CreateLeg(target.edge, command))

        def refused(event: MediaRefused) -> None:
            if self.transfer is transfer and transfer.leg is leg:
                status, reason, _ = self._media_refusal(event)
                self._transfer_failed(status, reason)

        self._cross(
            transfer.transferee, leg.id, create.body, offer=True, then=create_leg, refused=refused
        )

    def _is_transfer_leg(self, leg_id: str) -> Transfer | None:
        transfer = self.transfer
        leg = transfer.leg if transfer is not None else None
        return transfer if leg is not None and leg.id == leg_id and leg.live else None

    def _transfer_progress(self, event: LegProgress) -> None:
        transfer = self._is_transfer_leg(event.leg_id)
        if transfer is None:
            return
        self.do(StopTimer("transfer"))
        if not transfer.rang:
            transfer.rang = True
            self._notify(transfer.referrer, transfer.event_id, event.status, reason=event.reason)
        fields = self._leg_fields(transfer.leg)
        self._publish(Kind.LEG_PROGRESS, transfer.record, status=event.status, **fields)

    def _transfer_leg_failed(self, event: LegFailed) -> None:
        transfer = self._is_transfer_leg(event.leg_id)
        if transfer is None or transfer.leg is None:
            return
        self._publish(
            Kind.LEG_FAILED,
            transfer.record,
            status=event.status,
            reason=event.reason,
            failure=event.failure,
            **self._leg_fields(transfer.leg),
        )
        transfer.last = (event.status, event.reason)
        codes = transfer.leg.target.failover_response_codes or DEFAULT_FAILOVER_CODES
        if not transfer.rang and (event.failure != "response" or event.status in codes):
            self._transfer_next()
        else:
            self._transfer_failed(event.status, event.reason)

    def _transfer_created(self, event: LegCreateAnswered) -> None:
        transfer = self._is_transfer_leg(event.leg_id)
        if transfer is not None and event.error:
            transfer.last = (503, event.error)
            self._transfer_next()

    def _transfer_timer(self) -> None:
        transfer = self.transfer
        if transfer is None or transfer.leg is None:
            return
        self._command(transfer.leg, cancel=pb.LegCancel(reason="failover timer"))
        transfer.last = (408, "no provisional response in time")
        self._transfer_next()

    def _transfer_answered(self, event: LegAnswered) -> None:
        """The target answered: the transferee gets its SDP (a re-INVITE), then joins it."""
        transfer = self._is_transfer_leg(event.leg_id)
        if transfer is None or transfer.leg is None:
            self._stale_answer(event)
            return
        self.do(StopTimer("transfer"))
        self._connected(transfer.leg, event)
        moving = self.attempts.get(transfer.transferee)

        def join(offer: pb.SipBody) -> None:
            if self.transfer is not transfer:
                return
            if moving is not None:
                request = pb.LegRequest(request_id=JOIN, method="INVITE", body=offer)
                self._command(moving, request=request)
            elif self.dialog is not None:
                headers = [("User-Agent", USER_AGENT), ("Content-Type", SDP)]
                self.side.send(self.dialog.create_request("INVITE", headers, offer.body), JOIN)

        def refused(media: MediaRefused) -> None:
            if self.transfer is transfer and transfer.leg is not None:
                self._command(transfer.leg, bye=pb.LegBye(reason="transfer failed"))
                self._transfer_failed(*self._media_refusal(media)[:2])

        # the target's answer to the transferee's offer, which the transferee gets in a
        # re-INVITE of its own (its answer to that is not needed: its media did not move)
        body = pb.SipBody(content_type=SDP, body=transfer.leg.sdp)
        receiver = transfer.transferee
        self._cross(transfer.leg.id, receiver, body, offer=False, then=join, refused=refused)

    def _joined(self, status: int) -> None:
        """The transferee's answer to the re-INVITE that points it at the target."""
        transfer = self.transfer
        if transfer is None or transfer.leg is None:
            return
        if not 200 <= status < 300:
            self._command(transfer.leg, bye=pb.LegBye(reason="transfer failed"))
            self._transfer_failed(status, "the transferee refused the new media")
            return
        moving = self.attempts.get(transfer.transferee)
        if moving is not None:
            self._command(moving, ack=pb.LegAck())
        self._command(transfer.leg, ack=pb.LegAck())
        self._notify(transfer.referrer, transfer.event_id, 200, final=True)
        old, new = self.record, transfer.record
        referrer = self.attempts.get(transfer.referrer)
        if referrer is not None:  # the callee transferred the caller: its leg ends
            self._command(referrer, bye=pb.LegBye(reason="transferred"))
            referrer.live = False
            self.do(DropLeg(referrer.id))
            self.attempt = transfer.leg
        else:  # the caller transferred the callee: the callee's leg takes its place
            self._bye_caller()
            self.bridged, self.attempt = self.attempt, transfer.leg
        self._publish(
            Kind.ENDED,
            old,
            status=200,
            reason="transferred",
            ended_by="caller" if transfer.referrer == CALLER else "callee",
            end_reason="transferred",
            transferred_to=new.id,
            **self._leg_fields(referrer or self.bridged),
        )
        self.record, self.transfer = new, None
        fields = {**self._leg_fields(), "media": self.anchor.mode(self._parties())}
        self._publish(Kind.LEG_ANSWERED, status=200, reason="OK", **fields)
        self._publish(Kind.ANSWERED, status=200, reason="OK", **fields)
        self.do(CallIds((new.id,)))
        self._start_media_checks()  # the new pair's silence is timed from now

    def _transfer_failed(self, status: int, reason: str) -> None:
        """The transfer did not happen: the referrer hears why, the call goes on as it was."""
        transfer, self.transfer = self.transfer, None
        if transfer is None:
            return
        if transfer.leg is not None and transfer.leg.live:
            self._command(transfer.leg, cancel=pb.LegCancel(reason="transfer failed"))
            transfer.leg.live = False
            self.do(DropLeg(transfer.leg.id), StopTimer("transfer"))
        self._notify(transfer.referrer, transfer.event_id, status, final=True, reason=reason)
        self._publish(
            Kind.ENDED,
            transfer.record,
            status=status,
            reason=reason,
            ended_by="system",
            end_reason="transfer_failed",
        )
        self.do(CallIds((self.record.id,)))

    def _notify(
        self, referrer: str, event_id: str, status: int, *, final: bool = False, reason: str = ""
    ) -> None:
        """RFC 3515: the referrer hears how its REFER is doing, as a sipfrag."""
        body = sipfrag(status, reason)
        headers = notify_headers(event_id, final)
        leg = self.attempts.get(referrer)
        if leg is not None:
            request = pb.LegRequest(
                request_id=new_id(),
                method="NOTIFY",
                headers=[pb.Header(name=n, value=v) for n, v in headers],
                body=pb.SipBody(content_type=SIPFRAG, body=body),
            )
            self._command(leg, request=request)
        elif self.dialog is not None:
            headers += [("User-Agent", USER_AGENT), ("Content-Type", SIPFRAG)]
            self.side.send(self.dialog.create_request("NOTIFY", headers, body))

    # ---- control and the end -------------------------------------------------------------

    def _hangup_early(self, event: HangupRequested) -> None:
        self._cancel_leg(event.reason)
        self._respond_caller(487, None, [("Reason", f'SIP;cause=487;text="{event.reason}"')])
        self._end(event.ended_by, 487, event.reason, event.why)

    def _hangup(self, event: HangupRequested) -> None:
        self._bye_both(event.reason, event.ended_by, 200, event.reason, event.why)

    def _reject(
        self,
        status: int,
        phrase: str | None,
        reason: str,
        end: str,
        *,
        retry_after: bool = False,
        diagnostic: bool = False,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """End the call before answer with a final response to the caller."""
        headers = list(headers or ())
        if retry_after:
            headers.append(("Retry-After", str(RETRY_AFTER_S)))
        if diagnostic or status in (403, 503):
            text = reason.replace('"', "'")
            headers.append(("Reason", f'SIP;cause={status};text="{text}"'))
            headers.append(("Warning", f'399 {self.local.host} "{text}"'))
        self._respond_caller(status, phrase, headers)
        self._end("system", status, reason, end)

    def _end(self, ended_by: str, status: int, reason: str, end: str) -> None:
        """The call is over. An anchored call's record waits for rtpengine's last figures
        (its session's delete); any other ends at once."""
        self.state = CallState.ENDED
        self._drop_leg()
        self.do(StopTimer("media"))
        attempt = self.attempt
        fields = {
            "status": status,
            "reason": reason,
            "ended_by": ended_by,
            "end_reason": end,
            "leg_id": attempt.id if attempt else "",
            "trunk": attempt.target.trunk if attempt else "",
            "attempt": attempt.number if attempt else 0,
        }
        self.ending = (fields, Finished(status, reason))
        self._answer_held()
        if self.anchor.pending is not None:
            return  # the rewrite out decides: a session to delete, or none
        if self.anchor.opened:
            self._delete_session()
            return
        self._finish()

    def _answer_held(self) -> None:
        """What waited behind a rewrite when the call ended: requests get their answer."""
        held, self.anchor.held = self.anchor.held, []
        for item in held:
            if isinstance(item, InDialogRequest):
                status = 200 if item.request.method == "BYE" else 481
                self.do(Respond(item.txn, respond(item.request, status)))

    def _delete_session(self) -> None:
        anchor = self.anchor
        if not anchor.deleting:
            anchor.deleting = True
            tag = CALLER if CALLER in anchor.known or not anchor.known else min(anchor.known)
            self.do(MediaDelete(anchor.session, tag))

    def _finish(self, final: tuple[pb.MediaQuality, ...] = ()) -> None:
        """Publish the end, with the parties' figures when the media was anchored."""
        if self.ending is None:
            return  # published already
        (fields, finished), self.ending = self.ending, None
        anchor, parties = self.anchor, self._parties()
        mode = anchor.mode(parties)
        quality = anchor.figures(parties, final) if mode == ANCHORED else []
        note = "rtpengine lost the session mid-call (restarted?)" if anchor.lost else ""
        self._publish(Kind.ENDED, quality=quality, media=mode, media_note=note, **fields)
        for figures in quality:  # the legs' spans, on their edges, carry them too
            leg = self.attempts.get(figures.leg_id)
            if leg is not None:
                self._command(leg, quality=figures)
        self.do(finished, Release())

    def _parties(self) -> set[str]:
        """Who the call's record is of: the caller (or the leg in its place) and the leg."""
        parties = {self.bridged.id if self.bridged is not None else CALLER}
        if self.attempt is not None:
            parties.add(self.attempt.id)
        return parties

    def _rewritten_after_end(self, event: MediaRewritten) -> None:
        self.anchor.pending = None
        self.anchor.opened = True
        self.anchor.rtpengine = self.anchor.rtpengine or event.rtpengine
        self._delete_session()

    def _refused_after_end(self, event: MediaRefused) -> None:
        self.anchor.pending = None
        if self.anchor.opened:
            self._delete_session()
        else:
            self._finish()

    def _reported_after_end(self, event: MediaReported) -> None:
        if event.final:
            self.anchor.lost = self.anchor.lost or event.lost
            self._finish(event.quality)

    def _late_answer(self, event: InDialogResponse) -> None:
        self.side.challenged(event.request_id, event.response)

    def _ignore(self, event: object) -> None:
        pass


JOIN = "join"  # the request id of the re-INVITE that joins a transferee to its target
S = CallState
TIMERS: dict[tuple[CallState, str], Any] = {
    (S.ANSWERED, "transfer"): Call._transfer_timer,
    (S.TRYING, "failover"): Call._failover_timer,
    (S.RINGING, "ring"): Call._ring_timer,
    (S.ANSWERED, "call_limit"): Call._call_limit,
    (S.ANSWERED, "refresh"): Call._refresh,
    (S.ANSWERED, "retry"): Call._refresh,
    (S.ANSWERED, "expiry"): Call._expiry,
    (S.ANSWERED, "media"): Call._media_check,
    **{(state, "prack"): Call._prack_timer for state in (*EARLY, S.ANSWERED)},
}


def _table() -> dict[tuple[CallState, type], Handler]:
    table: dict[tuple[CallState, type], Handler] = {
        (S.ROUTING, InviteReceived): Call._invite,
        (S.ROUTING, RouteDecided): Call._routed,
        (S.ROUTING, RouteFailed): Call._route_failed,
        (S.ROUTING, AtLimit): Call._at_limit,
        (S.TRYING, RouteDecided): Call._redirect_routed,
        (S.TRYING, RouteFailed): Call._redirect_unrouted,
        (S.ANSWERED, AckReceived): Call._ack,
        (S.ANSWERED, InDialogRequest): Call._request,
        (S.ANSWERED, LegRequested): Call._leg_requested,
        (S.ANSWERED, LegResponded): Call._leg_responded,
        (S.ANSWERED, InDialogResponse): Call._caller_answered,
        (S.ANSWERED, LegEnded): Call._leg_ended,
        (S.ANSWERED, LegAnswered): Call._transfer_answered,
        (S.ANSWERED, LegProgress): Call._transfer_progress,
        (S.ANSWERED, LegFailed): Call._transfer_leg_failed,
        (S.ANSWERED, LegCreateAnswered): Call._transfer_created,
        (S.ANSWERED, LegTransferRequested): Call._refer_from_leg,
        (S.ANSWERED, RouteDecided): Call._transfer_routed,
        (S.ANSWERED, RouteFailed): Call._transfer_unrouted,
        (S.ANSWERED, DialogFound): Call._dialog_found,
        (S.ANSWERED, AckTimedOut): Call._ack_timed_out,
        (S.ANSWERED, HangupRequested): Call._hangup,
        (S.RINGING, LegResponded): Call._leg_responded,
        (S.RINGING, LegRequested): Call._leg_requested,
        (S.RINGING, InDialogResponse): Call._caller_answered,
        (S.ENDED, LegCreateAnswered): Call._created_after_end,
        (S.ENDED, LegAnswered): Call._stale_answer,
        (S.ENDED, InDialogResponse): Call._late_answer,
        (S.ANSWERED, MediaReported): Call._media_reported,
        (S.ENDED, MediaRewritten): Call._rewritten_after_end,
        (S.ENDED, MediaRefused): Call._refused_after_end,
        (S.ENDED, MediaReported): Call._reported_after_end,
    }
    for state in (*EARLY, S.ANSWERED):
        table[state, MediaRewritten] = Call._rewritten
        table[state, MediaRefused] = Call._refused
    for state in (*EARLY, S.ANSWERED):
        table[state, TimerFired] = Call._timer
    for state in EARLY:
        table[state, CallerCancelled] = Call._cancelled
        table[state, InDialogRequest] = Call._early_request
        table[state, HangupRequested] = Call._hangup_early
    for state in (S.TRYING, S.RINGING, S.ANSWERED):
        table[state, LegRetrying] = Call._leg_retrying
    for state in (S.TRYING, S.RINGING):
        table[state, LegProgress] = Call._progress
        table[state, LegAnswered] = Call._answered
        table[state, LegFailed] = Call._leg_failed
        table[state, LegEnded] = Call._leg_ended_early
        table[state, LegCreateAnswered] = Call._create_answered
    # late news, after the fact: nothing left to do
    for state, event in (
        (S.RINGING, RouteDecided),
        (S.RINGING, RouteFailed),
        (S.ENDED, RouteDecided),
        (S.ENDED, RouteFailed),
        (S.ENDED, AtLimit),
        (S.ENDED, LegProgress),
        (S.ENDED, LegRetrying),
        (S.ENDED, LegFailed),
        (S.ENDED, LegEnded),
        (S.ENDED, LegRequested),
        (S.ENDED, LegResponded),
        (S.ENDED, DialogFound),
        (S.ENDED, LegTransferRequested),
    ):
        table[state, event] = Call._ignore
    return table


Call.TRANSITIONS = _table()
