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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from nats.aio.client import Client
from nats.errors import NoRespondersError
from opentelemetry import context as otel_context
from opentelemetry.trace import Tracer

from tandem import bus
from tandem.b2bua import Call, Leg, ProtocolError
from tandem.b2bua import actions as a
from tandem.b2bua import events as e
from tandem.b2bua.local import Local
from tandem.b2bua.profile import Profile
from tandem.b2bua.relay import respond
from tandem.edge.limits import Limits
from tandem.edge.media import Rtpengines
from tandem.edge.metrics import EdgeMetrics
from tandem.edge.peers import Peers, domain, is_address
from tandem.edge.registrar import Registrar
from tandem.edge.registry import Registry, Runner
from tandem.edge.resolver import DEFAULT_PORTS, ResolveError
from tandem.edge.tracing import CallTrace, LegTrace
from tandem.edge.transactions import (
    TRANSPORT_ERROR,
    ClientTransaction,
    ServerTransaction,
    Transactions,
)
from tandem.edge.transport import Peer
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Trunk
from tandem.sip import Request, Response
from tandem.sip.uri import URI

log = logging.getLogger("tandem.edge.executor")

ROUTE_TIMEOUT_S = 2.0
CREATE_TIMEOUT_S = 2.0
# failures of a leg that say the trunk's configuration or its network is wrong: logged
TRUNK_FAILURES = ("dns", "auth", "transport_error")
# a create refused by an edge that cannot take the leg, though another of its trunk's may
EDGE_REFUSED = "edge"
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
        *,
        peers: Peers,
        tls_port: int | None = None,
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
        self.peers = peers
        host, port = sent_by
        tls_port = tls_port or DEFAULT_PORTS["tls"]
        self.locals = {
            "udp": Local(host, port, "udp"),
            "tcp": Local(host, port, "tcp"),
            "tls": Local(host, tls_port, "tls"),
            "sips": Local(host, tls_port, "tls", "sips"),  # a dialog whose request was sips:
        }
        # the trunk an address belongs to (by its sources): the edge's admission, set later
        self.trunk_of: Callable[[str, int], str | None] = lambda host, port: None
        self.trunks: dict[str, Trunk] = {}  # the trunks this edge serves, by id: set later
        # why the last connection to a peer failed (the transports'), for a leg's reason
        self.transport_failure: Callable[[Peer], str | None] = lambda peer: None
        self.registrar: Registrar | None = None  # the bindings of registrar trunks: set later
        self.awaiting_quality: dict[str, LegTrace] = {}  # ended anchored legs, by leg id
        # the edges to create a leg on, in the order to try them, of those serving its
        # trunk (the live ones first, spread): the edge's heartbeats, set later
        self.edge_order: Callable[[Sequence[str]], list[str]] = list
        self.limits: Limits | None = None  # the trunks' max_concurrent_calls: set later

    # ---- new machines ------------------------------------------------------------------

    def start_call(self, invite: Request, txn: ServerTransaction, peer: Peer, trunk: Trunk) -> None:
        secure = peer.transport == "tls" and invite.uri[:5].lower() == "sips:"
        local = self.locals["sips" if secure else peer.transport]
        call = Call(self.edge, profile_of(trunk, self.peers), local)
        trace = CallTrace(self.tracer, self.edge, call.id, trunk.id, invite.call_id, self.mask)
        call.trace_id = trace.trace_id
        runner = Runner(call, peer, trunk.id, trace, (invite.call_id, call.local_tag))
        self.registry.add_call(runner, txn)
        self.metrics.calls_active.inc()
        self.feed(runner, e.InviteReceived(invite, txn))
        trace.numbers(call.called, call.calling)

    def start_leg(
        self,
        command: pb.LegCommand,
        trunk: Trunk,
        parent: otel_context.Context,
        limited: bool = False,
    ) -> None:
        """A leg towards `trunk`: its INVITE goes to the peer's address, or to the targets
        its name resolves to (the leg asks, Resolve, and is told, Resolved). `limited`: it
        holds a place under the trunk's max_concurrent_calls, freed when it ends."""
        host, port = domain(trunk)
        targets = self.peers.fixed(trunk)
        local = self.locals[trunk.transport]
        binding = self.registrar.binding(trunk.id) if self.registrar and trunk.registrar else None
        if binding is not None:  # a PBX registered to us: where its REGISTER came from
            uri = binding.contact.uri
            host, port, targets = uri.host, uri.port or 0, [binding.peer]
            local = self.locals[binding.peer.transport]
        profile = profile_of(trunk, self.peers)
        leg = Leg(
            self.edge,
            command,
            (host, port or targets[0].port) if targets else (host, port),
            local,
            profile,
            targets=[t.target for t in targets or ()],
            resolve=targets is None,
        )
        trace = LegTrace(self.tracer, parent, self.edge, command, leg.sip_call_id, self.mask)
        peer = targets[0] if targets else Peer(trunk.transport, host, port)
        runner = Runner(leg, peer, trunk.id, trace, (leg.sip_call_id, leg.local_tag))
        runner.limited = limited
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
                runner.txns.append(txn.key)

    def _send_invite(self, runner: Runner, action: a.SendInvite) -> None:
        cseq = action.request.cseq.number

        def on_response(response: Response | None, failure: str) -> None:
            why = self.transport_failure(peer) if failure == TRANSPORT_ERROR else None
            self.feed(runner, e.InviteResponse(response, failure, cseq, why or ""))

        if action.to is not None:  # the dialog begins where the INVITE goes
            runner.peer = Peer(*action.to)
        peer = runner.peer
        runner.invite = self.transactions.send_request(action.request, peer, on_response)
        runner.txns.append(runner.invite.key)

    def _resolve(self, runner: Runner, action: a.Resolve) -> None:
        self.spawn(self._resolving(runner))

    async def _resolving(self, runner: Runner) -> None:
        trunk = self.trunks.get(runner.trunk)
        event: e.Resolved
        try:
            if trunk is None:
                raise ResolveError(runner.peer.host, "the trunk is no longer served here")
            event = e.Resolved(tuple(t.target for t in await self.peers.resolve(trunk)))
        except ResolveError as exc:
            event = e.Resolved((), f"{exc.name}: {exc.detail}")
        self.feed(runner, event)

    def _cancel_invite(self, runner: Runner, action: a.CancelInvite) -> None:
        if isinstance(runner.invite, ClientTransaction):
            self.transactions.cancel(runner.invite)
        self.registry.check_idle()

    def _send_request(self, runner: Runner, action: a.SendRequest) -> None:
        request_id = action.request_id

        def on_response(response: Response | None, failure: str) -> None:
            if request_id:
                self.feed(runner, e.InDialogResponse(request_id, response))

        def send(peer: Peer) -> None:
            self.transactions.send_request(action.request, peer, on_response)

        self._to_next_hop(runner, action.target, send)

    def _send_ack(self, runner: Runner, action: a.SendAck) -> None:
        def send(peer: Peer) -> None:
            self.transactions.send_stateless(action.request, peer)

        self._to_next_hop(runner, action.target, send)

    def _to_next_hop(self, runner: Runner, target: str, send: Callable[[Peer], None]) -> None:
        """Send now, or once the host the next hop names is resolved (RFC 3263 4.3)."""
        hop = self.next_hop(runner, target)
        if isinstance(hop, Peer):
            send(hop)
        else:
            self.spawn(self._resolve_hop(runner, *hop, send))

    async def _resolve_hop(
        self, runner: Runner, host: str, port: int, transport: str, send: Callable[[Peer], None]
    ) -> None:
        trunk = self.trunks.get(runner.trunk)
        peer = runner.peer
        if trunk is not None:
            try:
                found = await self.peers.resolve_uri(trunk, host, port, transport)
            except ResolveError as exc:
                log.info("next hop %s of trunk %s: %s; sending to %s", host, trunk.id, exc, peer)
            else:
                if self.trunk_of(found.host, found.port) == runner.trunk:
                    peer = found
        send(peer)

    def next_hop(self, runner: Runner, target: str) -> Peer | tuple[str, int, str]:
        """Where a request in a dialog goes: the dialog's next hop (the far end's Contact or
        first Route) when it is an address of the same trunk; else where the dialog began
        (a Contact elsewhere must not turn tandem into anyone's reflector). A next hop that
        names a host is returned as (host, port, transport), to resolve and check."""
        if not target:
            return runner.peer
        try:
            uri = URI.parse(target)
        except ValueError:
            return runner.peer
        transport = (uri.param("transport") or runner.peer.transport).lower()
        if uri.scheme == "sips":
            transport = "tls"
        if transport not in DEFAULT_PORTS:
            return runner.peer
        peer = Peer(transport, uri.host, uri.port or DEFAULT_PORTS[transport])
        if peer == runner.peer:
            return peer
        if self.trunk_of(uri.host, peer.port) == runner.trunk:
            return peer
        if is_address(uri.host.strip("[]")):
            return runner.peer  # an address of no trunk, or of another one
        return uri.host, uri.port or 0, transport

    # ---- the bus -------------------------------------------------------------------------

    def _ask_route(self, runner: Runner, action: a.AskRoute) -> None:
        self.registry.routing.setdefault(runner, time.monotonic())
        self.spawn(self._route(runner, action.request))

    async def _route(self, runner: Runner, request: pb.RouteRequest) -> None:
        if not await self._within_limit(runner):
            return
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
        self.registry.routing.pop(runner, None)
        self.feed(runner, event)

    async def _within_limit(self, runner: Runner) -> bool:
        """A new call takes a place under its trunk's max_concurrent_calls, across edges,
        before it is routed; without one it is refused (False: nothing more to do)."""
        trunk = self.trunks.get(runner.trunk)
        limit = trunk.max_concurrent_calls if trunk is not None else None
        if not limit or runner.limited or self.limits is None:
            return True
        placed = await self.limits.reserve(runner.trunk, limit)
        if self.registry.calls.get(runner.machine.id) is not runner:  # over meanwhile
            if placed:
                self.limits.release(runner.trunk)
            return False
        if placed:
            runner.limited = True
            return True
        self.registry.routing.pop(runner, None)
        self.metrics.reject("trunk_limit")
        self.feed(runner, e.AtLimit(f"trunk {runner.trunk} is at its limit of {limit} calls"))
        return False

    def _create_leg(self, runner: Runner, action: a.CreateLeg) -> None:
        self.registry.owned_legs[action.command.leg_id] = runner
        self.spawn(self._create(runner, action.edge, action.command))

    async def _create(self, runner: Runner, first: str, command: pb.LegCommand) -> None:
        """Ask an edge of the trunk to run the leg: the next one when an edge is gone (no
        responder) or cannot take it ("edge": draining, not serving it yet, no binding)."""
        edges = command.create.target.edges
        error, failure = "", ""
        for edge in self.edge_order(edges) if len(edges) > 1 else [first]:
            self.registry.leg_edges[command.leg_id] = edge
            try:
                reply = await self.nc.request(
                    bus.edge_cmd(edge),
                    command.SerializeToString(),
                    timeout=CREATE_TIMEOUT_S,
                    headers=runner.headers,
                )
            except NoRespondersError:
                error, failure = f"edge {edge} unreachable: no responders", ""
                continue
            except Exception as exc:  # it may have the leg: no second INVITE elsewhere
                error, failure = f"edge {edge} unreachable: {type(exc).__name__}", ""
                break
            answer = pb.CommandReply.FromString(reply.data)
            if answer.ok:
                error, failure = "", ""
                break
            error, failure = answer.error or "refused", answer.failure
            if failure != EDGE_REFUSED:
                break
        if failure == EDGE_REFUSED:
            failure = ""
        self.feed(runner, e.LegCreateAnswered(command.leg_id, error, failure))

    def _command_leg(self, runner: Runner, action: a.CommandLeg) -> None:
        data = action.command.SerializeToString()
        edge = self.registry.leg_edges.get(action.command.leg_id, action.edge)
        self.outbox.publish(bus.edge_cmd(edge), data, runner.headers)

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
            return
        if action.failure in TRUNK_FAILURES:
            self._trunk_failed(runner, action)
        if isinstance(trace, LegTrace) and not trace.ended:  # waits for its figures
            leg_id = runner.machine.id
            self.awaiting_quality[leg_id] = trace
            loop = asyncio.get_running_loop()
            loop.call_later(QUALITY_WAIT_S, self._quality_late, leg_id)

    @staticmethod
    def _trunk_failed(runner: Runner, action: a.Finished) -> None:
        peer = runner.peer
        where = (
            peer.host if action.failure == "dns" else f"{peer.transport}:{peer.host}:{peer.port}"
        )
        log.warning(
            "leg %s to trunk %s failed (%s): %s (%s)",
            runner.machine.id,
            runner.trunk,
            action.failure,
            action.reason,
            where,
        )

    def _quality_late(self, leg_id: str) -> None:
        trace = self.awaiting_quality.pop(leg_id, None)
        if trace is not None:
            trace.end()

    def _release(self, runner: Runner, action: a.Release) -> None:
        for handle in runner.timers.values():
            handle.cancel()
        runner.timers.clear()
        self.transactions.forget(runner.txns)
        runner.txns.clear()
        self.registry.remove(runner)
        if runner.limited and self.limits is not None:
            runner.limited = False
            self.limits.release(runner.trunk)
        if isinstance(runner.machine, Call):
            self.metrics.calls_active.dec()
        else:
            self.metrics.legs_active.dec()


def profile_of(trunk: Trunk, peers: Peers) -> Profile:
    """What the machines need of a trunk's settings (its credentials read now)."""
    return Profile(
        trunk=trunk.id,
        trusted=trunk.trusted,
        forward_call_history=trunk.forward_call_history,
        session_expires_s=trunk.session_expires_s,
        min_se_s=trunk.min_se_s,
        max_call_s=trunk.max_call_s,
        refer=trunk.refer,
        response_map=tuple(sorted(trunk.response_map.items())),
        auth=trunk.auth is not None,
        credentials=peers.credentials(trunk),
        media=trunk.media,
        srtp=trunk.srtp,
        ice=trunk.ice,
        media_timeout_s=trunk.media_timeout_s,
        media_fallback=trunk.media_fallback,
    )


ACTIONS: dict[type, Callable[[Executor, Runner, Any], None]] = {
    a.Respond: Executor._respond,
    a.SendInvite: Executor._send_invite,
    a.Resolve: Executor._resolve,
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
