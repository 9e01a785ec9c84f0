"""The leg: the machine of one egress attempt, the UAC dialog towards a trunk this edge serves.

Theory of operation
-------------------
A leg is created by a call's owner (any edge) with a LegCommand `create`; it sends the
INVITE, publishes what happens as LegEvents to the owner (progress, answered, failed, the
callee's in-dialog requests and answers, ended), and takes the owner's further commands:
cancel, ack, bye, and in-dialog requests and answers to relay. It cleans up after itself
whatever order commands and responses cross in: a 2xx after a CANCEL is ACKed and ended with
a BYE, and a second fork's 2xx is ACKed and ended too (RFC 3261 13.2.2.4).

States: CALLING (INVITE sent, nothing but 100 back), EARLY (a provisional came), ANSWERED (a
2xx confirmed the dialog), CANCELLING (given up before a final response: waiting for it to
wind down), ENDED. The transitions:

    CALLING  Start                    the INVITE (17.1.1)
    early    InviteResponse 1xx       progress (100 is absorbed) -> EARLY
    early    InviteResponse 2xx       answered -> ANSWERED
    early    InviteResponse >=300     failed (response) -> ENDED
    early    InviteResponse none      failed (timeout: timer B, or transport_error) -> ENDED
    early    CancelRequested, Bye     CANCEL (9.1): now, or when a provisional comes -> CANCELLING
    early    InDialogRequest          481: no dialog is confirmed yet
    ANSWERED AckRequested             the ACK, with the caller's body (13.2.2.4)
    ANSWERED ByeRequested, Cancel     BYE (15.1.1) -> ENDED
    ANSWERED RelayRequested           the caller's request in this dialog
    ANSWERED RelayAnswered            the caller's answer to the callee's request
    ANSWERED InDialogRequest          BYE: 200, ended -> ENDED; others relayed to the owner
    ANSWERED AckReceived              the callee's ACK of a relayed re-INVITE's 2xx, relayed
    ANSWERED InDialogResponse         the callee's answer, relayed to the owner
    ANSWERED InviteResponse 2xx       a repeat: ACK again; another fork's: ACK and BYE it
    CANCELLING InviteResponse 2xx     answered as we gave up: ACK and BYE -> ENDED
    CANCELLING InviteResponse final   (487) -> ENDED
    ENDED    InviteResponse 2xx       ACK again, or ACK and BYE another fork

("early" is CALLING and EARLY.) Every other pair raises `ProtocolError`.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Any

from tandem.b2bua.actions import (
    CancelInvite,
    Finished,
    Publish,
    Release,
    Respond,
    SendAck,
    SendInvite,
    SendRequest,
)
from tandem.b2bua.events import (
    AckReceived,
    AckRequested,
    ByeRequested,
    CancelRequested,
    InDialogRequest,
    InDialogResponse,
    InviteResponse,
    RelayAnswered,
    RelayRequested,
    Start,
)
from tandem.b2bua.local import ALLOW, USER_AGENT, Local, new_id, new_tag
from tandem.b2bua.machine import Handler, Machine
from tandem.b2bua.relay import Relay, body_headers, leg_response, respond, sip_body
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request
from tandem.sip.dialog import Dialog, DialogSet
from tandem.sip.uri import format_host_port, quote_display

Kind = pb.LegEvent.Kind
ANONYMOUS_FROM = '"Anonymous" <sip:anonymous@anonymous.invalid>'


class LegState(Enum):
    CALLING = auto()
    EARLY = auto()
    ANSWERED = auto()
    CANCELLING = auto()
    ENDED = auto()


EARLY = (LegState.CALLING, LegState.EARLY)


class Leg(Machine):
    """One attempt of a call on one trunk this edge serves."""

    KIND = "leg"

    def __init__(
        self, edge: str, command: pb.LegCommand, peer: tuple[str, int], local: Local
    ) -> None:
        super().__init__()
        create = command.create
        self.id = command.leg_id
        self.call_id = command.call_id
        self.edge = edge
        self.owner_edge = create.owner_edge
        self.local = local
        self.state = LegState.CALLING
        self.seq = 0
        self.local_tag = new_tag()
        self.sip_call_id = create.sip_call_id or new_id()
        self.invite = invite_request(create, peer, local, self.local_tag, self.sip_call_id)
        self.dialogs = DialogSet(self.invite)
        self.dialog: Dialog | None = None  # the one the 2xx confirmed
        self.ack: Request | None = None  # our ACK of the 2xx to our last INVITE, for repeats
        self.relay = Relay()
        self.callee_invite = False  # the callee's re-INVITE got its 2xx: its ACK crosses too

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
        self.do(SendInvite(self.invite))

    def _response(self, event: InviteResponse) -> None:
        response = event.response
        if response is None:
            self._fail(408, "Request Timeout", event.failure or "timeout")
            return
        status = response.status
        if status == 100:
            return
        dialog = self.dialogs.on_response(response)
        body = sip_body(response)
        if status < 200:
            self.state = LegState.EARLY
            self._publish(Kind.PROGRESS, status=status, reason=response.reason, body=body)
        elif status < 300:
            self.dialog = dialog
            self.state = LegState.ANSWERED
            self._publish(Kind.ANSWERED, status=status, reason=response.reason, body=body)
        else:
            self._fail(status, response.reason, "response")

    def _another_2xx(self, event: InviteResponse) -> None:
        response = event.response
        if response is None or not 200 <= response.status < 300:
            return
        dialog = self.dialogs.on_response(response)
        if dialog is not None and dialog is not self.dialog:
            self._end_fork(dialog)
        elif self.ack is not None:  # a retransmission: our ACK was lost
            self.do(SendAck(self.ack))

    def _end_fork(self, dialog: Dialog) -> None:
        """A second fork answered too: ACK it, then hang it up (RFC 3261 13.2.2.4)."""
        self.do(SendAck(dialog.create_ack()), SendRequest(dialog.create_request("BYE", _UA)))

    def _winding_down(self, event: InviteResponse) -> None:
        """The final response to an INVITE we gave up on."""
        response = event.response
        if response is not None and response.status < 200:
            return  # (the CANCEL asked for earlier leaves with this provisional)
        if response is not None and response.status < 300:
            self.dialog = self.dialogs.on_response(response)
            self._send_ack(pb.SipBody())
            self._bye()
        self.state = LegState.ENDED
        self.do(Release())

    def _fail(self, status: int, reason: str, failure: str) -> None:
        self._publish(Kind.FAILED, status=status, reason=reason, failure=failure)
        self.state = LegState.ENDED
        self.do(Finished(status, reason, failure), Release())

    # ---- commands from the call's owner --------------------------------------------------

    def _cancel(self, event: CancelRequested | ByeRequested) -> None:
        """The attempt is over for the call; the leg winds down when the final comes."""
        self.state = LegState.CANCELLING
        self.do(Finished(487, event.reason, event.reason, cancelled=True), CancelInvite())

    def _hang_up(self, event: CancelRequested | ByeRequested) -> None:
        if self.ack is None:
            self._send_ack(pb.SipBody())
        self._bye()
        self._end(200, event.reason)

    def _ack_requested(self, event: AckRequested) -> None:
        self._send_ack(event.body)

    def _send_ack(self, body: pb.SipBody) -> None:
        if self.dialog is not None:
            self.ack = self.dialog.create_ack(body_headers(body), body.body)
            self.do(SendAck(self.ack))

    def _bye(self) -> None:
        if self.dialog is not None:
            self.do(SendRequest(self.dialog.create_request("BYE", _UA)))

    def _relay_requested(self, event: RelayRequested) -> None:
        relayed = event.request
        assert self.dialog is not None
        headers = Relay.inbound_headers(relayed)
        request = self.dialog.create_request(relayed.method, headers, relayed.body.body)
        self.relay.sent[relayed.request_id] = False
        self.do(SendRequest(request, relayed.request_id))

    def _relay_answered(self, event: RelayAnswered) -> None:
        answer = self.relay.answer(event.response, self.local.contact)
        if answer is None:
            return
        txn, response = answer
        self.do(Respond(txn, response))
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
        if request.method == "BYE":
            self.do(Respond(event.txn, respond(request, 200)))
            self._publish(Kind.ENDED, status=200, reason="callee hung up")
            self._end(200, "callee hung up")
            return
        if request.method == "INVITE":  # the far end may be slow: say so at once
            self.do(Respond(event.txn, respond(request, 100)))
        self._publish(Kind.REQUEST, request=self.relay.outbound(event.txn))

    def _no_dialog(self, event: InDialogRequest) -> None:
        self.do(Respond(event.txn, respond(event.request, 481)))

    def _callee_ack(self, event: AckReceived) -> None:
        if self.callee_invite:
            self.callee_invite = False
            ack = pb.LegRequest(method="ACK", body=sip_body(event.request))
            self._publish(Kind.REQUEST, request=ack)

    def _callee_answered(self, event: InDialogResponse) -> None:
        answered = self.relay.sent.get(event.request_id)
        response = event.response
        if answered is None or (response is not None and response.status < 200):
            return
        if answered:  # a 2xx again (a re-INVITE's): our ACK was lost
            if self.ack is not None and response is not None and response.status < 300:
                self.do(SendAck(self.ack))
            return
        self.relay.sent[event.request_id] = True
        self._publish(Kind.RESPONSE, response=leg_response(event.request_id, response))

    def _end(self, status: int, reason: str) -> None:
        self.state = LegState.ENDED
        self.do(Finished(status, reason), Release())

    def _ignore(self, event: object) -> None:
        pass


_UA = [("User-Agent", USER_AGENT)]


def invite_request(
    create: pb.LegCreate, peer: tuple[str, int], local: Local, tag: str, call_id: str
) -> Request:
    """The leg's INVITE: tandem's own From, To, Call-ID and Contact; the caller's identity
    and history only as the target's trunk allows."""
    target = create.target
    hostport = format_host_port(*peer)
    suffix = ";transport=tcp" if local.transport == "tcp" else ""
    if target.suppress_caller_id:
        from_ = f"{ANONYMOUS_FROM};tag={tag}"
    else:
        display = f"{quote_display(create.calling_display)} " if create.calling_display else ""
        from_ = f"{display}<sip:{target.calling or 'anonymous'}@{local.host}>;tag={tag}"
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
    if target.forward_pai:
        pai = [(n, v) for n, v in forwarded if n.lower() == "p-asserted-identity"]
        fields += pai or [("P-Asserted-Identity", f"<sip:{target.calling}@{local.host}>")]
    if target.forward_call_history:
        fields += [(n, v) for n, v in forwarded if n.lower() in ("history-info", "diversion")]
    if target.suppress_caller_id:
        fields.append(("Privacy", "id"))
    if create.body.body:
        fields.append(("Content-Type", create.body.content_type or "application/sdp"))
    uri = f"sip:{target.called}@{hostport}{suffix}"
    return Request("INVITE", uri, fields, create.body.body)


def _table() -> dict[tuple[LegState, type], Handler]:
    S = LegState
    table: dict[tuple[LegState, type], Handler] = {
        (S.CALLING, Start): Leg._start,
        (S.ANSWERED, InviteResponse): Leg._another_2xx,
        (S.ENDED, InviteResponse): Leg._another_2xx,
        (S.CANCELLING, InviteResponse): Leg._winding_down,
        (S.ANSWERED, CancelRequested): Leg._hang_up,
        (S.ANSWERED, ByeRequested): Leg._hang_up,
        (S.ANSWERED, AckRequested): Leg._ack_requested,
        (S.ANSWERED, RelayRequested): Leg._relay_requested,
        (S.ANSWERED, RelayAnswered): Leg._relay_answered,
        (S.ANSWERED, InDialogRequest): Leg._callee_request,
        (S.ANSWERED, AckReceived): Leg._callee_ack,
        (S.ANSWERED, InDialogResponse): Leg._callee_answered,
        (S.CANCELLING, InDialogRequest): Leg._no_dialog,
    }
    for state in EARLY:
        table[state, InviteResponse] = Leg._response
        table[state, CancelRequested] = Leg._cancel
        table[state, ByeRequested] = Leg._cancel
        table[state, InDialogRequest] = Leg._no_dialog
    # commands that cross a change they could not know of: nothing left to do
    late: list[tuple[LegState, type]] = [
        (state, event)
        for state in (*EARLY, S.CANCELLING)
        for event in (AckRequested, RelayRequested, RelayAnswered)
    ]
    late += [(S.CANCELLING, CancelRequested), (S.CANCELLING, ByeRequested)]
    for state, event in late:
        table[state, event] = Leg._ignore
    table[S.ENDED, InDialogResponse] = Leg._ignore
    return table


Leg.TRANSITIONS = _table()
