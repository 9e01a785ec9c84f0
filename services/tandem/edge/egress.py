"""An egress leg: the UAC dialog this edge runs towards a trunk it serves, for any edge's call.

A leg is created, cancelled, ACKed, ended and given in-dialog requests by LegCommands on
`tandem.edge.<edge>.cmd`; what happens on it is published as LegEvents on
`tandem.leg.<leg>.evt`. The leg cleans up after itself whatever order commands and
responses cross in: a 2xx after a cancel is ACKed and ended with a BYE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tandem import bus, telemetry
from tandem.edge.dialog import ALLOW, USER_AGENT, new_id, new_tag
from tandem.edge.ingress import (
    answer_relayed,
    body_headers,
    ignore,
    now_ms,
    relay_request,
    relayed_headers,
    sip_body,
)
from tandem.edge.transactions import ClientTransaction, ServerTransaction
from tandem.edge.transport import Peer
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Trunk
from tandem.sip import Request, Response
from tandem.sip.dialog import Dialog, DialogSet
from tandem.sip.uri import quote_display
from tandem.telemetry import mask_number

if TYPE_CHECKING:
    from tandem.edge.service import Service

Kind = pb.LegEvent.Kind
ANONYMOUS_FROM = '"Anonymous" <sip:anonymous@anonymous.invalid>'


class Leg:
    """One attempt of a call on one trunk this edge serves."""

    def __init__(
        self,
        service: Service,
        command: pb.LegCommand,
        trunk: Trunk,
        parent: otel_context.Context,
    ) -> None:
        self.service = service
        self.id = command.leg_id
        self.call_id = command.call_id
        self.owner_edge = command.create.owner_edge
        create = command.create
        target = create.target
        self.trunk = trunk
        host, port = trunk.peer_address
        self.peer = Peer(trunk.transport, host, port)
        self.local = local = service.local(trunk.transport)
        self.seq = 0
        self.state = "calling"  # calling, early, answered, ended
        self.cancelled = False
        self.ack: Request | None = None  # our ACK of the 2xx to our last INVITE, for its repeats
        self.from_callee: dict[str, ServerTransaction] = {}
        self.callee_invite: ServerTransaction | None = None
        self.failure = ""

        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        suffix = ";transport=tcp" if trunk.transport == "tcp" else ""
        uri = f"sip:{target.called}@{hostport}{suffix}"
        self.local_tag = tag = new_tag()
        self.sip_call_id = create.sip_call_id or new_id()
        if target.suppress_caller_id:
            from_ = f"{ANONYMOUS_FROM};tag={tag}"
        else:
            display = f"{quote_display(create.calling_display)} " if create.calling_display else ""
            from_ = f"<sip:{target.calling or 'anonymous'}@{local.host}>;tag={tag}"
            from_ = display + from_
        to = f"<sip:{target.called}@{hostport}>"
        fields = [
            ("Max-Forwards", str(create.max_forwards)),
            ("From", from_),
            ("To", to),
            ("Call-ID", self.sip_call_id),
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
        self.invite = Request("INVITE", uri, fields, create.body.body)
        self.dialogs = DialogSet(self.invite)
        self.dialog: Dialog | None = None  # the one the 2xx confirmed
        self.ctx: ClientTransaction | None = None

        self.span = service.tracer.start_span(
            "egress leg",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                "tandem.call_id": self.call_id,
                "tandem.leg_id": self.id,
                "tandem.edge": service.edge_id,
                "tandem.trunk": trunk.id,
                "tandem.attempt": create.attempt,
                "sip.call_id": self.sip_call_id,
                "sip.called": mask_number(target.called, service.mask),
                "sip.calling": mask_number(target.calling, service.mask),
            },
        )
        # the leg's events carry its span, so the owner's handling of them joins the trace
        self.trace_headers = telemetry.inject({}, trace.set_span_in_context(self.span))

    def start(self) -> None:
        self.ctx = self.service.transactions.send_request(
            self.invite, self.peer, self.on_invite_response
        )

    # ---- events -----------------------------------------------------------------------------

    def publish(self, kind: pb.LegEvent.Kind, **fields: object) -> None:
        self.seq += 1
        event = pb.LegEvent(
            leg_id=self.id,
            call_id=self.call_id,
            edge=self.service.edge_id,
            kind=kind,
            sip_call_id=self.sip_call_id,
            time_unix_ms=now_ms(),
            seq=self.seq,
            **fields,  # type: ignore[arg-type]
        )
        self.service.publish(bus.leg_event(self.id), event.SerializeToString(), self.trace_headers)

    # ---- the INVITE -----------------------------------------------------------------------

    def on_invite_response(self, response: Response | None) -> None:
        if self.state == "ended":
            if response is not None and 200 <= response.status < 300 and self.ack is not None:
                self.service.transactions.send_stateless(self.ack, self.peer)
            return
        if response is None:
            failure = "transport_error" if self.failure == "transport_error" else "timeout"
            self.fail(408, "Request Timeout", failure)
            return
        status = response.status
        if status == 100:
            return
        dialog = self.dialogs.on_response(response)
        if status < 200:
            self.state = "early"
            if not self.cancelled:  # (a CANCEL asked for earlier has left with this 1xx)
                self.publish(
                    Kind.PROGRESS, status=status, reason=response.reason, body=sip_body(response)
                )
        elif status < 300:
            if self.state == "answered":
                if dialog is not None and dialog is not self.dialog:
                    self._end_fork(dialog)
                elif self.ack is not None:  # a retransmission: our ACK was lost
                    self.service.transactions.send_stateless(self.ack, self.peer)
                return
            self.dialog = dialog
            self.state = "answered"
            if self.cancelled:  # answered as we gave up on it: ACK and hang up at once
                self.send_ack()
                self.bye("cancelled")
                return
            self.span.set_attribute("sip.status", status)
            self.publish(
                Kind.ANSWERED, status=status, reason=response.reason, body=sip_body(response)
            )
        elif self.cancelled:
            self.end(status, response.reason)
        else:
            self.fail(status, response.reason, "response")

    def _end_fork(self, dialog: Dialog) -> None:
        """A second fork answered too: ACK it, then hang it up (RFC 3261 13.2.2.4)."""
        self.service.transactions.send_stateless(dialog.create_ack(), self.peer)
        bye = dialog.create_request("BYE", [("User-Agent", USER_AGENT)])
        self.service.transactions.send_request(bye, self.peer, ignore)

    def fail(self, status: int, reason: str, failure: str) -> None:
        if not self.cancelled:
            self.publish(Kind.FAILED, status=status, reason=reason, failure=failure)
        self.span.set_attribute("tandem.failover_reason", failure)
        self.end(status, reason)

    # ---- commands from the call's owner -----------------------------------------------------

    def on_command(self, which: str, command: pb.LegCommand) -> None:
        if which == "cancel":
            self.cancel(command.cancel.reason)
        elif which == "ack":
            self.send_ack(command.ack.body)
        elif which == "bye":
            if self.state == "answered":
                self.bye(command.bye.reason)
            else:
                self.cancel(command.bye.reason)
        elif which == "request":
            self.send_request(command.request)
        elif which == "response":
            self.respond(command.response)

    def cancel(self, reason: str) -> None:
        if self.state == "ended" or self.cancelled:
            return
        self.cancelled = True
        if self.state != "answered":  # the attempt is over for the call; the leg winds down
            self.span.set_attribute("tandem.failover_reason", reason)
            self.close_span(487, reason)
        if self.state == "answered":
            if self.ack is None:
                self.send_ack()
            self.bye(reason)
        elif self.ctx is not None:
            self.service.transactions.cancel(self.ctx)
            self.service.check_idle()

    def send_ack(self, body: pb.SipBody | None = None) -> None:
        if self.state != "answered" or self.dialog is None:
            return
        body = body or pb.SipBody()
        self.ack = self.dialog.create_ack(body_headers(body), body.body)
        self.service.transactions.send_stateless(self.ack, self.peer)

    def bye(self, reason: str) -> None:
        if self.dialog is not None:
            bye = self.dialog.create_request("BYE", [("User-Agent", USER_AGENT)])
            self.service.transactions.send_request(bye, self.peer, ignore)
        self.end(200, reason)

    def send_request(self, relayed: pb.LegRequest) -> None:
        if self.state != "answered" or self.dialog is None:
            return
        request_id = relayed.request_id
        headers = [(h.name, h.value) for h in relayed.headers]
        headers += [("User-Agent", USER_AGENT), *body_headers(relayed.body)]
        request = self.dialog.create_request(relayed.method, headers, relayed.body.body)
        answered = False

        def on_response(response: Response | None) -> None:
            nonlocal answered
            if response is not None and response.status < 200:
                return
            if answered:  # a 2xx retransmission of a re-INVITE: ACK again
                if self.ack is not None:
                    self.service.transactions.send_stateless(self.ack, self.peer)
                return
            answered = True
            if response is None:
                reply = pb.LegResponse(request_id=request_id, status=408, reason="Request Timeout")
            else:
                reply = pb.LegResponse(
                    request_id=request_id,
                    status=response.status,
                    reason=response.reason,
                    headers=[pb.Header(name=n, value=v) for n, v in relayed_headers(response)],
                    body=sip_body(response),
                )
            self.publish(Kind.RESPONSE, response=reply)

        self.service.transactions.send_request(request, self.peer, on_response)

    def respond(self, response: pb.LegResponse) -> None:
        stx = answer_relayed(self.service, self.from_callee, response, self.local.contact)
        if stx is not None and stx.request.method == "INVITE" and 200 <= response.status < 300:
            self.callee_invite = stx

    # ---- requests from the callee -----------------------------------------------------------

    def on_request(self, request: Request, stx: ServerTransaction | None) -> None:
        method = request.method
        if method == "ACK":
            if self.callee_invite is not None:
                self.callee_invite = None
                relayed = pb.LegRequest(method="ACK", body=sip_body(request))
                self.publish(Kind.REQUEST, request=relayed)
            return
        assert stx is not None
        error = self.dialog.on_request(request) if self.dialog is not None else 481
        if error is not None:
            self.service.respond(stx, error)
            return
        if method == "BYE":
            self.service.respond(stx, 200)
            if self.state != "ended":
                self.publish(Kind.ENDED, status=200, reason="callee hung up")
                self.end(200, "callee hung up")
            return
        if self.state != "answered":
            self.service.respond(stx, 491 if method in ("INVITE", "UPDATE") else 481)
            return
        relayed = relay_request(self.service, self.from_callee, stx, request)
        self.publish(Kind.REQUEST, request=relayed)

    def end(self, status: int, reason: str) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self.close_span(status, reason)
        self.service.leg_ended(self)

    def close_span(self, status: int, reason: str) -> None:
        if not self.span.is_recording():
            return
        self.span.set_attribute("sip.status", status)
        if status >= 400 and not self.cancelled:
            self.span.set_status(Status(StatusCode.ERROR, reason))
        self.span.end()
