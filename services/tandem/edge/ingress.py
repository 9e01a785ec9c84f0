"""The call-control state machine of a call that entered through this edge (the ingress leg).

The ingress edge owns the call: it asks the router once, walks the targets in order with
one egress leg per attempt (created over `tandem.edge.<edge>.cmd`, on whichever edge serves
the target trunk, this one included), decides failover, relays between the caller's dialog
and the leg's events, and publishes the call's events to JetStream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tandem import bus, telemetry
from tandem.edge.dialog import ALLOW, RETRY_AFTER_S, USER_AGENT, new_id, new_tag
from tandem.edge.transactions import ServerTransaction
from tandem.edge.transport import Peer
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Trunk
from tandem.sip import Request, Response
from tandem.sip.dialog import Dialog, DialogState
from tandem.telemetry import mask_number

if TYPE_CHECKING:
    from tandem.edge.service import Service

log = logging.getLogger("tandem.edge.call")

FORWARDED_IDENTITY = ("P-Asserted-Identity",)
FORWARDED_HISTORY = ("History-Info", "Diversion")
DEFAULT_FAILOVER_CODES = (408, 503, 504)
ROUTE_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 2.0
DEFAULT_FAILOVER_TIMER_S = 10.0
Kind = pb.LegEvent.Kind
M = TypeVar("M", bound=Message)


def now_ms() -> int:
    return int(time.time() * 1000)


def number_of(uri_text: str) -> str:
    """The user part of a sip/tel URI: the number, as received."""
    scheme, _, rest = uri_text.partition(":")
    if scheme.lower() == "tel":
        return rest.partition(";")[0]
    user, at, _ = rest.partition("@")
    return user.partition(";")[0] if at else ""


class Call:
    """One call this edge owns, from the caller's INVITE to its end."""

    def __init__(
        self, service: Service, invite: Request, stx: ServerTransaction, peer: Peer, trunk: Trunk
    ) -> None:
        self.service = service
        self.id = new_id()
        self.invite = invite
        self.stx = stx
        self.peer = peer
        self.trunk = trunk
        self.local = service.local(peer.transport)
        self.local_tag = new_tag()
        self.dialog: Dialog | None = None  # with the caller, from our first 1xx/2xx with a tag
        self.called = number_of(invite.uri) or number_of(str(invite.to.uri))
        from_ = invite.from_
        self.calling = number_of(str(from_.uri))
        pai = invite.headers.values("p-asserted-identity")
        if pai and (not self.calling or self.calling.lower() == "anonymous"):
            self.calling = number_of(pai[0].strip("<>").partition(">")[0])
        self.display = from_.display or ""
        self.state = "routing"  # routing, trying, early, answered, ended
        self.started_ms = now_ms()
        self.answered_ms = 0
        self.seq = 0
        self.targets: list[pb.RouteTarget] = []
        self.attempt = 0
        self.leg_id = ""
        self.leg_edge = ""
        self.leg_sip_call_id = ""
        self.leg_sub: Subscription | None = None
        self.failover_timer: asyncio.TimerHandle | None = None
        self.failures: list[tuple[int, str, bool]] = []  # status, reason, timed out
        self.from_caller: dict[str, ServerTransaction] = {}  # relayed requests, by request id
        tracer = service.tracer
        self.span = tracer.start_span(
            "call",
            kind=SpanKind.SERVER,
            attributes={
                "tandem.call_id": self.id,
                "tandem.edge": service.edge_id,
                "tandem.ingress_trunk": trunk.id,
                "sip.call_id": invite.call_id,
                "sip.called": mask_number(self.called, service.mask),
                "sip.calling": mask_number(self.calling, service.mask),
            },
        )
        self.leg_span = tracer.start_span(
            "ingress leg",
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.SERVER,
            attributes={"tandem.trunk": trunk.id, "sip.call_id": invite.call_id},
        )
        self.trace_id = format(self.span.get_span_context().trace_id, "032x")
        self.trace_headers = telemetry.inject({}, trace.set_span_in_context(self.span))

    # ---- events ---------------------------------------------------------------------------

    def emit(self, kind: str, **fields: object) -> None:
        """Publish a call event to JetStream (through the service's ordered outbox)."""
        self.seq += 1
        event = pb.CallEvent(
            call_id=self.id,
            kind=kind.upper(),
            seq=self.seq,
            time_unix_ms=now_ms(),
            edge=self.service.edge_id,
            ingress_trunk=self.trunk.id,
            trace_id=self.trace_id,
            **fields,  # type: ignore[arg-type]
        )
        headers = {**self.trace_headers, "Nats-Msg-Id": f"{self.id}.{self.seq}"}
        self.service.publish(
            bus.call_event(self.id, event.kind), event.SerializeToString(), headers
        )

    async def _request(
        self, subject: str, message: Message, reply_type: type[M], timeout_s: float
    ) -> M:
        """A request in the call's trace: its context is the call span's, injected once."""
        reply = await self.service.nc.request(
            subject, message.SerializeToString(), timeout=timeout_s, headers=self.trace_headers
        )
        return reply_type.FromString(reply.data)

    def command(self, *, leg_id: str = "", edge: str = "", **command: Any) -> None:
        """A command to the current leg (or the one named), on whichever edge runs it."""
        message = pb.LegCommand(leg_id=leg_id or self.leg_id, call_id=self.id, **command)
        subject = bus.edge_cmd(edge or self.leg_edge)
        self.service.publish(subject, message.SerializeToString(), self.trace_headers)

    def _leg_fields(self, target: pb.RouteTarget) -> dict[str, object]:
        return {
            "leg_id": self.leg_id,
            "trunk": target.trunk,
            "sip_call_id": self.leg_sip_call_id,
            "called": target.called,
            "calling": target.calling,
            "attempt": self.attempt,
        }

    # ---- routing and attempts -------------------------------------------------------------

    async def run(self) -> None:
        self.emit(
            "started",
            sip_call_id=self.invite.call_id,
            called=self.called,
            calling=self.calling,
        )
        request = pb.RouteRequest(
            call_id=self.id, ingress_trunk=self.trunk.id, called=self.called, calling=self.calling
        )
        try:
            decision = await self._request(
                bus.ROUTE_DECIDE, request, pb.RouteDecision, ROUTE_TIMEOUT_S
            )
        except Exception as exc:  # no router answering: the caller may retry elsewhere
            log.warning("route request for call %s failed: %r", self.id, exc)
            self.reject(503, "Router Unavailable", retry_after=True, reason="no route decision")
            return
        if self.state == "ended":
            return
        self.span.set_attribute("tandem.route", decision.route)
        if decision.result != pb.RouteDecision.ROUTED:
            status = decision.status or (
                403 if decision.result == pb.RouteDecision.NO_ROUTE else 503
            )
            self.reject(status, None, reason=decision.reason or "no route", diagnostic=True)
            return
        self.targets = list(decision.targets)
        self.emit(
            "routed",
            usage=decision.usage,
            route=decision.route,
            normalized_called=decision.normalized_called,
            called=self.called,
            calling=self.calling,
        )
        self.state = "trying"
        await self.next_attempt()

    async def next_attempt(self) -> None:
        """Create the leg for the next target, or give the caller the final answer."""
        while self.state == "trying":
            if self.attempt >= len(self.targets):
                self.all_failed()
                return
            target = self.targets[self.attempt]
            self.attempt += 1
            if await self._create_leg(target):
                return

    async def _create_leg(self, target: pb.RouteTarget) -> bool:
        """Start one attempt; False when the leg could not even be created (try the next).

        Everything the leg's events rely on (subscription, attempt event, failover timer) is
        in place before the create command leaves: its first event may beat the reply.
        """
        self._drop_leg()
        self.leg_id = leg_id = new_id()
        self.leg_edge = target.edge
        self.leg_sip_call_id = new_id()
        self.leg_sub = await self.service.nc.subscribe(
            bus.leg_event(leg_id), cb=self.on_leg_message
        )
        self.emit("leg_attempt", **self._leg_fields(target))
        self.failover_timer = asyncio.get_running_loop().call_later(
            target.failover_timer_s or DEFAULT_FAILOVER_TIMER_S, self._failover_timer
        )
        headers = [
            (name, value)
            for names, wanted in (
                (FORWARDED_IDENTITY, target.forward_pai),
                (FORWARDED_HISTORY, target.forward_call_history),
            )
            if wanted
            for name in names
            for value in self.invite.headers.get_all(name)
        ]
        mf = self.invite.max_forwards
        create = pb.LegCreate(
            target=target,
            calling_display="" if target.suppress_caller_id else self.display,
            headers=[pb.Header(name=n, value=v) for n, v in headers],
            body=sip_body(self.invite),
            max_forwards=(70 if mf is None else mf) - 1,
            attempt=self.attempt,
            sip_call_id=self.leg_sip_call_id,
            owner_edge=self.service.edge_id,
        )
        command = pb.LegCommand(leg_id=leg_id, call_id=self.id, create=create)
        try:
            reply = await self._request(
                bus.edge_cmd(target.edge), command, pb.CommandReply, COMMAND_TIMEOUT_S
            )
            error = "" if reply.ok else reply.error or "refused"
        except Exception as exc:
            error = f"edge {target.edge} unreachable: {type(exc).__name__}"
        if self.leg_id != leg_id or self.state not in ("trying", "early", "answered"):
            if not error and self.state == "ended":  # cancelled while the leg was created
                self.command(cancel=pb.LegCancel(), leg_id=leg_id, edge=target.edge)
            return True
        if error and self.state == "trying":
            self._failed(target, 503, error, "transport_error", timed_out=False)
            return False
        return True

    def _failover_timer(self) -> None:
        self.failover_timer = None
        if self.state != "trying":
            return
        target = self.targets[self.attempt - 1]
        self.command(cancel=pb.LegCancel(reason="failover timer"))
        self._failed(
            target, 408, "no provisional response in time", "failover_timer", timed_out=True
        )
        self.service.spawn(self.next_attempt())

    def _failed(
        self, target: pb.RouteTarget, status: int, reason: str, failure: str, timed_out: bool
    ) -> None:
        self.failures.append((status, reason, timed_out))
        self.emit(
            "leg_failed", status=status, reason=f"{failure}: {reason}", **self._leg_fields(target)
        )
        if self.attempt < len(self.targets):  # a failover only if a target is left to try
            self.service.metrics.failover(failure)
        self.leg_span.add_event(
            "attempt failed", {"sip.status": status, "tandem.failover_reason": failure}
        )
        self._drop_leg()

    def _drop_leg(self) -> None:
        if self.failover_timer is not None:
            self.failover_timer.cancel()
            self.failover_timer = None
        if self.leg_sub is not None:
            self.service.spawn(self.leg_sub.unsubscribe())
            self.leg_sub = None

    def all_failed(self) -> None:
        """Every target failed: the last real failure, or 503 when every attempt timed out."""
        answered = [(s, r) for s, r, timed_out in self.failures if not timed_out and s >= 300]
        if answered:
            status, reason = answered[-1]
            self.reject(status, None, reason=reason)
        else:
            self.reject(503, None, retry_after=True, reason="every target failed or timed out")

    # ---- leg events -------------------------------------------------------------------------

    async def on_leg_message(self, msg: Msg) -> None:
        try:
            event = pb.LegEvent.FromString(msg.data)
            if event.leg_id == self.leg_id:
                self.on_leg_event(event)
        except Exception:
            log.exception("call %s: leg event failed", self.id)

    def on_leg_event(self, event: pb.LegEvent) -> None:
        kind = event.kind
        target = self.targets[self.attempt - 1] if self.attempt else pb.RouteTarget()
        if kind == Kind.PROGRESS:
            if self.state not in ("trying", "early"):
                return
            if self.failover_timer is not None:  # the caller is ringing: no failover any more
                self.failover_timer.cancel()
                self.failover_timer = None
            self.state = "early"
            self._relay_response(event.status, event.reason, event.body)
            self.emit(
                "leg_progress", status=event.status, reason=event.reason, **self._leg_fields(target)
            )
        elif kind == Kind.ANSWERED:
            if self.state not in ("trying", "early"):
                self.command(bye=pb.LegBye(reason="call over"))
                return
            if self.failover_timer is not None:
                self.failover_timer.cancel()
                self.failover_timer = None
            self.state = "answered"
            self.answered_ms = now_ms()
            self.service.transactions.no_ack[self.stx.key] = self._no_ack
            self._relay_response(event.status, event.reason, event.body)
            fields = self._leg_fields(target)
            self.emit("leg_answered", status=event.status, reason=event.reason, **fields)
            self.emit("answered", status=event.status, reason=event.reason, **fields)
            self.service.call_answered(self)
        elif kind == Kind.FAILED:
            self._on_failed(event, target)
        elif kind == Kind.REQUEST:
            self._from_callee(event.request)
        elif kind == Kind.RESPONSE:
            self._response_from_callee(event.response)
        elif kind == Kind.ENDED and self.state != "ended":
            if self.state == "answered":
                self._bye_caller()
            else:
                self.reject(480, None, reason=event.reason or "callee ended")
                return
            self.end("callee", 200, event.reason or "callee hung up")

    def _on_failed(self, event: pb.LegEvent, target: pb.RouteTarget) -> None:
        if self.state == "trying":
            codes = target.failover_response_codes or DEFAULT_FAILOVER_CODES
            failure = event.failure or "response"
            if failure != "response" or event.status in codes:
                timed_out = failure in ("timeout", "failover_timer")
                self._failed(target, event.status, event.reason, failure, timed_out)
                self.service.spawn(self.next_attempt())
                return
        if self.state not in ("trying", "early"):
            return
        # a final the caller must hear: after 18x, or a code that is no failover code
        self.emit(
            "leg_failed", status=event.status, reason=event.reason, **self._leg_fields(target)
        )
        self._drop_leg()
        self.reject(event.status, event.reason, reason=event.reason)

    # ---- answers to the caller --------------------------------------------------------------

    def _relay_response(self, status: int, reason: str, body: pb.SipBody) -> None:
        extra: list[tuple[str, str]] = [("Contact", self.local.contact)]
        if status >= 200:
            extra.append(("Allow", ALLOW))
        extra += body_headers(body)
        response = self.service.respond(
            self.stx, status, reason or None, extra, body.body, to_tag=self.local_tag
        )
        if response is None or status >= 300:
            return
        if self.dialog is None:
            self.dialog = Dialog.as_uas(self.invite, response)
        elif status >= 200:
            self.dialog.state = DialogState.CONFIRMED

    def reject(
        self,
        status: int,
        phrase: str | None,
        *,
        reason: str,
        retry_after: bool = False,
        diagnostic: bool = False,
    ) -> None:
        """End the call before answer with a final response to the caller."""
        if self.state == "ended":
            return
        headers: list[tuple[str, str]] = []
        if retry_after:
            headers.append(("Retry-After", str(RETRY_AFTER_S)))
        if diagnostic or status in (403, 503):
            text = reason.replace('"', "'")
            headers.append(("Reason", f'SIP;cause={status};text="{text}"'))
            headers.append(("Warning", f'399 {self.local.host} "{text}"'))
        self.service.respond(self.stx, status, phrase, headers, to_tag=self.local_tag)
        self.end("system", status, reason)

    def _no_ack(self) -> None:
        """The caller never ACKed our 2xx: the call is over on both sides."""
        if self.state == "answered":
            self.command(bye=pb.LegBye(reason="no ACK"))
            self._bye_caller()
            self.end("system", 408, "no ACK from the caller")

    def _bye_caller(self) -> None:
        if self.dialog is not None:
            bye = self.dialog.create_request("BYE", [("User-Agent", USER_AGENT)])
            self.service.transactions.send_request(bye, self.peer, ignore)

    # ---- requests from the caller -------------------------------------------------------------

    def on_cancel(self) -> None:
        """CANCEL from the caller (the layer has answered it 200): 487, CANCEL the pending leg."""
        if self.state not in ("routing", "trying", "early"):
            return
        if self.leg_id:
            self.command(cancel=pb.LegCancel(reason="caller cancelled"))
        self._drop_leg()
        self.service.respond(self.stx, 487, None, (), to_tag=self.local_tag)
        self.end("caller", 487, "caller cancelled")

    def on_request(self, request: Request, stx: ServerTransaction | None) -> None:
        """An in-dialog request from the caller (stx is None for ACK)."""
        method = request.method
        if method == "ACK":
            if self.state == "answered":
                ack = pb.LegAck(body=sip_body(request))
                self.command(ack=ack)
            return
        assert stx is not None
        error = self.dialog.on_request(request) if self.dialog is not None else None
        if error is not None:
            self.service.respond(stx, error)
            return
        if method == "BYE":
            self.service.respond(stx, 200)
            if self.state == "answered":
                self.command(bye=pb.LegBye(reason="caller hung up"))
                self.end("caller", 200, "caller hung up")
            elif self.state != "ended":  # BYE before our 2xx: the caller gave up early
                self.on_cancel()
            return
        if self.state != "answered":
            self.service.respond(stx, 491 if method in ("INVITE", "UPDATE") else 481)
            return
        self.command(request=relay_request(self.service, self.from_caller, stx, request))

    def _response_from_callee(self, response: pb.LegResponse) -> None:
        answer_relayed(self.service, self.from_caller, response, self.local.contact)

    def _from_callee(self, request: pb.LegRequest) -> None:
        """A request the callee sent in its dialog: the same request in the caller's dialog."""
        if self.state != "answered" or self.dialog is None:
            return
        body = request.body
        if request.method == "ACK":
            ack = self.dialog.create_ack(body_headers(body), body.body)
            self.service.transactions.send_stateless(ack, self.peer)
            return
        headers = [(h.name, h.value) for h in request.headers]
        headers += [("User-Agent", USER_AGENT), *body_headers(body)]
        out = self.dialog.create_request(request.method, headers, body.body)
        request_id = request.request_id

        def relay(response: Response | None) -> None:
            if response is None:
                reply = pb.LegResponse(request_id=request_id, status=408, reason="Request Timeout")
            elif response.status == 100:
                return
            else:
                reply = pb.LegResponse(
                    request_id=request_id,
                    status=response.status,
                    reason=response.reason,
                    headers=[pb.Header(name=n, value=v) for n, v in relayed_headers(response)],
                    body=sip_body(response),
                )
            self.command(response=reply)

        self.service.transactions.send_request(out, self.peer, relay)

    # ---- control and the end -------------------------------------------------------------------

    def hangup(self, ended_by: str, reason: str) -> None:
        """End the call from outside SIP (the API, or the edge stopping)."""
        if self.state == "answered":
            self.command(bye=pb.LegBye(reason=reason))
            self._bye_caller()
            self.end(ended_by, 200, reason)
        elif self.state != "ended":
            if self.leg_id:
                self.command(cancel=pb.LegCancel(reason=reason))
            self._drop_leg()
            self.service.respond(
                self.stx,
                487,
                None,
                [("Reason", f'SIP;cause=487;text="{reason}"')],
                to_tag=self.local_tag,
            )
            self.end(ended_by, 487, reason)

    def end(self, ended_by: str, status: int, reason: str) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self._drop_leg()
        trunk = self.targets[self.attempt - 1].trunk if self.leg_id else ""
        self.emit(
            "ended",
            status=status,
            reason=reason,
            ended_by=ended_by,
            leg_id=self.leg_id,
            trunk=trunk,
            attempt=self.attempt,
        )
        self.span.set_attribute("sip.status", status)
        self.leg_span.set_attribute("sip.status", status)
        if status >= 400:
            self.span.set_status(Status(StatusCode.ERROR, reason))
        self.leg_span.end()
        self.span.end()
        self.service.call_ended(self, status)


# Headers that mean something end to end in an in-dialog request or its response; all else
# (Via, Contact, Route, tags, Call-ID) belongs to one side's dialog and stays there.
END_TO_END = frozenset(("content-disposition", "event", "info-package", "reason", "recv-info"))


def relayed_headers(message: Request | Response) -> list[tuple[str, str]]:
    return [(name, value) for name, value in message.headers if name.lower() in END_TO_END]


def sip_body(message: Request | Response) -> pb.SipBody:
    if not message.body:
        return pb.SipBody()
    content_type = message.headers.get("content-type") or "application/sdp"
    return pb.SipBody(content_type=content_type, body=message.body)


def body_headers(body: pb.SipBody) -> list[tuple[str, str]]:
    return [("Content-Type", body.content_type or "application/sdp")] if body.body else []


def relay_request(
    service: Service,
    pending: dict[str, ServerTransaction],
    stx: ServerTransaction,
    request: Request,
) -> pb.LegRequest:
    """An in-dialog request for the other leg; its transaction waits in `pending` for the
    answer (answer_relayed). A re-INVITE gets 100 Trying at once: the far end may be slow."""
    if request.method == "INVITE":
        service.respond(stx, 100)
    request_id = new_id()
    pending[request_id] = stx
    return pb.LegRequest(
        request_id=request_id,
        method=request.method,
        headers=[pb.Header(name=n, value=v) for n, v in relayed_headers(request)],
        body=sip_body(request),
    )


def answer_relayed(
    service: Service,
    pending: dict[str, ServerTransaction],
    response: pb.LegResponse,
    contact: str,
) -> ServerTransaction | None:
    """Answer a request relayed to the other leg with the response that came back from it;
    the transaction answered, if it is still pending (a final response ends it)."""
    stx = pending.get(response.request_id)
    if stx is None:
        return None
    if response.status >= 200:
        del pending[response.request_id]
    headers = [(h.name, h.value) for h in response.headers] + body_headers(response.body)
    if stx.request.method == "INVITE" and 200 <= response.status < 300:
        headers.append(("Contact", contact))  # a target refresh: our side's contact
    service.respond(stx, response.status, response.reason or None, headers, response.body.body)
    return stx


def ignore(_: Response | None) -> None:
    pass
