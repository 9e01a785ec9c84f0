"""The edge process, wired: its sockets, the transaction layer, the machines' executor, the
NATS side (leg commands and events, hangups, heartbeats, the live policy) and its API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from fastapi import FastAPI
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tandem import bus, telemetry
from tandem.b2bua import Call, Leg
from tandem.b2bua import events as e
from tandem.config import DEFAULT_TLS_PORT, Config, Edge
from tandem.edge.admission import Admission
from tandem.edge.capture import Capture
from tandem.edge.executor import EDGE_REFUSED, Executor
from tandem.edge.health import Probe, Prober
from tandem.edge.inbound import Inbound
from tandem.edge.limits import Limits
from tandem.edge.media import Rtpengines
from tandem.edge.metrics import EdgeMetrics
from tandem.edge.peers import Peers
from tandem.edge.register import Registering, aor_user
from tandem.edge.registrar import Registrar
from tandem.edge.registry import Registry, Runner
from tandem.edge.resolver import Resolver
from tandem.edge.transactions import Transactions
from tandem.edge.transport import Peer, Transports
from tandem.http import AUTH, create_app
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Policy, Trunk
from tandem.policy.store import TRUNK_KEYS, Follower
from tandem.process import Context
from tandem.sip.digest import DigestServer
from tandem.sip.uri import DEFAULT_PORT, split_host_port
from tandem.tls import TlsContexts

log = logging.getLogger("tandem.edge")

HEARTBEAT_S = 2.0
EDGE_LOST_AFTER = 3  # heartbeats missed: the edge is gone, and its half of our calls with it
LAG_CHECK_S = 0.1
DIGEST_SECRET_ENV = "TANDEM_DIGEST_SECRET"
DIGEST_REALM = "tandem"  # the realm of our challenges when the trunk's auth names none


class Service:
    """One edge: `tandem edge --id ID`."""

    def __init__(self, ctx: Context, edge: Edge) -> None:
        self.ctx = ctx
        self.edge_id = edge.id
        self.nc = ctx.nc
        self.metrics = EdgeMetrics(edge.id)
        host, port = split_host_port(edge.sip, DEFAULT_PORT)
        # a worker sharing its address names its own port, where what follows comes back
        sent_by = split_host_port(edge.advertise or edge.sip, port)
        if edge.own_port is not None:
            sent_by = (sent_by[0], edge.own_port)
        tls_listen = edge.sip_tls_address
        tls_port = tls_listen[1] if tls_listen else DEFAULT_TLS_PORT
        self.transports = Transports(
            host,
            port,
            self.receive,
            self.transport_failed,
            tls=TlsContexts.from_config(edge.tls),
            tls_listen=tls_listen,
            probed=self._probed,
            own_port=edge.own_port,
        )
        self.transactions = Transactions(
            sent_by, self.send, (sent_by[0], tls_port), shares_address=edge.own_port is not None
        )
        self.peers = Peers(Resolver.from_config(ctx.config.dns))
        self.nonce_key = nonce_key(ctx.config, ctx.token)
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
            peers=self.peers,
            tls_port=tls_port,
        )
        self.executor.transport_failure = self.transports.last_failure
        self.inbound = Inbound(
            edge.id, self.transports, self.transactions, self.registry, self.executor, self.metrics
        )
        self.metrics.watch_load(lambda: self.inbound.load)
        self.registrar = self.inbound.registrar = self.executor.registrar = Registrar(
            self._registrar_health
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
            self.peers,
            self.transports.last_failure,
            self._bound,
        )
        self.trunks: dict[str, Trunk] = {}
        self.probes: dict[str, Probe] = {}
        # the trunks only, never the routes: an edge has no use for them
        self.policy = Follower(ctx.js, self._policy_committed, TRUNK_KEYS)
        self.registrations: dict[str, Registering] = {}
        self.started = False
        self.stopped = False
        self.heartbeat_s = HEARTBEAT_S
        self.heard: dict[str, float] = {}  # edge id -> when its last heartbeat came (loop time)
        self.draining: set[str] = set()  # the edges whose last heartbeat said they drain
        self.started_at = 0.0  # loop time
        self.spread = 0  # turns the order of a trunk's edges for each leg
        self.limits = self.executor.limits = Limits(edge.id, self.live, self.spawn)
        self.executor.edge_order = self.edge_order
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subs: list[Subscription] = []
        self._loops: list[asyncio.Task[None]] = []
        self.app = self._build_app(ctx.token)

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        following = asyncio.create_task(self._watch_policy())
        await self.policy.caught_up.wait()
        if not self.policy.commit:  # no policy stored yet: the config file's
            self.apply_policy(self.ctx.config.policy)
        await self.rtpengines.start()
        self.started_at = asyncio.get_running_loop().time()
        await self.limits.start(self.ctx.js)
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
        for registering in self.registrations.values():
            registering.start()
        self._loops += [
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._watch_edges()),
            asyncio.create_task(self._watch_lag()),
            following,
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
        if self.stopped:
            return
        self.stopped = True
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
        for registering in self.registrations.values():
            registering.stop()  # the bindings are removed (Expires: 0) before the sockets go
        self.registrar.stop()
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
        """The trunks this edge serves, from the stored policy (live on every commit). An
        edited trunk keeps the health its probes found, unless its peer changed."""
        served = {t.id: t for t in policy.trunks if self.edge_id in t.edges}
        self.trunks = self.executor.trunks = served
        # a call this edge owns is anchored if its trunk or its target's anchors: any trunk
        self.rtpengines.wanted = any(t.media == "anchor" for t in policy.trunks)
        self.inbound.admission = Admission(served.values())
        found: dict[str, Probe] = {}
        self.inbound.challengers = {
            t.id: DigestServer(t.auth.realm or DIGEST_REALM, self.nonce_key)
            for t in served.values()
            if t.auth is not None and t.auth.challenge
        }
        self.inbound.registered = {
            user: t for t in served.values() if (user := aor_user(t)) is not None
        }
        for trunk_id in list(self.registrar.bindings):
            if trunk_id not in served or not served[trunk_id].registrar:
                self.registrar.forget(trunk_id)
        for trunk_id in list(self.probes):
            probe = self.probes[trunk_id]
            trunk = served.get(trunk_id)
            if trunk is None or trunk != probe.trunk:
                probe.stop()
                del self.probes[trunk_id]
                if trunk is not None and trunk.peer_address == probe.trunk.peer_address:
                    found[trunk_id] = probe
                registering = self.registrations.pop(trunk_id, None)
                if registering is not None:
                    registering.stop()
        for trunk in served.values():
            if trunk.id not in self.probes:
                probe = self.probes[trunk.id] = Probe(self.prober, trunk)
                old = found.get(trunk.id)
                if old is not None and old.trunk.transport == trunk.transport:
                    probe.up, probe.failed, probe.reason = old.up, old.failed, old.reason
                    probe.reported, probe.last_probe_ms = old.reported, old.last_probe_ms
                if trunk.registration is not None:
                    local = self.executor.locals[trunk.transport]
                    self.registrations[trunk.id] = Registering(self.prober, probe, trunk, local)
                if self.started:
                    probe.start()
                    if trunk.id in self.registrations:
                        self.registrations[trunk.id].start()

    async def _watch_policy(self) -> None:
        """Follow the trunks in the policy store for as long as the edge runs."""
        while True:
            try:
                await self.policy.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # NATS away mid-start: follow again, from the snapshot
                log.exception("following the policy store failed; again in 1s")
                await asyncio.sleep(1.0)

    async def _policy_committed(self, revision: int) -> None:
        # parsed and checked off the SIP loop: the loop only swaps the trunks in
        try:
            policy = await asyncio.to_thread(self.policy.state.policy)
        except ValueError:
            log.exception("stored trunks refused; keeping the previous ones")
            return
        self.apply_policy(policy)
        log.info("policy reloaded: %d trunks served", len(self.trunks))

    def _bound(self, trunk_id: str) -> Peer | None:
        binding = self.registrar.binding(trunk_id)
        return binding.peer if binding is not None else None

    def _registrar_health(self, trunk_id: str, up: bool, reason: str) -> None:
        probe = self.probes.get(trunk_id)
        if probe is not None:
            probe.registration(up, reason)

    def _trunk_of(self, host: str, port: int) -> str | None:
        trunk = self.inbound.admission.trunk(host, port)
        return trunk.id if trunk is not None else None

    # ---- SIP in -------------------------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer) -> None:
        when = time.time()
        self.inbound.receive(data, peer)
        self.capture.received(data, peer, when)

    def send(self, data: bytes, peer: Peer) -> None:
        """What the transaction layer sends: out through the sockets, and into capture. A
        TLS connection it opens verifies the name its trunk gives (`Peers.tls_of`)."""
        if peer.transport == "tls":
            name, verify = self.peers.tls_of(peer)
            self.transports.send(data, peer, server_name=name, verify=verify)
        else:
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
                reply = await self._create_leg(command, msg.headers)
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

    async def _create_leg(
        self, command: pb.LegCommand, headers: dict[str, str] | None
    ) -> pb.CommandReply:
        """A leg for a call's owner, once its trunk has a place for it (max_concurrent_calls
        across every edge); a refusal says whether another edge of the trunk might take it."""
        trunk = self.trunks.get(command.create.target.trunk)
        if trunk is None:
            error = f"trunk {command.create.target.trunk} not served here"
        elif trunk.registrar and self.registrar.binding(trunk.id) is None:
            error = f"trunk {trunk.id} is not registered"
        elif self.inbound.draining:
            error = "edge draining"
        else:
            limit = trunk.max_concurrent_calls
            if limit and not await self.limits.reserve(trunk.id, limit):
                self.metrics.reject("trunk_limit")
                error = f"trunk {trunk.id} is at its limit of {limit} calls"
                return pb.CommandReply(ok=False, error=error, failure="trunk_limit")
            self.executor.start_leg(command, trunk, telemetry.extract(headers), bool(limit))
            return pb.CommandReply(ok=True)
        return pb.CommandReply(ok=False, error=error, failure=EDGE_REFUSED)

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
        edge = msg.subject.split(".")[2]
        self.heard[edge] = asyncio.get_running_loop().time()
        try:
            draining = pb.EdgeHeartbeat.FromString(msg.data).draining
        except DecodeError:
            return
        if draining:
            self.draining.add(edge)
        else:
            self.draining.discard(edge)

    def live(self, edge: str) -> bool:
        """Whether an edge heartbeats; one not heard yet is taken for live until it would
        have been heard (just started, this edge cannot know)."""
        silent_s = self.heartbeat_s * EDGE_LOST_AFTER
        now = asyncio.get_running_loop().time()
        return now - self.heard.get(edge, self.started_at) <= silent_s

    def edge_order(self, edges: Sequence[str]) -> list[str]:
        """The edges to try a leg on: the live ones not draining first, a different one
        first for each leg (spread), then the others, in case they are better than heard."""
        ready = [e for e in edges if self.live(e) and e not in self.draining]
        self.spread += 1
        if ready:
            turn = self.spread % len(ready)
            ready = ready[turn:] + ready[:turn]
        return ready + [e for e in edges if e not in ready]

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
            attempt = call.attempt
            edge = attempt and self.registry.leg_edges.get(attempt.id, attempt.target.edge)
            if edge in lost:
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
            self.inbound.overload.sample(loop.time() - expected)
            if self.inbound.overload.probe_due(loop.time()):
                self.transports.probe()

    def _probed(self) -> None:
        self.inbound.overload.probe_arrived(asyncio.get_running_loop().time())

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
            "load": self.inbound.load,
            "listeners": self.transports.listeners if self.started else [],
            "trunks": [
                {
                    "id": trunk.id,
                    "peer": trunk.peer,
                    "transport": trunk.transport,
                    "enabled": trunk.enabled,
                    "up": self.probes[trunk.id].up if trunk.id in self.probes else None,
                    "health": self.probes[trunk.id].reason if trunk.id in self.probes else "",
                    "registration": (
                        self.registrations[trunk.id].state
                        if trunk.id in self.registrations
                        else None
                    ),
                    "active_in": self.registry.active_in[trunk.id],
                    "max_concurrent_calls": trunk.max_concurrent_calls,
                }
                for trunk in self.trunks.values()
            ],
            "calls": [call_status(runner, mask) for runner in self.registry.calls.values()],
            "legs": len(self.registry.legs),
            "rtpengine": self.rtpengines.status() if self.rtpengines.wanted else [],
        }


def nonce_key(config: Config, token: str | None) -> bytes:
    """The key of our digest nonces, the same on every edge that has the same secret."""
    secret = os.environ.get(DIGEST_SECRET_ENV) or config.digest_secret or token
    if not secret:
        if any(t.auth is not None and t.auth.challenge for t in config.trunks):
            log.warning(
                "no %s nor API token: this edge's digest nonces are its own", DIGEST_SECRET_ENV
            )
        return secrets.token_bytes(32)
    return hmac.digest(secret.encode(), b"tandem digest nonces", "sha256")


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
