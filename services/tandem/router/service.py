"""The router process: answers route decisions on the bus and keeps its policy live.

Each replica answers `tandem.route.decide` in the queue group `router`, and follows three
buckets: TANDEM_CONFIG (the policy, from its snapshot on: rebuilt when `commit` moves, so
every replica applies a change within a second, no restart), TANDEM_TRUNK_HEALTH (which
trunks are down) and TANDEM_TRUNK_COUNTERS (active calls per trunk, for call limits). It
says in TANDEM_ROUTERS which policy revision it has in force, so that a write through the
API answers only once every replica has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import json
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from tandem import bus, telemetry
from tandem.http import create_app
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Policy, store
from tandem.process import Context
from tandem.router import api
from tandem.router.table import RESULT_NAMES, Conditions, RoutingTable, Spreader

log = logging.getLogger("tandem.router")
tracer = telemetry.tracer("tandem.router")

DECISIONS = Counter("tandem_router_decisions", "Route decisions by result", ["result"])
DECISION_SECONDS = Histogram(
    "tandem_router_decision_seconds",
    "Time to decide a route, in process",
    buckets=(25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 5e-3),
)
POLICY_ROUTES = Gauge("tandem_router_policy_routes", "Voice routes in the policy in force")
POLICY_ERRORS = Counter("tandem_router_policy_errors", "Stored policies refused (kept the last)")
IN_FORCE_TIMEOUT_S = 30.0  # a write waits this long for every replica to have it in force
ROUTER_BEAT_S = 2.0  # each replica says what it has in force this often
ROUTER_LIVE_S = 3 * ROUTER_BEAT_S  # a replica not heard from for this long is gone
VERIFY_SLICE = 200  # routes checked per turn of the loop after a start from the snapshot
FOLLOW_RETRY_S = 1.0


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 256 * 1024


def map_large_allocations() -> None:
    """Have glibc map every allocation over 256 KB on its own, and unmap it when freed: by
    default the threshold follows the largest block freed (the 30 MB of a snapshot read),
    and the policy's dicts of 100,000 keys that each commit replaces stay in the heap."""
    mallopt = getattr(_LIBC, "mallopt", None)  # glibc only
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_freed_memory() -> None:
    """Give the heap's free pages back to the OS (glibc's malloc_trim): building a policy of
    100,000 routes frees tens of MB that malloc would otherwise keep in the router's RSS."""
    trim = getattr(_LIBC, "malloc_trim", None)  # glibc only (not musl, not macOS)
    if trim is not None:
        trim(0)


class Service:
    """One router replica: the policy in force, the trunks' conditions, and the decide handler."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        replica = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.name = re.sub(r"[^A-Za-z0-9_-]", "_", replica)  # a KV key
        self.table = RoutingTable(Policy())
        self.follower = store.Follower(ctx.js, self._apply, trusted=True)
        self.in_force = 0  # the revision of the commit whose policy decides here
        self.policy_error: str | None = None
        self.spreader = Spreader()
        self.answered = 0  # decisions this replica answered on the bus
        self.down: set[str] = set()  # trunks down by their edge's health probes
        self.active_calls: dict[str, int] = {}  # per trunk, in and out, from callstate
        self.conditions = Conditions(self.down, self.active_calls)
        self.peers: dict[str, tuple[int, float]] = {}  # replica -> (in force, heard at)
        self.loaded = asyncio.Event()
        self.kv: KeyValue | None = None
        self.routers: KeyValue | None = None
        self.sub: Subscription | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.app = create_app(
            "router", ready=lambda: ctx.nc.is_connected and self.loaded.is_set(), token=ctx.token
        )
        api.mount(self.app, self)

    @property
    def revision(self) -> int:
        """The last TANDEM_CONFIG revision taken (a commit's: applied)."""
        return self.follower.revision

    # ---- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        map_large_allocations()
        js = self.ctx.js
        self.kv = await js.key_value(bus.CONFIG_BUCKET)
        self.routers = await js.key_value(bus.ROUTERS_BUCKET)
        health = await js.key_value(bus.TRUNK_HEALTH_BUCKET)
        counters = await js.key_value(bus.TRUNK_COUNTERS_BUCKET)
        follow = asyncio.create_task(self._follow(), name="follow-config")
        self.tasks = [
            follow,
            asyncio.create_task(self._watch(health, self._on_health), name="watch-health"),
            asyncio.create_task(self._watch(counters, self._on_counters), name="watch-counters"),
            asyncio.create_task(self._watch(self.routers, self._on_peer), name="watch-routers"),
        ]
        await self.follower.caught_up.wait()
        self.loaded.set()
        self.tasks.append(asyncio.create_task(self._beat(), name="router-beat"))
        if self.follower.from_snapshot:
            self.tasks.append(asyncio.create_task(self._verify(), name="verify-snapshot"))
        self.sub = await self.ctx.nc.subscribe(
            bus.ROUTE_DECIDE, queue=bus.ROUTER_QUEUE, cb=self._on_decide
        )

    async def drain(self) -> None:
        if self.sub is not None:  # answer what is queued, take no more
            await self.sub.drain()  # type: ignore[no-untyped-call]
            self.sub = None

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.routers is not None:  # gone at once, not when our entry ages out
            with contextlib.suppress(Exception):
                await self.routers.delete(self.name)

    # ---- deciding -----------------------------------------------------------------------

    def decide(self, request: pb.RouteRequest) -> pb.RouteDecision:
        started = time.perf_counter()
        decision = self.table.decide(
            request.ingress_trunk, request.called, request.calling, self.conditions, self.spreader
        )
        DECISION_SECONDS.observe(time.perf_counter() - started)
        DECISIONS.labels(RESULT_NAMES.get(decision.result, "unspecified")).inc()
        return decision

    def route_test(self, trunk: str, called: str, calling: str) -> pb.RouteDecision:
        """A decision that places no call: the round-robin turns are left where they were."""
        preview = Spreader(self.spreader.rng)
        preview.turns = dict(self.spreader.turns)
        return self.table.decide(trunk, called, calling, self.conditions, preview, explain=True)

    async def _on_decide(self, msg: Msg) -> None:
        parent = telemetry.extract(dict(msg.headers or {}))
        with tracer.start_as_current_span(
            "route.decide", context=parent, kind=trace.SpanKind.SERVER
        ) as span:
            try:
                request = pb.RouteRequest.FromString(msg.data)
            except DecodeError:
                decision = pb.RouteDecision(status=400, reason="malformed RouteRequest")
            else:
                decision = self.decide(request)
                masked = self.ctx.config.telemetry.mask_numbers
                span.set_attributes(
                    {
                        "tandem.call_id": request.call_id,
                        "tandem.ingress_trunk": request.ingress_trunk,
                        "tandem.called": telemetry.mask_number(request.called, masked),
                        "tandem.normalized_called": telemetry.mask_number(
                            decision.normalized_called, masked
                        ),
                        "tandem.usage": decision.usage,
                        "tandem.route": decision.route,
                        "tandem.targets": [t.trunk for t in decision.targets],
                        "tandem.result": RESULT_NAMES.get(decision.result, "unspecified"),
                        "sip.status": decision.status,
                    }
                )
        self.answered += 1
        await msg.respond(decision.SerializeToString())

    # ---- watching the buckets -----------------------------------------------------------

    async def _watch(
        self, kv: KeyValue, apply: Callable[[str, bytes | None, int], Awaitable[None]]
    ) -> None:
        """Apply every entry of a bucket, then every change; None marks the end of the first."""
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    await apply("", None, 0)
                    continue
                value = None if store.is_delete(entry.operation) else entry.value
                try:
                    await apply(entry.key, value, entry.revision or 0)
                except Exception:  # one unreadable entry must not stop the watch
                    log.exception("entry %s not applied", entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _follow(self) -> None:
        """The policy store, followed for as long as the router runs."""
        while True:
            try:
                await self.follower.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # NATS away mid-start: follow again, from the snapshot
                log.exception("following the policy store failed; again in %ss", FOLLOW_RETRY_S)
                await asyncio.sleep(FOLLOW_RETRY_S)

    async def _apply(self, revision: int) -> None:
        """Compile the committed policy off the event loop; a refused one leaves the last in
        force. The follower awaits this, so nothing changes its state meanwhile."""

        def build() -> RoutingTable:
            with store.gc_paused():  # collected below, once
                return RoutingTable(self.follower.state.policy(), self.table)

        try:
            table = await asyncio.to_thread(build)
        except (ValidationError, ValueError) as exc:
            POLICY_ERRORS.inc()
            self.policy_error = str(exc)
            log.error("stored policy refused, the last one stays in force: %s", exc)
            return
        self.table = table
        # the policy lives until the next commit: keep the cyclic GC from rescanning it (a full
        # collection over 100,000 routes would stall decisions for tens of milliseconds). What
        # is frozen is never collected, so collect first: only objects made since the last
        # freeze are scanned. Tables hold no reference cycles: a replaced one is freed anyway.
        # A cold start has no old table to drop: it skips the collection (0.4 s at 100,000).
        if self.in_force:
            gc.collect()
        gc.freeze()
        release_freed_memory()
        self.policy_error = None
        self.in_force = revision
        policy = table.policy
        POLICY_ROUTES.set(len(policy.routes))
        log.info(
            "policy in force",
            extra={
                "revision": revision,
                "trunks": len(policy.trunks),
                "routes": len(policy.routes),
            },
        )
        if self.loaded.is_set():
            await self._say_in_force()

    async def _verify(self) -> None:
        """After a start from the snapshot: validate each route as a write would have (its
        writer did), a slice per turn of the loop, then compile every route's pattern. A route
        that fails is taken out of the table, and said so in the status."""
        state = self.follower.state
        routes = [key for key in state.committed if key.startswith("route.")]
        bad: dict[str, str] = {}
        for n, key in enumerate(routes):
            try:
                state.verify(key)
            except ValueError as exc:
                bad[key.removeprefix("route.")] = str(exc).splitlines()[-1].strip()
            if n % VERIFY_SLICE == 0:
                await asyncio.sleep(0)
        # patterns compiled now, not by the first call to match; in a pass of their own, so
        # that they are not strewn among the validations' garbage (which kept 17 MB resident)
        for n, compiled in enumerate(list(self.table.routes.values())):
            try:
                compiled.pattern  # noqa: B018
            except ValueError as exc:
                bad.setdefault(compiled.config.id, str(exc).splitlines()[-1].strip())
            if n % VERIFY_SLICE == 0:
                await asyncio.sleep(0)
        release_freed_memory()  # each route's validation made garbage the size of the policy
        if not bad:
            log.info("policy snapshot verified: %d routes", len(routes))
            return
        POLICY_ERRORS.inc()
        policy = self.table.policy
        kept = policy.model_copy(update={"routes": [r for r in policy.routes if r.id not in bad]})
        self.table = RoutingTable(kept, self.table)
        self.policy_error = f"routes of the snapshot refused and not in force: {bad}"
        log.error("%s", self.policy_error)

    # ---- what every replica has in force ------------------------------------------------

    async def _beat(self) -> None:
        while True:
            try:
                await self._say_in_force()
            except Exception as exc:
                log.warning("in-force revision not published: %r", exc)
            await asyncio.sleep(ROUTER_BEAT_S)

    async def _say_in_force(self) -> None:
        assert self.routers is not None
        value = {"in_force": self.in_force, "time": time.time()}
        await self.routers.put(self.name, json.dumps(value).encode())

    async def _on_peer(self, key: str, value: bytes | None, _revision: int) -> None:
        if not key:
            return
        if value is None:
            self.peers.pop(key, None)
            return
        said = json.loads(value)
        # as old as it says it is: the entries first read may be a dead replica's last ones
        age = max(0.0, time.time() - float(said["time"]))
        self.peers[key] = (int(said["in_force"]), time.monotonic() - age)

    def lagging(self, revision: int) -> list[str]:
        """The live replicas (this one included) that do not have `revision` in force yet."""
        now = time.monotonic()
        behind = [
            f"{name} (at revision {in_force})"
            for name, (in_force, heard) in sorted(self.peers.items())
            if name != self.name and now - heard < ROUTER_LIVE_S and in_force < revision
        ]
        if self.in_force < revision:
            behind.insert(0, f"{self.name} (this one, at revision {self.in_force})")
        return behind

    async def everywhere(self, revision: int) -> None:
        """Return once every live replica has the commit at `revision` in force."""
        timeout_s = IN_FORCE_TIMEOUT_S
        deadline = time.monotonic() + timeout_s
        while lagging := self.lagging(revision):
            if time.monotonic() > deadline:
                raise store.PolicyNotInForceError(revision, lagging, timeout_s)
            await asyncio.sleep(0.01)

    async def _on_health(self, key: str, value: bytes | None, _revision: int) -> None:
        if not key:
            return
        health = pb.TrunkHealth.FromString(value) if value is not None else None
        if health is None or health.up:
            self.down.discard(key)
        else:
            self.down.add(key)

    async def _on_counters(self, key: str, value: bytes | None, _revision: int) -> None:
        if not key:
            return
        if value is None:
            self.active_calls.pop(key, None)
        else:
            counters = pb.TrunkCounters.FromString(value)
            self.active_calls[key] = counters.active_in + counters.active_out

    # ---- what the API needs -------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self.table.policy

    async def change(self, mutate: Callable[[Policy], Policy]) -> Policy:
        """Store mutate(the latest stored policy) under the write lock; return once every
        replica has it in force.

        PolicyBusyError when it cannot be written now (another writer holds the lock, or this
        replica cannot catch up with the store): the caller may try again. PolicyNotInForceError
        when it is stored but some replica has not applied it in time: nothing to try again.
        """
        assert self.kv is not None
        try:
            async with store.write_lock(self.kv, self.name) as lock:
                await self.follower.sync()
                policy = mutate(self.policy)
                revision = await store.write_policy(self.ctx.js, policy, self.follower.state, lock)
        except TimeoutError as exc:
            raise store.PolicyBusyError(str(exc)) from None
        finally:
            release_freed_memory()  # what the write copied of the policy (its keys, the snapshot)
        await self.everywhere(revision)
        return policy
