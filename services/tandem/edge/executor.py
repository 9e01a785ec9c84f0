"""The executor: what the call and leg machines ask for, done (SIP sends through the
transaction layer, NATS messages, timers), and what comes back fed to them as events.

Each action type has one handler in `ACTIONS` (aioquic's way with frame types). A machine's
`ProtocolError` is logged, counted and answered here; an error in one call's action never
reaches another call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from nats.aio.client import Client
from opentelemetry import context as otel_context
from opentelemetry.trace import Tracer

from tandem import bus
from tandem.b2bua import Call, Leg, ProtocolError
from tandem.b2bua import actions as a
from tandem.b2bua import events as e
from tandem.b2bua.local import Local
from tandem.b2bua.profile import Profile
from tandem.b2bua.relay import respond
from tandem.edge.media import Rtpengines
from tandem.edge.metrics import EdgeMetrics
from tandem.edge.registry import Registry, Runner
from tandem.edge.tracing import CallTrace, LegTrace
from tandem.edge.transactions import ClientTransaction, ServerTransaction, Transactions
from tandem.edge.transport import Peer
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Trunk
from tandem.sip import Request, Response
from tandem.sip.uri import DEFAULT_PORT, URI

log = logging.getLogger("tandem.edge.executor")

ROUTE_TIMEOUT_S = 2.0
CREATE_TIMEOUT_S = 2.0
QUALITY_WAIT_S = 5.0  # an anchored leg's span waits this long for its figures, at most
Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class Executor:
    """Runs the machines of one edge."""

    def __init__(
        self,
        edge: str,
        nc: Client,
        transactions: Transactions,
        registry: Registry,
        metrics: EdgeMetrics,
        tracer: Tracer,
        sent_by: tuple[str, int],
        spawn: Spawn,
        rtpengines: Rtpengines,
        mask: bool = False,
    ) -> None:
        self.edge = edge
        self.rtpengines = rtpengines
        self.nc = nc
        self.outbox = bus.Outbox(nc)
        self.transactions = transactions
        self.registry = registry
        self.metrics = metrics
        self.tracer = tracer
        self.spawn = spawn
        self.mask = mask
        self.locals = {t: Local(*sent_by, t) for t in ("udp", "tcp")}
        # the trunk an address belongs to (by its sources): the edge's admission, set later
        self.trunk_of: Callable[[str, int], str | None] = lambda host, port: None
        self.awaiting_quality: dict[str, LegTrace] = {}  # ended anchored legs, by leg id

    # ---- new machines ------------------------------------------------------------------

    def start_call(self, invite: Request, txn: ServerTransaction, peer: Peer, trunk: Trunk) -> None:
        call = Call(self.edge, profile_of(trunk), self.locals[peer.transport])
        trace = CallTrace(self.tracer, self.edge, call.id, trunk.id, invite.call_id, self.mask)
        call.trace_id = trace.trace_id
        runner = Runner(call, peer, trunk.id, trace, (invite.call_id, call.local_tag))
        self.registry.add_call(runner, txn)
        self.metrics.calls_active.inc()
        self.feed(runner, e.InviteReceived(invite, txn))
        trace.numbers(call.called, call.calling)

    def start_leg(self, command: pb.LegCommand, trunk: Trunk, parent: otel_context.Context) -> None:
        peer = Peer(trunk.transport, *trunk.peer_address)
        leg = Leg(self.edge, command, peer.addr, self.locals[trunk.transport], profile_of(trunk))
        trace = LegTrace(self.tracer, parent, self.edge, command, leg.sip_call_id, self.mask)
        runner = Runner(leg, peer, trunk.id, trace, (leg.sip_call_id, leg.local_tag))
        self.registry.add_leg(runner)
        self.metrics.legs_active.inc()
        self.feed(runner, e.Start())

    # ---- one step ----------------------------------------------------------------------

    def feed(self, runner: Runner, event: e.Event) -> None:
        """One event through its machine, and every action it asks for."""
        try:
            actions = runner.machine.handle(event, time.time())
        except ProtocolError as exc:
            self._protocol_error(exc, event)
            return
        for action in actions:
            try:
                ACTIONS[type(action)](self, runner, action)
            except Exception:  # the rest of this step still runs: a call is never half-done
                log.exception("%s %s: %s failed", runner.machine.KIND, runner.machine.id, action)

    def _protocol_error(self, exc: ProtocolError, event: e.Event) -> None:
        log.warning("%s", exc)
        self.metrics.protocol_error(exc.machine, exc.state.name, type(event).__name__)
        txn = event.txn if isinstance(event, e.InDialogRequest) else None
        if isinstance(txn, ServerTransaction) and not txn.final:
            self.transactions.respond(txn, respond(txn.request, exc.status))
            self.metrics.response("out", exc.status)

    def _timer(self, runner: Runner, name: str) -> None:
        runner.timers.pop(name, None)
        self.feed(runner, e.TimerFired(name))

    # ---- SIP -----------------------------------------------------------------------------

    def _respond(self, runner: Runner, action: a.Respond) -> None:
        txn = action.txn
        assert isinstance(txn, ServerTransaction)
        if txn.final:
            return
        status = action.response.status
        self.transactions.respond(txn, action.response)
        self.metrics.response("out", status)
        if txn is runner.invite and status >= 200:
            self.registry.setup_over(runner)
            if status < 300:  # timer L: a 2xx the caller never ACKs ends the call
                self.transactions.no_ack[txn.key] = lambda: self.feed(runner, e.AckTimedOut())

    def _send_invite(self, runner: Runner, action: a.SendInvite) -> None:
        def on_response(response: Response | None, failure: str) -> None:
            self.feed(runner, e.InviteResponse(response, failure))

        runner.invite = self.transactions.send_request(action.request, runner.peer, on_response)

    def _cancel_invite(self, runner: Runner, action: a.CancelInvite) -> None:
        if isinstance(runner.invite, ClientTransaction):
            self.transactions.cancel(runner.invite)
        self.registry.check_idle()

    def _send_request(self, runner: Runner, action: a.SendRequest) -> None:
        request_id = action.request_id

        def on_response(response: Response | None, failure: str) -> None:
            if request_id:
                self.feed(runner, e.InDialogResponse(request_id, response))

        peer = self.next_hop(runner, action.target)
        self.transactions.send_request(action.request, peer, on_response)

    def _send_ack(self, runner: Runner, action: a.SendAck) -> None:
        self.transactions.send_stateless(action.request, self.next_hop(runner, action.target))

    def next_hop(self, runner: Runner, target: str) -> Peer:
        """Where a request in a dialog goes: the dialog's next hop (the far end's Contact or
        first Route) when it is an address of the same trunk; else where the dialog began
        (a Contact elsewhere must not turn tandem into anyone's reflector)."""
        if not target:
            return runner.peer
        try:
            uri = URI.parse(target)
        except ValueError:
            return runner.peer
        transport = (uri.param("transport") or runner.peer.transport).lower()
        if uri.scheme == "sips":
            transport = "tls"
        peer = Peer(transport, uri.host, uri.port or DEFAULT_PORT)
        if peer == runner.peer or transport not in ("udp", "tcp", "tls"):
            return runner.peer if transport not in ("udp", "tcp", "tls") else peer
        return peer if self.trunk_of(uri.host, peer.port) == runner.trunk else runner.peer

    # ---- the bus -------------------------------------------------------------------------

    def _ask_route(self, runner: Runner, action: a.AskRoute) -> None:
        self.spawn(self._route(runner, action.request))

    async def _route(self, runner: Runner, request: pb.RouteRequest) -> None:
        event: e.RouteDecided | e.RouteFailed
        try:
            reply = await self.nc.request(
                bus.ROUTE_DECIDE,
                request.SerializeToString(),
                timeout=ROUTE_TIMEOUT_S,
                headers=runner.headers,
            )
            event = e.RouteDecided(pb.RouteDecision.FromString(reply.data))
        except Exception as exc:  # no router answering: the caller may retry elsewhere
            log.warning("route request for call %s failed: %r", request.call_id, exc)
            event = e.RouteFailed(repr(exc))
        self.feed(runner, event)

    def _create_leg(self, runner: Runner, action: a.CreateLeg) -> None:
        self.registry.owned_legs[action.command.leg_id] = runner
        self.spawn(self._create(runner, action.edge, action.command))

    async def _create(self, runner: Runner, edge: str, command: pb.LegCommand) -> None:
        try:
            reply = await self.nc.request(
                bus.edge_cmd(edge),
                command.SerializeToString(),
                timeout=CREATE_TIMEOUT_S,
                headers=runner.headers,
            )
            answer = pb.CommandReply.FromString(reply.data)
            error = "" if answer.ok else answer.error or "refused"
        except Exception as exc:
            error = f"edge {edge} unreachable: {type(exc).__name__}"
        self.feed(runner, e.LegCreateAnswered(command.leg_id, error))

    def _command_leg(self, runner: Runner, action: a.CommandLeg) -> None:
        data = action.command.SerializeToString()
        self.outbox.publish(bus.edge_cmd(action.edge), data, runner.headers)

    def _drop_leg(self, runner: Runner, action: a.DropLeg) -> None:
        self.registry.owned_legs.pop(action.leg_id, None)

    def _call_ids(self, runner: Runner, action: a.CallIds) -> None:
        self.registry.call_ids(runner, action.ids)

    def _find_dialog(self, runner: Runner, action: a.FindDialog) -> None:
        """Where the dialog a Replaces names leads, if it is one of this edge's: the far end
        to INVITE in its place, and the Replaces header that INVITE carries (RFC 3891)."""
        found = self.registry.dialogs.get((action.call_id, action.our_tag))
        target, replaces = None, ""
        call = found.machine if found is not None else None
        if isinstance(call, Leg):  # the referrer was the callee: its caller is replaced
            owner = self.registry.calls.get(call.call_id)
            call = owner.machine if owner is not None else None
            caller = owner.trunk if owner is not None else ""
            if isinstance(call, Call) and call.invite is not None and caller:
                invite = call.invite
                target = pb.RouteTarget(
                    trunk=caller, edge=self.edge, called=call.calling, calling=call.called
                )
                replaces = f"{invite.call_id};to-tag={invite.from_.tag};from-tag={call.local_tag}"
        elif isinstance(call, Call) and call.attempt is not None and call.attempt.remote_tag:
            attempt = call.attempt  # the referrer was the caller: its callee is replaced
            target = pb.RouteTarget()
            target.CopyFrom(attempt.target)
            replaces = (
                f"{attempt.sip_call_id};to-tag={attempt.remote_tag};from-tag={attempt.local_tag}"
            )
        self.spawn(self._feed_later(runner, e.DialogFound(target, replaces)))

    async def _feed_later(self, runner: Runner, event: e.Event) -> None:
        self.feed(runner, event)

    # ---- anchored media: rtpengine ---------------------------------------------------------

    def _media_rewrite(self, runner: Runner, action: a.MediaOffer | a.MediaAnswer) -> None:
        failed = e.MediaRefused("rtpengine request failed", unreachable=True)
        self.spawn(self._media(runner, self.rtpengines.rewrite(action), failed))

    def _media_report(self, runner: Runner, action: a.MediaQuery | a.MediaDelete) -> None:
        failed = e.MediaReported(final=isinstance(action, a.MediaDelete), unreachable=True)
        self.spawn(self._media(runner, self.rtpengines.report(action), failed))

    async def _media(self, runner: Runner, reply: Awaitable[e.Event], failed: e.Event) -> None:
        """rtpengine's reply to the machine; whatever goes wrong, it gets one (it waits)."""
        try:
            event = await reply
        except Exception:
            log.exception("call %s: rtpengine request failed", runner.machine.id)
            event = failed
        if isinstance(event, e.MediaRefused):
            kind = "unreachable" if event.unreachable else "refused"
            log.warning("call %s: rtpengine %s: %s", runner.machine.id, kind, event.reason)
            self.metrics.media_failure(kind)
        self.feed(runner, event)

    def leg_quality(self, command: pb.LegCommand) -> None:
        """An anchored leg's figures, from its call's owner once rtpengine gave them: on
        its span, which its end left open for them."""
        trace = self.awaiting_quality.pop(command.leg_id, None)
        runner = self.registry.legs.get(command.leg_id)
        if trace is None and runner is not None and isinstance(runner.trace, LegTrace):
            trace = runner.trace  # still winding down: its end will close the span
        if trace is not None:
            trace.quality(command.quality)

    def _publish(self, runner: Runner, action: a.Publish) -> None:
        message = action.message
        if isinstance(message, pb.CallEvent):
            assert isinstance(runner.trace, CallTrace)
            runner.trace.event(message)
            if message.kind == pb.CallEvent.ANSWERED:
                self.metrics.media_call(message.media)
            subject = bus.call_event(message.call_id, message.kind)
            headers = {**runner.headers, "Nats-Msg-Id": f"{message.call_id}.{message.seq}"}
        else:
            assert isinstance(runner.trace, LegTrace) and isinstance(runner.machine, Leg)
            runner.trace.event(message)
            subject = bus.leg_event(runner.machine.owner_edge, message.leg_id)
            headers = runner.headers
        self.outbox.publish(subject, message.SerializeToString(), headers)

    # ---- time and life -------------------------------------------------------------------

    def _start_timer(self, runner: Runner, action: a.StartTimer) -> None:
        old = runner.timers.get(action.name)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        runner.timers[action.name] = loop.call_later(
            action.delay_s, self._timer, runner, action.name
        )

    def _stop_timer(self, runner: Runner, action: a.StopTimer) -> None:
        handle = runner.timers.pop(action.name, None)
        if handle is not None:
            handle.cancel()

    def _failover(self, runner: Runner, action: a.Failover) -> None:
        self.metrics.failover(action.failure)

    def _finished(self, runner: Runner, action: a.Finished) -> None:
        trace = runner.trace
        trace.finish(action)
        if isinstance(runner.machine, Call):
            self.metrics.call_ended(action.status)
        elif isinstance(trace, LegTrace) and not trace.ended:  # waits for its figures
            leg_id = runner.machine.id
            self.awaiting_quality[leg_id] = trace
            loop = asyncio.get_running_loop()
            loop.call_later(QUALITY_WAIT_S, self._quality_late, leg_id)

    def _quality_late(self, leg_id: str) -> None:
        trace = self.awaiting_quality.pop(leg_id, None)
        if trace is not None:
            trace.end()

    def _release(self, runner: Runner, action: a.Release) -> None:
        for handle in runner.timers.values():
            handle.cancel()
        runner.timers.clear()
        self.registry.remove(runner)
        if isinstance(runner.machine, Call):
            self.metrics.calls_active.dec()
        else:
            self.metrics.legs_active.dec()


def profile_of(trunk: Trunk) -> Profile:
    """What the machines need of a trunk's settings."""
    return Profile(
        trunk=trunk.id,
        trusted=trunk.trusted,
        forward_call_history=trunk.forward_call_history,
        session_expires_s=trunk.session_expires_s,
        min_se_s=trunk.min_se_s,
        max_call_s=trunk.max_call_s,
        refer=trunk.refer,
        response_map=tuple(sorted(trunk.response_map.items())),
        media=trunk.media,
        srtp=trunk.srtp,
        ice=trunk.ice,
        media_timeout_s=trunk.media_timeout_s,
        media_fallback=trunk.media_fallback,
    )


ACTIONS: dict[type, Callable[[Executor, Runner, Any], None]] = {
    a.Respond: Executor._respond,
    a.SendInvite: Executor._send_invite,
    a.CancelInvite: Executor._cancel_invite,
    a.SendRequest: Executor._send_request,
    a.SendAck: Executor._send_ack,
    a.AskRoute: Executor._ask_route,
    a.CreateLeg: Executor._create_leg,
    a.CommandLeg: Executor._command_leg,
    a.DropLeg: Executor._drop_leg,
    a.CallIds: Executor._call_ids,
    a.FindDialog: Executor._find_dialog,
    a.Publish: Executor._publish,
    a.MediaOffer: Executor._media_rewrite,
    a.MediaAnswer: Executor._media_rewrite,
    a.MediaQuery: Executor._media_report,
    a.MediaDelete: Executor._media_report,
    a.StartTimer: Executor._start_timer,
    a.StopTimer: Executor._stop_timer,
    a.Failover: Executor._failover,
    a.Finished: Executor._finished,
    a.Release: Executor._release,
}
