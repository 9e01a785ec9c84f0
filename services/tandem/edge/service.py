"""The edge process, wired: its sockets, the transaction layer, the machines' executor, the
NATS side (leg commands and events, hangups, heartbeats, the live policy) and its API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from fastapi import FastAPI
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from tandem import bus, telemetry
from tandem.b2bua import Call, Leg
from tandem.b2bua import events as e
from tandem.config import Edge
from tandem.edge.admission import Admission
from tandem.edge.capture import Capture
from tandem.edge.executor import Executor
from tandem.edge.health import Probe, Prober
from tandem.edge.inbound import Inbound
from tandem.edge.media import Rtpengines
from tandem.edge.metrics import EdgeMetrics
from tandem.edge.registry import Registry, Runner
from tandem.edge.transactions import Transactions
from tandem.edge.transport import Peer, Transports
from tandem.http import AUTH, create_app
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Policy, Trunk
from tandem.policy.store import COMMIT_KEY, read_policy
from tandem.process import Context
from tandem.sip.uri import DEFAULT_PORT, split_host_port

log = logging.getLogger("tandem.edge")

HEARTBEAT_S = 2.0
EDGE_LOST_AFTER = 3  # heartbeats missed: the edge is gone, and its half of our calls with it
LAG_CHECK_S = 0.1
OVERLOAD_LAG_S = 0.3


class Service:
    """One edge: `tandem edge --id ID`."""

    def __init__(self, ctx: Context, edge: Edge) -> None:
        self.ctx = ctx
        self.edge_id = edge.id
        self.nc = ctx.nc
        self.metrics = EdgeMetrics(edge.id)
        host, port = split_host_port(edge.sip, DEFAULT_PORT)
        sent_by = split_host_port(edge.advertise or edge.sip, port)
        self.transports = Transports(host, port, self.receive, self.transport_failed)
        self.transactions = Transactions(sent_by, self.send)
        self.registry = Registry()
        self.rtpengines = Rtpengines(edge.id, ctx.config.media.addresses)
        self.capture = Capture(
            edge.id,
            ctx.config.capture,
            ctx.config.telemetry.mask_numbers,
            ctx.js,
            self.registry,
            self.trunk_of,
            sent_by,
        )
        self.executor = Executor(
            edge.id,
            ctx.nc,
            self.transactions,
            self.registry,
            self.metrics,
            telemetry.tracer("tandem.edge"),
            sent_by,
            self.spawn,
            self.rtpengines,
            ctx.config.telemetry.mask_numbers,
        )
        self.inbound = Inbound(
            edge.id, self.transports, self.transactions, self.registry, self.executor, self.metrics
        )
        self.executor.trunk_of = self._trunk_of
        self.prober = Prober(
            edge.id,
            self.transactions,
            self.executor.locals,
            self.metrics,
            ctx.nc,
            ctx.js,
            self.spawn,
        )
        self.trunks: dict[str, Trunk] = {}
        self.probes: dict[str, Probe] = {}
        self.started = False
        self.heartbeat_s = HEARTBEAT_S
        self.heard: dict[str, float] = {}  # edge id -> when its last heartbeat came (loop time)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subs: list[Subscription] = []
        self._loops: list[asyncio.Task[None]] = []
        self.app = self._build_app(ctx.token)

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        kv = await self.ctx.js.key_value(bus.CONFIG_BUCKET)
        try:
            seen = (await kv.get(COMMIT_KEY)).revision or 0
        except KeyNotFoundError:
            seen = 0
        self.apply_policy(await read_policy(kv) or self.ctx.config.policy)
        await self.rtpengines.start()
        self.transactions.start()
        await self.capture.start()
        await self.transports.start()
        subscriptions = (
            (bus.edge_cmd(self.edge_id), self.on_command),
            (bus.leg_event(self.edge_id, "*"), self.on_leg_event),
            (bus.call_hangup("*"), self.on_hangup),
            (bus.edge_heartbeat("*"), self.on_heartbeat),
        )
        for subject, handler in subscriptions:
            self._subs.append(await self.nc.subscribe(subject, cb=handler))
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
        return self.started and not self.inbound.draining and self.nc.is_connected

    async def drain(self) -> None:
        """New INVITEs get 503 from now on; return when the last call has ended."""
        self.inbound.draining = True
        await self._send_heartbeat()
        self.registry.check_idle()
        await self.registry.idle.wait()

    async def stop(self) -> None:
        for runner in set(self.registry.calls.values()):
            self.executor.feed(
                runner, e.HangupRequested("system", "edge stopping", "edge_stopping")
            )
        for runner in list(self.registry.legs.values()):
            self.executor.feed(runner, e.CancelRequested("edge stopping"))
        await self.executor.outbox.flush()  # the commands and events above leave
        for task in self._loops:
            task.cancel()
        for probe in self.probes.values():
            probe.stop()
        for sub in self._subs:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
            await self.executor.outbox.flush()  # the ends of anchored calls, after rtpengine's
        self.transactions.stop()
        await self.transports.stop()
        await self.capture.stop()
        await self.rtpengines.stop()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("edge task failed: %r", task.exception())

    # ---- the policy -----------------------------------------------------------------------

    def apply_policy(self, policy: Policy) -> None:
        """The trunks this edge serves, from the stored policy (live on every commit)."""
        served = {t.id: t for t in policy.trunks if t.edge == self.edge_id}
        self.trunks = served
        # a call this edge owns is anchored if its trunk or its target's anchors: any trunk
        self.rtpengines.wanted = any(t.media == "anchor" for t in policy.trunks)
        self.inbound.admission = Admission(served.values())
        for trunk_id in list(self.probes):
            probe = self.probes[trunk_id]
            trunk = served.get(trunk_id)
            if trunk is None or trunk != probe.trunk:
                probe.stop()
                del self.probes[trunk_id]
        for trunk in served.values():
            if trunk.id not in self.probes:
                probe = self.probes[trunk.id] = Probe(self.prober, trunk)
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

    def _trunk_of(self, host: str, port: int) -> str | None:
        trunk = self.inbound.admission.trunk(host, port)
        return trunk.id if trunk is not None else None

    # ---- SIP in -------------------------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer) -> None:
        when = time.time()
        self.inbound.receive(data, peer)
        self.capture.received(data, peer, when)

    def send(self, data: bytes, peer: Peer) -> None:
        """What the transaction layer sends: out through the sockets, and into capture."""
        self.transports.send(data, peer)
        self.capture.sent(data, peer)

    def trunk_of(self, peer: Peer) -> str:
        trunk = self.inbound.admission.trunk(peer.host, peer.port)
        return trunk.id if trunk is not None else ""

    def transport_failed(self, peer: Peer) -> None:
        self.transactions.transport_failed(peer)

    # ---- NATS in ------------------------------------------------------------------------------

    async def on_command(self, msg: Msg) -> None:
        reply = pb.CommandReply(ok=True)
        try:
            command = pb.LegCommand.FromString(msg.data)
            which = command.WhichOneof("command")
            if which == "create":
                reply = self._create_leg(command, msg.headers)
            elif which == "quality":
                self.executor.leg_quality(command)
            else:
                runner = self.registry.legs.get(command.leg_id)
                event = e.from_leg_command(command)
                if runner is None:
                    reply = pb.CommandReply(ok=False, error="no such leg")
                elif event is not None:
                    self.executor.feed(runner, event)
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
            error = f"trunk {command.create.target.trunk} not served here"
        elif trunk.transport == "tls":
            error = "TLS is not available on this edge yet"
        elif self.inbound.draining:
            error = "edge draining"
        else:
            self.executor.start_leg(command, trunk, telemetry.extract(headers))
            return pb.CommandReply(ok=True)
        return pb.CommandReply(ok=False, error=error)

    async def on_leg_event(self, msg: Msg) -> None:
        try:
            message = pb.LegEvent.FromString(msg.data)
            runner = self.registry.owned_legs.get(message.leg_id)
            event = e.from_leg_event(message)
            if runner is not None and event is not None:
                self.executor.feed(runner, event)
        except Exception:
            log.exception("edge %s: leg event failed", self.edge_id)

    async def on_hangup(self, msg: Msg) -> None:
        runner = self.registry.calls.get(msg.subject.split(".")[2])
        if runner is None:  # another edge's call: only the owner answers
            return
        try:
            hangup = pb.Hangup.FromString(msg.data)
            self.executor.feed(runner, e.HangupRequested("api", hangup.reason or "hangup by api"))
            reply = pb.CommandReply(ok=True)
        except Exception as exc:
            reply = pb.CommandReply(ok=False, error=repr(exc))
        if msg.reply:
            await msg.respond(reply.SerializeToString())

    # ---- other edges --------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._send_heartbeat()
            except Exception as exc:
                log.warning("heartbeat not sent: %r", exc)
            await asyncio.sleep(self.heartbeat_s)

    async def _send_heartbeat(self) -> None:
        calls = list(self.registry.calls)
        beat = pb.EdgeHeartbeat(
            edge=self.edge_id,
            time_unix_ms=bus.now_ms(),
            active_calls=len(calls),
            draining=self.inbound.draining,
            calls=calls,
        )
        await self.nc.publish(bus.edge_heartbeat(self.edge_id), beat.SerializeToString())

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
            for edge in lost:
                log.warning("edge %s lost: ending the calls and legs it shared with us", edge)
                del self.heard[edge]
            if lost:
                self._edges_lost(lost)

    def _edges_lost(self, lost: set[str]) -> None:
        for runner in set(self.registry.calls.values()):
            call = runner.machine
            assert isinstance(call, Call)
            if call.attempt is not None and call.attempt.target.edge in lost:
                edge = call.attempt.target.edge
                lost_edge = e.HangupRequested("edge_lost", f"edge {edge} lost", "edge_lost")
                self.executor.feed(runner, lost_edge)
        for runner in list(self.registry.legs.values()):
            leg = runner.machine
            assert isinstance(leg, Leg)
            if leg.owner_edge in lost:
                self.executor.feed(runner, e.CancelRequested(f"edge {leg.owner_edge} lost"))

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LAG_CHECK_S
            await asyncio.sleep(LAG_CHECK_S)
            self.inbound.overloaded = loop.time() - expected > OVERLOAD_LAG_S

    # ---- API -------------------------------------------------------------------------------------

    def _build_app(self, token: str | None) -> FastAPI:
        app = create_app(f"edge {self.edge_id}", ready=self.ready, token=token)

        @app.get("/v1/status", dependencies=AUTH, tags=["edge"])
        def status() -> dict[str, Any]:
            return self.status()

        return app

    def status(self) -> dict[str, Any]:
        mask = self.ctx.config.telemetry.mask_numbers
        return {
            "edge": self.edge_id,
            "draining": self.inbound.draining,
            "overloaded": self.inbound.overloaded,
            "listeners": self.transports.listeners if self.started else [],
            "trunks": [
                {
                    "id": trunk.id,
                    "peer": trunk.peer,
                    "transport": trunk.transport,
                    "enabled": trunk.enabled,
                    "up": self.probes[trunk.id].up if trunk.id in self.probes else None,
                    "health": self.probes[trunk.id].reason if trunk.id in self.probes else "",
                    "active_in": self.registry.active_in[trunk.id],
                    "max_concurrent_calls": trunk.max_concurrent_calls,
                }
                for trunk in self.trunks.values()
            ],
            "calls": [call_status(runner, mask) for runner in self.registry.calls.values()],
            "legs": len(self.registry.legs),
            "rtpengine": self.rtpengines.status() if self.rtpengines.wanted else [],
        }


def call_status(runner: Runner, mask: bool) -> dict[str, Any]:
    call = runner.machine
    assert isinstance(call, Call)
    attempt = call.attempt
    return {
        "call_id": call.id,
        "state": call.state.name.lower(),
        "ingress_trunk": call.trunk,
        "sip_call_id": runner.dialog[0],
        "called": telemetry.mask_number(call.called, mask),
        "calling": telemetry.mask_number(call.calling, mask),
        "attempt": attempt.number if attempt else 0,
        "leg_id": attempt.id if attempt else "",
        "started_unix_ms": call.started_ms,
        "answered_unix_ms": call.answered_ms,
    }
