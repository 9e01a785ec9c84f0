"""The leg: the machine of one egress attempt, the UAC dialog towards a trunk this edge serves.

Theory of operation
-------------------
A leg is created by a call's owner (any edge) with a LegCommand `create`; it sends the
INVITE, publishes what happens as LegEvents to the owner (progress, answered, failed, the
callee's in-dialog requests and answers, ended), and takes the owner's further commands:
cancel, ack, bye, and in-dialog requests and answers to relay. Its `Side` does for the
callee's dialog what the RFCs ask of a UAC whatever the caller does: it PRACKs reliable
provisionals (RFC 3262), keeps the session timer (RFC 4028), answers glare with 491. It
cleans up after itself whatever order commands and responses cross in: a 2xx after a
CANCEL is ACKed and ended with a BYE, and so is a second fork's 2xx (RFC 3261 13.2.2.4).

What crosses to the trunk of the caller's identity is decided here, by this trunk's trust
(RFC 3323, 3325): From carries the calling number unless the caller asked for privacy or
the route suppresses it without an alternate (then it is anonymous, with `Privacy: id`);
P-Asserted-Identity goes only to a trusted trunk; Diversion and History-Info only to a
trunk that takes them, and never to an untrusted one when privacy asks to withhold them.

The trunk's peer may have several targets (RFC 3263: SRV records, addresses): the leg is
given them, or asks for them (`Resolve`) when the peer is a name, and tries each in turn,
a new INVITE transaction per target, on a transport failure, a timeout (the trunk's
failover timer, per target) or one of the trunk's failover codes; only when the last one
fails does the call hear FAILED and move to its next trunk. Walking several targets, the
leg tells the call how long those left may take (RETRYING), so the call's failover timer
does not cut the walk short. A 401/407 from a trunk with credentials is answered once
(RFC 3261 22.2, `tandem.b2bua.auth`); refused credentials fail the leg (`auth`), which the
call fails over like a transport failure.

States: RESOLVING (waiting for the peer's targets), CALLING (INVITE sent, nothing but 100
back), EARLY (a provisional came), ANSWERED (a 2xx confirmed the dialog), CANCELLING (given
up before a final response: waiting for it to wind down), ENDED. The transitions:

    RESOLVING Start                   ask where the peer is
    RESOLVING Resolved                targets: the INVITE to the first -> CALLING;
                                      none: failed (dns) -> ENDED
    RESOLVING CancelRequested, Bye    nothing was sent: over -> ENDED
    CALLING  Start                    the INVITE (17.1.1) to the first target
    CALLING  TimerFired(target)       no provisional from this target in time: CANCEL it,
                                      the INVITE to the next one
    early    InviteResponse 1xx       progress (100 absorbed; a reliable one PRACKed, once)
                                      -> EARLY
    early    InviteResponse 2xx       answered; ACKed at once when the INVITE carried the
                                      offer (no answer of the caller's to wait for) -> ANSWERED
    early    InviteResponse 422       once: the INVITE again with the callee's Min-SE
    early    InviteResponse 401/407   with credentials: the INVITE again, answering it (once
                                      per challenge); refused: failed (auth) -> ENDED
    early    InviteResponse >=300     a failover code while CALLING: the next target; else,
                                      or at the last target: failed (response, its code as
                                      the response map says; a 3xx with its Contacts) -> ENDED
    early    InviteResponse none      timeout or transport_error while CALLING: the next
                                      target; at the last one: failed -> ENDED
    early    InviteResponse stale     to an INVITE sent to a target given up: a 2xx is ACKed
                                      and ended with a BYE, the rest is dropped
    early    CancelRequested, Bye     CANCEL (9.1): now, or when a provisional comes -> CANCELLING
    early    InDialogRequest          an UPDATE in the early dialog relayed; others 481
    early    RelayRequested           the caller's UPDATE in the early dialog
    ANSWERED AckRequested             the ACK, with the caller's body (13.2.2.4), unless sent
    ANSWERED ByeRequested, Cancel     BYE (15.1.1) -> ENDED
    ANSWERED RelayRequested           the caller's request in this dialog (491 in a glare)
    ANSWERED RelayAnswered            the caller's answer to the callee's request
    ANSWERED InDialogRequest          BYE: 200, ended -> ENDED; a pure session refresh and
                                      OPTIONS answered here; others relayed to the owner
    ANSWERED AckReceived              the callee's ACK of a relayed re-INVITE's 2xx, relayed
    ANSWERED InDialogResponse         the callee's answer, relayed to the owner
    ANSWERED InviteResponse 2xx       a repeat: ACK again; another fork's: ACK and BYE it
    ANSWERED TimerFired               refresh: ours; expiry: none came, BYE, ended -> ENDED
    CANCELLING InviteResponse 2xx     answered as we gave up: ACK and BYE -> ENDED
    CANCELLING InviteResponse final   (487) -> ENDED
    ENDED    InviteResponse 2xx       ACK again, or ACK and BYE another fork
    ENDED    InDialogResponse         a challenge to our BYE answered (once)

("early" is CALLING and EARLY.) Every other pair raises `ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum, auto
from typing import Any

from tandem.b2bua.actions import (
    CancelInvite,
    FindDialog,
    Finished,
    Publish,
    Release,
    Resolve,
    Respond,
    SendAck,
    SendInvite,
    SendRequest,
    StartTimer,
    StopTimer,
)
from tandem.b2bua.auth import CHALLENGES, again, credentials_of
from tandem.b2bua.events import (
    AckReceived,
    AckRequested,
    ByeRequested,
    CancelRequested,
    DialogFound,
    Hop,
    InDialogRequest,
    InDialogResponse,
    InviteResponse,
    RelayAnswered,
    RelayRequested,
    Resolved,
    Start,
    TimerFired,
)
from tandem.b2bua.local import ALLOW, USER_AGENT, Local, new_id, new_tag, uri_transport
from tandem.b2bua.machine import Handler, Machine, ProtocolError
from tandem.b2bua.profile import DEFAULT_FAILOVER_CODES, DEFAULT_FAILOVER_TIMER_S, Profile
from tandem.b2bua.relay import Relay, body_headers, respond, sip_body
from tandem.b2bua.side import REFRESH, Side, _min_se
from tandem.b2bua.transfer import referral
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, Response
from tandem.sip.dialog import Dialog, DialogSet
from tandem.sip.uri import format_host_port, quote_display

Kind = pb.LegEvent.Kind
ANONYMOUS_FROM = '"Anonymous" <sip:anonymous@anonymous.invalid>'
HIDE_IDENTITY = frozenset(("id", "user", "header"))
HIDE_HISTORY = frozenset(("header", "history"))  # RFC 3323, RFC 7044
_UA = [("User-Agent", USER_AGENT)]


class LegState(Enum):
    RESOLVING = auto()
    CALLING = auto()
    EARLY = auto()
    ANSWERED = auto()
    CANCELLING = auto()
    ENDED = auto()


EARLY = (LegState.CALLING, LegState.EARLY)


class Leg(Machine):
    """One attempt of a call on one trunk this edge serves."""

    KIND = "leg"
    state: LegState

    def __init__(
        self,
        edge: str,
        command: pb.LegCommand,
        peer: tuple[str, int],
        local: Local,
        profile: Profile | None = None,
        *,
        targets: Sequence[Hop] = (),
        resolve: bool = False,
    ) -> None:
        """`peer` is the trunk's host and port as its URIs name them (port 0: none, a name
        whose SRV records say); `targets` are where its INVITE goes, in order (none: to
        the peer); `resolve`: not known yet, ask on Start."""
        super().__init__()
        create = command.create
        self.id = command.leg_id
        self.call_id = command.call_id
        self.edge = edge
        self.owner_edge = create.owner_edge
        self.local = local
        self.profile = profile or Profile(trunk=create.target.trunk)
        self.state = LegState.RESOLVING if resolve else LegState.CALLING
        self.seq = 0
        self.local_tag = new_tag()
        self.sip_call_id = create.sip_call_id or new_id()
        self.side = Side(self.step, self.profile, uac=True)
        self.peer = format_host_port(*peer) if peer[1] else peer[0]
        self.targets = list(targets)
        self.hop = 0  # the target the INVITE goes to now
        self.given_up: dict[int, Request] = {}  # INVITEs to targets left behind, by CSeq
        self.timer_s = create.target.failover_timer_s or DEFAULT_FAILOVER_TIMER_S
        self.failover_codes = tuple(create.target.failover_response_codes) or DEFAULT_FAILOVER_CODES
        self.auth_answers = 0  # challenges to the current INVITE answered
        self.invite = invite_request(
            create, self.peer, local, self.local_tag, self.sip_call_id, self.profile
        )
        for name, value in self.side.invite_headers():
            self.invite.headers.add(name, value)
        self.side.sdp_sent = self.invite.body
        self.dialogs = DialogSet(self.invite)
        self.early: Dialog | None = None  # the early dialog whose 1xx the caller heard last
        self.retried_422 = False
        self.relay = Relay()
        self.callee_invite = False  # the callee's re-INVITE got its 2xx: its ACK crosses too
        self.refer: pb.LegRequest | None = None  # a REFER with Replaces, being looked up

    @property
    def dialog(self) -> Dialog | None:
        """The dialog the 2xx confirmed."""
        return self.side.dialog

    def _publish(self, kind: pb.LegEvent.Kind, **fields: Any) -> None:
        self.seq += 1
        event = pb.LegEvent(
            leg_id=self.id,
            call_id=self.call_id,
            edge=self.edge,
            kind=kind,
            sip_call_id=self.sip_call_id,
            time_unix_ms=self.now_ms,
            seq=self.seq,
            **fields,
        )
        self.do(Publish(event))

    # ---- the INVITE ----------------------------------------------------------------------

    def _start(self, event: Start) -> None:
        if self.state is LegState.RESOLVING:
            self.do(Resolve(self.peer, self.local.transport))
        else:
            self._try(0)

    def _resolved(self, event: Resolved) -> None:
        if not event.targets:
            self._fail(503, event.error or "no address", "dns")
            return
        self.targets = list(event.targets)
        self.state = LegState.CALLING
        self._try(0)

    def _cancel_resolving(self, event: CancelRequested | ByeRequested) -> None:
        self.state = LegState.ENDED
        self.do(Finished(487, event.reason, event.reason, cancelled=True), Release())

    # ---- the targets of the trunk (RFC 3263 4.3) -----------------------------------------

    @property
    def walking(self) -> bool:
        return len(self.targets) > 1

    def _try(self, hop: int, after: str = "") -> None:
        """The INVITE to target `hop`; walking several, the call hears how long the targets
        left may take, and each but the last is timed here (the call times the last)."""
        self.hop = hop
        to = self.targets[hop] if self.targets else None
        self.do(SendInvite(self.invite, to))
        if not self.walking:
            return
        left = len(self.targets) - hop
        reason = f"{_hop_text(self.targets[hop])}" + (f" after {after}" if after else "")
        self._publish(Kind.RETRYING, wait_s=left * self.timer_s, reason=reason)
        if left > 1:
            self.do(StartTimer("target", self.timer_s))
        else:
            self.do(StopTimer("target"))

    def _next_target(self, why: str) -> bool:
        """On to the next target, with a new INVITE transaction; False at the last one."""
        if self.state is not LegState.CALLING or self.hop + 1 >= len(self.targets):
            return False
        invite = self.invite
        self.given_up[invite.cseq.number] = invite
        self.invite = again(invite, invite.cseq.number + 1)  # no credentials: another server
        self.dialogs = DialogSet(self.invite)
        self.auth_answers = 0
        self._try(self.hop + 1, f"{_hop_text(self.targets[self.hop])}: {why}")
        return True

    def _target_timer(self, event: TimerFired) -> None:
        if event.name != "target":
            raise ProtocolError(self.KIND, self.state, event)
        self.do(CancelInvite())  # stops the INVITE to the silent target (and CANCELs a 100)
        self._next_target(f"no provisional response in {self.timer_s:g} s")

    def _stale(self, event: InviteResponse) -> bool:
        """A response to an INVITE sent to a target given up: a 2xx is ended (ACK, BYE)."""
        response = event.response
        cseq = response.cseq.number if response is not None else event.cseq
        invite = self.given_up.get(cseq)
        if invite is None:
            return False
        if response is not None and 200 <= response.status < 300:
            self._end_fork(Dialog.as_uac(invite, response))
        return True

    # ---- the INVITE's responses ----------------------------------------------------------

    def _response(self, event: InviteResponse) -> None:
        if self._stale(event):
            return
        response = event.response
        if response is None:
            failure = event.failure or "timeout"
            if not self._next_target(event.reason or failure):
                self._fail(408, event.reason or "Request Timeout", failure)
            return
        status = response.status
        if status == 100:
            return
        if status == 422 and self._retry_422(response):
            return
        if self.walking and status not in CHALLENGES:
            self.do(StopTimer("target"))  # this target answers: the walk is over, or moves on
        dialog = self.dialogs.on_response(response)
        body = sip_body(response)
        if status < 200:
            if dialog is None or not self.side.provisional_received(dialog, response):
                return  # no dialog (no To tag), or a reliable one seen before
            self.early = dialog
            self.state = LegState.EARLY
            self._publish(Kind.PROGRESS, status=status, reason=response.reason, body=body)
        elif status < 300:
            self.side.dialog = dialog
            self.side.confirmed(response)
            self.state = LegState.ANSWERED
            self._publish(
                Kind.ANSWERED,
                status=status,
                reason=response.reason,
                body=body,
                local_tag=self.local_tag,
                remote_tag=response.to.tag or "",
            )
            if self.invite.body:  # the ACK carries nothing of the caller's: it goes at once
                self._send_ack(pb.SipBody())
        elif status in CHALLENGES and self.profile.auth:
            self._authenticate(response)
        elif status in self.failover_codes and self._next_target(f"{status} {response.reason}"):
            return
        else:
            contacts = [
                pb.Header(name="Contact", value=v) for v in response.headers.values("contact")
            ]
            self._fail(self.profile.mapped(status), response.reason, "response", status, contacts)

    def _authenticate(self, response: Response) -> None:
        """RFC 3261 22.2: the INVITE again with the credentials, to the same target."""
        answer = self.side.auth.answer(self.invite, response, self.auth_answers)
        if isinstance(answer, str):
            self._fail(503, f"digest authentication failed: {answer}", "auth", response.status)
            return
        self.auth_answers += 1
        self.invite = again(self.invite, self.invite.cseq.number + 1, answer)
        self.dialogs = DialogSet(self.invite)
        self.do(SendInvite(self.invite, self.targets[self.hop] if self.targets else None))

    def _retry_422(self, response: Response) -> bool:
        """RFC 4028 6: the callee wants a longer session interval; ask again, once."""
        if self.retried_422:
            return False
        self.retried_422 = True
        invite = self.invite
        headers = invite.headers.copy()
        headers.remove("via")
        headers.set("CSeq", f"{invite.cseq.number + 1} INVITE")
        headers.set("Session-Expires", str(_min_se(response)))
        headers.set("Min-SE", str(_min_se(response)))
        self.invite = Request("INVITE", invite.uri, headers, invite.body)
        self.dialogs = DialogSet(self.invite)
        self.do(SendInvite(self.invite))
        return True

    def _another_2xx(self, event: InviteResponse) -> None:
        response = event.response
        if response is None or not 200 <= response.status < 300 or self._stale(event):
            return
        dialog = self.dialogs.on_response(response)
        if dialog is not None and dialog is not self.dialog:
            self._end_fork(dialog)
        elif self.side.last_ack is not None:  # a retransmission: our ACK was lost
            self.side.ack(self.side.last_ack)

    def _end_fork(self, dialog: Dialog) -> None:
        """A second fork answered too: ACK it, then hang it up (RFC 3261 13.2.2.4)."""
        ack = dialog.create_ack(credentials_of(self.invite))
        self.do(SendAck(ack), SendRequest(dialog.create_request("BYE", _UA)))

    def _winding_down(self, event: InviteResponse) -> None:
        """The final response to an INVITE we gave up on."""
        if self._stale(event):
            return
        response = event.response
        if response is not None and response.status < 200:
            return  # (the CANCEL asked for earlier leaves with this provisional)
        if response is not None and response.status < 300:
            self.side.dialog = self.dialogs.on_response(response)
            self._send_ack(pb.SipBody())
            self._bye()
        self.state = LegState.ENDED
        self.do(Release())

    def _fail(
        self,
        status: int,
        reason: str,
        failure: str,
        received: int = 0,
        contacts: list[pb.Header] | None = None,
    ) -> None:
        received = received if received != status else 0
        self._publish(
            Kind.FAILED,
            status=status,
            reason=reason,
            failure=failure,
            received_status=received,
            headers=contacts or [],
        )
        self.state = LegState.ENDED
        self.do(Finished(status, reason, failure), Release())

    # ---- commands from the call's owner --------------------------------------------------

    def _cancel(self, event: CancelRequested | ByeRequested) -> None:
        """The attempt is over for the call; the leg winds down when the final comes."""
        self.state = LegState.CANCELLING
        self.do(Finished(487, event.reason, event.reason, cancelled=True), CancelInvite())
        if self.walking:
            self.do(StopTimer("target"))

    def _hang_up(self, event: CancelRequested | ByeRequested) -> None:
        if self.side.last_ack is None:  # a 2xx is ACKed before its dialog is ended
            self._send_ack(pb.SipBody())
        self._bye()
        self._end(200, event.reason)

    def _ack_requested(self, event: AckRequested) -> None:
        """The caller's ACK: ours crosses unless the leg ACKed its 2xx itself already (each
        leg keeps its own dialog alive); a delayed offer's answer always crosses."""
        ack, dialog = self.side.last_ack, self.dialog
        acked = ack is not None and dialog is not None and ack.cseq.number == dialog.invite_cseq
        if not acked or event.body.body:
            self._send_ack(event.body)

    def _send_ack(self, body: pb.SipBody) -> None:
        if self.dialog is not None:
            headers = body_headers(body) + credentials_of(self.invite)
            self.side.ack(self.dialog.create_ack(headers, body.body))

    def _bye(self) -> None:
        if self.dialog is not None:
            self.side.send(self.dialog.create_request("BYE", _UA))

    def _relay_requested(self, event: RelayRequested) -> None:
        relayed = event.request
        dialog = self.dialog if self.state is LegState.ANSWERED else self.early
        if dialog is None or (self.state is not LegState.ANSWERED and relayed.method != "UPDATE"):
            self._publish(Kind.RESPONSE, response=_refused(relayed, 481))
            return
        if relayed.method == "INVITE" and self.side.invite_in is not None:
            self._publish(Kind.RESPONSE, response=_refused(relayed, 491))  # glare, at once
            return
        headers = Relay.inbound_headers(relayed)
        request = dialog.create_request(relayed.method, headers, relayed.body.body)
        self.relay.sent[relayed.request_id] = False
        self.side.send(request, relayed.request_id)

    def _relay_answered(self, event: RelayAnswered) -> None:
        answer = self.relay.answer(event.response, self.local.contact)
        if answer is None:
            return
        txn, response = answer
        self.side.respond(txn, response)
        if txn.request.method == "INVITE" and 200 <= response.status < 300:
            self.callee_invite = True

    # ---- the callee ----------------------------------------------------------------------

    def _callee_request(self, event: InDialogRequest) -> None:
        request = event.request
        assert self.dialog is not None
        error = self.dialog.on_request(request)
        if error is not None:
            self.do(Respond(event.txn, respond(request, error)))
            return
        if self.side.receive(request, event.txn):
            return
        if request.method == "BYE":
            self.do(Respond(event.txn, respond(request, 200)))
            self._publish(Kind.ENDED, status=200, reason="callee hung up")
            self._end(200, "callee hung up")
            return
        if request.method == "REFER" and self.profile.refer != "relay":
            self._refer(event)
            return
        if request.method == "INVITE":  # the far end may be slow: say so at once
            self.do(Respond(event.txn, respond(request, 100)))
        self._publish(Kind.REQUEST, request=self.relay.outbound(event.txn))

    def _refer(self, event: InDialogRequest) -> None:
        """A REFER from the callee: refused, or accepted for the call's owner to carry out."""
        request = event.request
        if self.profile.refer == "reject":
            self.do(Respond(event.txn, respond(request, 403, "Transfer Not Allowed")))
            return
        refer_to = request.headers.get("refer-to") or ""
        wanted = referral(refer_to)
        if wanted is None:
            self.do(Respond(event.txn, respond(request, 400, "Bad Refer-To")))
            return
        self.do(Respond(event.txn, respond(request, 202)))
        headers = [pb.Header(name="Refer-To", value=refer_to)]
        self.refer = pb.LegRequest(
            request_id=str(request.cseq.number), method="REFER", headers=headers
        )
        if wanted.replaces is not None:  # the dialog it names is this edge's to find
            self.do(FindDialog(*wanted.replaces))
        else:
            self._publish(Kind.TRANSFER, request=self.refer)

    def _refer_resolved(self, event: DialogFound) -> None:
        if self.refer is None:
            return
        refer, self.refer = self.refer, None
        self._publish(
            Kind.TRANSFER,
            request=refer,
            transfer_target=event.target,
            replaces=event.replaces,
        )

    def _early_request(self, event: InDialogRequest) -> None:
        """A request in an early dialog: an UPDATE crosses (RFC 3311); the rest is 481."""
        request = event.request
        dialog = self.dialogs.dialogs.get(request.from_.tag or "")
        if dialog is None or request.method not in ("UPDATE", "OPTIONS"):
            self._no_dialog(event)
            return
        error = dialog.on_request(request)
        if error is not None:
            self.do(Respond(event.txn, respond(request, error)))
        elif request.method == "OPTIONS":
            self.do(Respond(event.txn, respond(request, 200, headers=[("Allow", ALLOW)])))
        else:
            self._publish(Kind.REQUEST, request=self.relay.outbound(event.txn))

    def _no_dialog(self, event: InDialogRequest) -> None:
        self.do(Respond(event.txn, respond(event.request, 481)))

    def _callee_ack(self, event: AckReceived) -> None:
        if self.callee_invite:
            self.callee_invite = False
            ack = pb.LegRequest(method="ACK", body=sip_body(event.request))
            self._publish(Kind.REQUEST, request=ack)

    def _callee_answered(self, event: InDialogResponse) -> None:
        response = event.response
        if self.side.challenged(event.request_id, response):
            return
        if event.request_id == REFRESH:
            gone = self.side.refreshed(response)
            if gone is not None:
                self._session_over(gone)
            return
        crossing = self.side.crossing(self.relay, event.request_id, response)
        if crossing is not None:
            self._publish(Kind.RESPONSE, response=crossing)

    # ---- the session timer ---------------------------------------------------------------

    def _timer(self, event: TimerFired) -> None:
        if event.name in ("refresh", "retry"):
            self.side.refresh()
        elif event.name == "expiry":
            self._session_over("no session refresh in time")
        else:
            raise ProtocolError(self.KIND, self.state, event)

    def _session_over(self, reason: str) -> None:
        """RFC 4028 10: the session expired: BYE, and the call ends with it."""
        self._bye()
        self._publish(Kind.ENDED, status=200, reason=reason, failure="session_expired")
        self._end(200, reason)

    def _end(self, status: int, reason: str) -> None:
        self.state = LegState.ENDED
        self.do(Finished(status, reason), Release())

    def _late_answer(self, event: InDialogResponse) -> None:
        """An answer after the end: a challenge to our BYE is answered all the same."""
        self.side.challenged(event.request_id, event.response)

    def _ignore(self, event: object) -> None:
        pass


def _hop_text(hop: Hop) -> str:
    transport, host, port = hop
    return f"{format_host_port(host, port)}/{transport}"


def _refused(request: pb.LegRequest, status: int) -> pb.LegResponse:
    reason = {481: "Call/Transaction Does Not Exist", 491: "Request Pending"}[status]
    return pb.LegResponse(request_id=request.request_id, status=status, reason=reason)


def invite_request(
    create: pb.LegCreate,
    hostport: str,
    local: Local,
    tag: str,
    call_id: str,
    profile: Profile,
) -> Request:
    """The leg's INVITE: tandem's own From, To, Call-ID and Contact; the caller's identity
    and history only as the caller's privacy and this trunk's trust allow."""
    target = create.target
    suffix = uri_transport(local.transport)
    privacy = {p.strip().lower() for p in create.privacy.split(",") if p.strip()}
    withheld = not target.calling  # a route that suppresses the caller ID, with no alternate
    anonymous = withheld or bool(privacy & HIDE_IDENTITY)
    if anonymous:
        from_ = f"{ANONYMOUS_FROM};tag={tag}"
    else:
        display = create.calling_display
        shown = f"{quote_display(display)} " if display and not target.suppress_caller_id else ""
        from_ = f"{shown}<sip:{target.calling}@{local.host}>;tag={tag}"
    fields = [
        ("Max-Forwards", str(create.max_forwards)),
        ("From", from_),
        ("To", f"<sip:{target.called}@{hostport}>"),
        ("Call-ID", call_id),
        ("CSeq", "1 INVITE"),
        ("Contact", local.contact),
        ("Allow", ALLOW),
        ("User-Agent", USER_AGENT),
    ]
    forwarded = [(h.name, h.value) for h in create.headers]
    if profile.trusted:  # RFC 3325: the asserted identity, with the privacy it asks for
        asserted = [v for n, v in forwarded if n.lower() == "p-asserted-identity"]
        if target.suppress_caller_id and target.calling:
            asserted = [f"<sip:{target.calling}@{local.host}>"]  # the route's alternate
        elif not asserted and target.calling.lower() not in ("", "anonymous"):
            asserted = [f"<sip:{target.calling}@{local.host}>"]  # an anonymous From names no one
        fields += [("P-Asserted-Identity", v) for v in asserted]
        wanted = privacy | ({"id"} if withheld else set())
        if wanted:
            fields.append(("Privacy", "; ".join(sorted(wanted))))
    elif anonymous:
        fields.append(("Privacy", "id"))
    if profile.forward_call_history and (profile.trusted or not privacy & HIDE_HISTORY):
        fields += [(n, v) for n, v in forwarded if n.lower() in ("history-info", "diversion")]
    fields += [(n, v) for n, v in forwarded if n.lower() == "replaces"]  # an attended transfer
    if create.body.body:
        fields.append(("Content-Type", create.body.content_type or "application/sdp"))
    uri = f"sip:{target.called}@{hostport}{suffix}"
    return Request("INVITE", uri, fields, create.body.body)


def _table() -> dict[tuple[LegState, type], Handler]:
    S = LegState
    table: dict[tuple[LegState, type], Handler] = {
        (S.RESOLVING, Start): Leg._start,
        (S.RESOLVING, Resolved): Leg._resolved,
        (S.RESOLVING, CancelRequested): Leg._cancel_resolving,
        (S.RESOLVING, ByeRequested): Leg._cancel_resolving,
        (S.CALLING, Start): Leg._start,
        (S.CALLING, TimerFired): Leg._target_timer,
        (S.ANSWERED, InviteResponse): Leg._another_2xx,
        (S.ENDED, InviteResponse): Leg._another_2xx,
        (S.CANCELLING, InviteResponse): Leg._winding_down,
        (S.ANSWERED, CancelRequested): Leg._hang_up,
        (S.ANSWERED, ByeRequested): Leg._hang_up,
        (S.ANSWERED, AckRequested): Leg._ack_requested,
        (S.ANSWERED, RelayRequested): Leg._relay_requested,
        (S.EARLY, RelayRequested): Leg._relay_requested,
        (S.ANSWERED, RelayAnswered): Leg._relay_answered,
        (S.EARLY, RelayAnswered): Leg._relay_answered,
        (S.ANSWERED, InDialogRequest): Leg._callee_request,
        (S.ANSWERED, AckReceived): Leg._callee_ack,
        (S.ANSWERED, InDialogResponse): Leg._callee_answered,
        (S.EARLY, InDialogResponse): Leg._callee_answered,
        (S.ANSWERED, TimerFired): Leg._timer,
        (S.ANSWERED, DialogFound): Leg._refer_resolved,
        (S.CANCELLING, InDialogRequest): Leg._no_dialog,
        (S.ENDED, InDialogResponse): Leg._late_answer,
    }
    for state in EARLY:
        table[state, InviteResponse] = Leg._response
        table[state, CancelRequested] = Leg._cancel
        table[state, ByeRequested] = Leg._cancel
        table[state, InDialogRequest] = Leg._early_request
    # commands that cross a change they could not know of: nothing left to do
    late: list[tuple[LegState, type]] = [
        (S.RESOLVING, RelayRequested),
        (S.RESOLVING, RelayAnswered),
        (S.RESOLVING, AckRequested),
        (S.ENDED, Resolved),
        (S.CALLING, RelayRequested),
        (S.CALLING, RelayAnswered),
        *((state, AckRequested) for state in (*EARLY, S.CANCELLING)),
        (S.CANCELLING, RelayRequested),
        (S.CANCELLING, RelayAnswered),
        (S.CANCELLING, CancelRequested),
        (S.CANCELLING, ByeRequested),
        (S.CANCELLING, InDialogResponse),
        (S.ENDED, DialogFound),
    ]
    for state, event in late:
        table[state, event] = Leg._ignore
    return table


Leg.TRANSITIONS = _table()
