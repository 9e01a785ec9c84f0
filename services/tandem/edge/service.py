"""The edge process: SIP sockets for its trunks, admission, the dispatch of every message to
its call or leg, the NATS side (leg commands, hangups, heartbeat, live policy), and its API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from typing import Any

from fastapi import FastAPI
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from tandem import bus, telemetry
from tandem.config import Edge
from tandem.edge.admission import Admission, RejectLimiter
from tandem.edge.dialog import (
    ACCEPT,
    ALLOW,
    RETRY_AFTER_S,
    SUPPORTED,
    USER_AGENT,
    Local,
    new_tag,
)
from tandem.edge.egress import Leg
from tandem.edge.health import Probe
from tandem.edge.ingress import Call, now_ms
from tandem.edge.metrics import EdgeMetrics
from tandem.edge.stateless import ANSWER_HEADERS, answer_unparsable
from tandem.edge.transactions import ServerTransaction, Transactions
from tandem.edge.transport import Peer, Transports
from tandem.http import AUTH, create_app
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Policy, Trunk
from tandem.policy.store import COMMIT_KEY, read_policy
from tandem.process import Context
from tandem.sip import ParseError, Request, Response, make_response, parse, validate_request
from tandem.sip.transaction import CancelReceived, RequestReceived, TransactionKey
from tandem.sip.uri import DEFAULT_PORT, split_host_port

log = logging.getLogger("tandem.edge")

METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO")
BODY_TYPES = ("application/sdp", "multipart/mixed", "application/dtmf-relay", "application/dtmf")
HEARTBEAT_S = 2.0
EDGE_LOST_AFTER = 3  # heartbeats missed: the edge is gone, and its half of our calls with it
# Overload: more calls in setup than this, or an event loop running this late, and new
# INVITEs get 503 + Retry-After at once rather than time out in a queue.
MAX_CALLS_IN_SETUP = 3000
LAG_CHECK_S = 0.1
OVERLOAD_LAG_S = 0.3


class Service:
    """One edge: `tandem edge --id ID`."""

    def __init__(self, ctx: Context, edge: Edge) -> None:
        self.ctx = ctx
        self.edge = edge
        self.edge_id = edge.id
        self.nc = ctx.nc
        self.js = ctx.js
        self.mask = ctx.config.telemetry.mask_numbers
        self.tracer = telemetry.tracer("tandem.edge")
        self.metrics = EdgeMetrics(edge.id)
        host, port = split_host_port(edge.sip, DEFAULT_PORT)
        self.transports = Transports(host, port, self.receive, self.transport_failed)
        self.sent_by = split_host_port(edge.advertise or edge.sip, port)
        self.transactions = Transactions(self.sent_by, self.transports.send)
        self.trunks: dict[str, Trunk] = {}
        self.admission = Admission(())
        self.probes: dict[str, Probe] = {}
        self.calls: dict[str, Call] = {}
        self.legs: dict[str, Leg] = {}
        self.dialogs: dict[tuple[str, str], Call | Leg] = {}
        self.ringing: dict[TransactionKey, Call] = {}  # calls by INVITE transaction, for CANCEL
        self.active_in: Counter[str] = Counter()
        self.in_setup = 0
        self.rejects = RejectLimiter()
        self.draining = False
        self.overloaded = False
        self.started = False
        self._locals: dict[str, Local] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subs: list[Subscription] = []
        self._loops: list[asyncio.Task[None]] = []
        self._outbox: list[tuple[str, bytes, dict[str, str]]] = []
        self._flushing = False
        self.heartbeat_s = HEARTBEAT_S
        self.heard: dict[str, float] = {}  # edge id -> when its last heartbeat came (loop time)
        self._idle = asyncio.Event()  # set when no call or live leg is left (for drain)
        self.app = self._build_app(ctx.token)

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        kv = await self.js.key_value(bus.CONFIG_BUCKET)
        try:
            seen = (await kv.get(COMMIT_KEY)).revision or 0
        except KeyNotFoundError:
            seen = 0
        self.apply_policy(await read_policy(kv) or self.ctx.config.policy)
        self.transactions.start()
        await self.transports.start()
        self._subs.append(await self.nc.subscribe(bus.edge_cmd(self.edge_id), cb=self.on_command))
        self._subs.append(await self.nc.subscribe(bus.call_hangup("*"), cb=self.on_hangup))
        self._subs.append(await self.nc.subscribe(bus.edge_heartbeat("*"), cb=self.on_heartbeat))
        for probe in self.probes.values():
            probe.start()
        self._loops += [
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._watch_edges()),
            asyncio.create_task(self._watch_policy(kv, seen)),
            asyncio.create_task(self._watch_lag()),
        ]
        self.started = True
        log.info("edge %s listening on %s", self.edge_id, ", ".join(self.transports.listeners))

    def ready(self) -> bool:
        return self.started and not self.draining and self.nc.is_connected

    async def drain(self) -> None:
        """New INVITEs get 503 from now on; return when the last call has ended."""
        self.draining = True
        await self._send_heartbeat()
        self._idle.clear()
        self.check_idle()
        await self._idle.wait()

    async def stop(self) -> None:
        for call in list(self.calls.values()):
            call.hangup("system", "edge stopping")
        for leg in list(self.legs.values()):
            leg.cancel("edge stopping")
        await asyncio.sleep(0)  # let the commands and BYEs above leave
        for task in self._loops:
            task.cancel()
        for probe in self.probes.values():
            probe.stop()
        for sub in self._subs:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        self.transactions.stop()
        await self.transports.stop()

    def apply_policy(self, policy: Policy) -> None:
        """The trunks this edge serves, from the stored policy (live on every commit)."""
        served = {t.id: t for t in policy.trunks if t.edge == self.edge_id}
        self.trunks = served
        self.admission = Admission(served.values())
        for trunk_id in list(self.probes):
            probe = self.probes[trunk_id]
            trunk = served.get(trunk_id)
            if trunk is None or trunk != probe.trunk:
                probe.stop()
                del self.probes[trunk_id]
        for trunk in served.values():
            if trunk.id not in self.probes:
                probe = self.probes[trunk.id] = Probe(self, trunk)
                if self.started:
                    probe.start()

    async def _watch_policy(self, kv: KeyValue, seen: int) -> None:
        watcher = await kv.watch(COMMIT_KEY)
        async for entry in watcher:
            if entry is None or (entry.revision or 0) <= seen:
                continue  # the commit in force at start (or the end-of-history marker)
            seen = entry.revision or 0
            try:
                policy = await read_policy(kv)
                if policy is not None:
                    self.apply_policy(policy)
                    log.info("policy reloaded: %d trunks served", len(self.trunks))
            except Exception:
                log.exception("policy reload failed; keeping the previous one")

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._send_heartbeat()
            except Exception as exc:
                log.warning("heartbeat not sent: %r", exc)
            await asyncio.sleep(self.heartbeat_s)

    async def on_heartbeat(self, msg: Msg) -> None:
        self.heard[msg.subject.split(".")[2]] = asyncio.get_running_loop().time()

    async def _watch_edges(self) -> None:
        """End our half of the calls whose other edge stopped heartbeating.

        Only while our own heartbeats come back: an edge cut off from NATS hears nobody,
        and must not take that for every other edge being gone.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_s)
            silent_s = self.heartbeat_s * EDGE_LOST_AFTER
            now = loop.time()
            if now - self.heard.get(self.edge_id, 0.0) > silent_s:
                continue
            lost = {edge for edge, heard in self.heard.items() if now - heard > silent_s}
            if not lost:
                continue
            for edge in lost:
                log.warning("edge %s lost: ending the calls and legs it shared with us", edge)
                del self.heard[edge]
            for call in [c for c in self.calls.values() if c.leg_edge in lost]:
                call.hangup("edge_lost", f"edge {call.leg_edge} lost")
            for leg in [g for g in self.legs.values() if g.owner_edge in lost]:
                leg.cancel(f"edge {leg.owner_edge} lost")

    async def _send_heartbeat(self) -> None:
        beat = pb.EdgeHeartbeat(
            edge=self.edge_id,
            time_unix_ms=now_ms(),
            active_calls=len(self.calls),
            draining=self.draining,
            calls=list(self.calls),
        )
        await self.nc.publish(bus.edge_heartbeat(self.edge_id), beat.SerializeToString())

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LAG_CHECK_S
            await asyncio.sleep(LAG_CHECK_S)
            self.overloaded = loop.time() - expected > OVERLOAD_LAG_S

    # ---- helpers for calls and legs ---------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("edge task failed: %r", task.exception())

    def local(self, transport: str) -> Local:
        local = self._locals.get(transport)
        if local is None:
            local = self._locals[transport] = Local(*self.sent_by, transport)
        return local

    def respond(
        self,
        stx: ServerTransaction,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        to_tag: str | None = None,
    ) -> Response | None:
        """Answer a request through its transaction; None if it was answered already.

        A request outside a dialog gets a To tag on all but 100 (RFC 3261 8.2.6.2): the
        call's own, or a fresh one for an answer that creates no dialog.
        """
        if stx.final:
            return None
        response = make_response(
            stx.request,
            status,
            reason,
            to_tag=to_tag or new_tag(),
            headers=[("Server", USER_AGENT), *headers],
            body=body,
        )
        self.transactions.respond(stx, response)
        self.metrics.response("out", status)
        return response

    def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Queue a message for NATS: queued messages leave in order, in one task per loop turn.

        Leg commands (but `create`), leg events and call events all go this way, unanswered:
        a task and a reply per message would cost more than the call's SIP. Call events
        reach the TANDEM_CALLS stream the same, deduplicated by their Nats-Msg-Id.
        """
        self._outbox.append((subject, data, headers))
        if not self._flushing:
            self._flushing = True
            self.spawn(self._flush_outbox())

    async def _flush_outbox(self) -> None:
        try:
            while self._outbox:
                outbox, self._outbox = self._outbox, []
                for subject, data, headers in outbox:
                    await self.nc.publish(subject, data, headers=headers)
        except Exception as exc:
            log.warning("messages to NATS lost: %r", exc)
            self._outbox.clear()
        finally:
            self._flushing = False

    def call_answered(self, call: Call) -> None:
        self.in_setup -= 1
        self.ringing.pop(call.stx.key, None)

    def call_ended(self, call: Call, status: int) -> None:
        if self.calls.pop(call.id, None) is None:
            return
        self.dialogs.pop((call.invite.call_id, call.local_tag), None)
        self.ringing.pop(call.stx.key, None)
        self.active_in[call.trunk.id] -= 1
        if not call.answered_ms:
            self.in_setup -= 1
        self.metrics.calls_active.dec()
        self.metrics.call_ended(status)
        self.check_idle()

    def leg_ended(self, leg: Leg) -> None:
        if self.legs.pop(leg.id, None) is not None:
            self.dialogs.pop((leg.sip_call_id, leg.local_tag), None)
            self.metrics.legs_active.dec()
            self.check_idle()

    def check_idle(self) -> None:
        """Drain is over when no call is left and no leg but those winding down (cancelled)."""
        if not self.calls and all(leg.cancelled for leg in self.legs.values()):
            self._idle.set()

    def transport_failed(self, peer: Peer) -> None:
        for leg in self.legs.values():
            if leg.peer == peer:
                leg.failure = "transport_error"
        self.transactions.transport_failed(peer)

    # ---- SIP in ---------------------------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer) -> None:
        """Every datagram and framed stream message; nothing a peer sends may escape from here."""
        try:
            trunk = self.admission.trunk(peer.host, peer.port)
            if trunk is None:
                self._unknown_source(data, peer)
                return
            if data[:4] == b"SIP/" and data[8:11].isdigit():
                self.metrics.response("in", int(data[8:11]))
            for event in self.transactions.receive(data, peer):
                if isinstance(event, RequestReceived):
                    self._request(event, peer, trunk)
                elif isinstance(event, CancelReceived):
                    call = self.ringing.get(event.key)
                    if call is not None:
                        call.on_cancel()
                else:
                    self._rejected(event.error, data, peer)
        except Exception:
            log.exception("edge %s: message from %s:%s failed", self.edge_id, peer.host, peer.port)

    def _rejected(self, error: ParseError, data: bytes, peer: Peer) -> None:
        """A message the parser refused: a response is dropped; a request gets its status.

        The transaction layer answers when the request's Via, From, To, Call-ID and CSeq
        parsed; otherwise (a bad start line, a malformed Via) the answer is built here from
        the raw lines, as a stateless server would.
        """
        self.metrics.malformed("request" if error.status else "response")
        partial = error.partial
        if error.status is None or (
            partial is not None and all(h in partial.headers for h in ANSWER_HEADERS)
        ):
            return
        answer = answer_unparsable(data, error.status, error.headers)
        if answer is not None:
            data, port = answer
            self.transports.send(data, peer if port is None else peer._replace(port=port))
            self.metrics.response("out", error.status)

    def _unknown_source(self, data: bytes, peer: Peer) -> None:
        """403 to a request from no trunk's source, at a bounded rate; responses are dropped."""
        self.metrics.reject("unknown_source")
        if data[:4] == b"SIP/" or not self.rejects.allow(peer.host, time.monotonic()):
            return
        try:
            request = parse(data)
        except ParseError:
            return
        if not isinstance(request, Request) or request.method == "ACK":
            return
        response = make_response(
            request,
            403,
            to_tag=new_tag(),
            headers=[("Server", USER_AGENT), ("Warning", '399 tandem "unknown source"')],
        )
        self.transports.send(bytes(response), peer)
        self.metrics.response("out", 403)

    def _request(self, event: RequestReceived, peer: Peer, trunk: Trunk) -> None:
        request = event.request
        method = request.method
        self.metrics.request(method)
        if method == "ACK":  # of a 2xx (the layer absorbs the others): the dialog's
            owner = self.dialogs.get((request.call_id, request.to.tag or ""))
            if owner is not None:
                owner.on_request(request, None)
            return
        stx = self.transactions.server(event, peer)
        error = validate_request(request, methods=METHODS, accept=BODY_TYPES)
        if error is not None:
            assert error.status is not None
            self.respond(stx, error.status, None, error.headers)
            return
        to_tag = request.to.tag
        if to_tag:
            owner = self.dialogs.get((request.call_id, to_tag))
            if owner is None:
                self.respond(stx, 481)
            else:
                owner.on_request(request, stx)
        elif method == "INVITE":
            self._new_call(request, stx, peer, trunk)
        elif method == "OPTIONS":
            self.respond(
                stx,
                200,
                None,
                [("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", SUPPORTED)],
            )
        else:
            self.respond(stx, 481)

    def _new_call(self, invite: Request, stx: ServerTransaction, peer: Peer, trunk: Trunk) -> None:
        refusal = None
        if self.draining:
            refusal = "draining"
        elif self.overloaded or self.in_setup >= MAX_CALLS_IN_SETUP:
            refusal = "overload"
        elif not trunk.enabled:
            refusal = "trunk_disabled"
        elif trunk.max_concurrent_calls and self.active_in[trunk.id] >= trunk.max_concurrent_calls:
            refusal = "trunk_limit"
        if refusal is not None:
            self.metrics.reject(refusal)
            self.respond(
                stx,
                503,
                None,
                [("Retry-After", str(RETRY_AFTER_S)), ("Warning", f'399 tandem "{refusal}"')],
            )
            return
        self.respond(stx, 100)
        call = Call(self, invite, stx, peer, trunk)
        self.calls[call.id] = call
        self.dialogs[(invite.call_id, call.local_tag)] = call
        self.ringing[stx.key] = call
        self.active_in[trunk.id] += 1
        self.in_setup += 1
        self.metrics.calls_active.inc()
        self.spawn(call.run())

    # ---- NATS in -------------------------------------------------------------------------------

    async def on_command(self, msg: Msg) -> None:
        reply = pb.CommandReply(ok=True)
        try:
            command = pb.LegCommand.FromString(msg.data)
            which = command.WhichOneof("command")
            if which == "create":
                reply = self._create_leg(command, msg.headers)
            else:
                leg = self.legs.get(command.leg_id)
                if leg is None:
                    reply = pb.CommandReply(ok=False, error="no such leg")
                elif which is not None:
                    leg.on_command(which, command)
        except Exception as exc:
            log.exception("edge %s: leg command failed", self.edge_id)
            reply = pb.CommandReply(ok=False, error=repr(exc))
        if msg.reply:
            await msg.respond(reply.SerializeToString())

    def _create_leg(
        self, command: pb.LegCommand, headers: dict[str, str] | None
    ) -> pb.CommandReply:
        trunk = self.trunks.get(command.create.target.trunk)
        if trunk is None:
            return pb.CommandReply(
                ok=False, error=f"trunk {command.create.target.trunk} not served here"
            )
        if trunk.transport == "tls":
            return pb.CommandReply(ok=False, error="TLS is not available on this edge yet")
        if self.draining:
            return pb.CommandReply(ok=False, error="edge draining")
        leg = Leg(self, command, trunk, telemetry.extract(headers))
        self.legs[leg.id] = leg
        self.dialogs[(leg.sip_call_id, leg.local_tag)] = leg
        self.metrics.legs_active.inc()
        leg.start()
        return pb.CommandReply(ok=True)

    async def on_hangup(self, msg: Msg) -> None:
        call_id = msg.subject.split(".")[2]
        call = self.calls.get(call_id)
        if call is None:  # another edge's call: only the owner answers
            return
        try:
            hangup = pb.Hangup.FromString(msg.data)
            call.hangup("api", hangup.reason or "hangup by api")
            reply = pb.CommandReply(ok=True)
        except Exception as exc:
            reply = pb.CommandReply(ok=False, error=repr(exc))
        if msg.reply:
            await msg.respond(reply.SerializeToString())

    # ---- API -------------------------------------------------------------------------------------

    def _build_app(self, token: str | None) -> FastAPI:
        app = create_app(f"edge {self.edge_id}", ready=self.ready, token=token)

        @app.get("/v1/status", dependencies=AUTH, tags=["edge"])
        def status() -> dict[str, Any]:
            return self.status()

        return app

    def status(self) -> dict[str, Any]:
        return {
            "edge": self.edge_id,
            "draining": self.draining,
            "overloaded": self.overloaded,
            "listeners": self.transports.listeners if self.started else [],
            "trunks": [
                {
                    "id": trunk.id,
                    "peer": trunk.peer,
                    "transport": trunk.transport,
                    "enabled": trunk.enabled,
                    "up": self.probes[trunk.id].up if trunk.id in self.probes else None,
                    "health": self.probes[trunk.id].reason if trunk.id in self.probes else "",
                    "active_in": self.active_in[trunk.id],
                    "max_concurrent_calls": trunk.max_concurrent_calls,
                }
                for trunk in self.trunks.values()
            ],
            "calls": [
                {
                    "call_id": call.id,
                    "state": call.state,
                    "ingress_trunk": call.trunk.id,
                    "sip_call_id": call.invite.call_id,
                    "called": telemetry.mask_number(call.called, self.mask),
                    "calling": telemetry.mask_number(call.calling, self.mask),
                    "attempt": call.attempt,
                    "leg_id": call.leg_id,
                    "started_unix_ms": call.started_ms,
                    "answered_unix_ms": call.answered_ms,
                }
                for call in self.calls.values()
            ],
            "legs": len(self.legs),
        }
