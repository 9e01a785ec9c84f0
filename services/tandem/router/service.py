"""The router process: answers route decisions on the bus and keeps its policy live.

Each replica answers `tandem.route.decide` in the queue group `router`, and watches three
buckets: TANDEM_CONFIG (the policy: rebuilt when `commit` moves, so every replica applies a
change within a second, no restart), TANDEM_TRUNK_HEALTH (which trunks are down) and
TANDEM_TRUNK_COUNTERS (active calls per trunk, for call limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
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
CATCH_UP_TIMEOUT_S = 5.0


class Service:
    """One router replica: the policy in force, the trunks' conditions, and the decide handler."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.table = RoutingTable(Policy())
        self.state = store.PolicyState()
        self.revision = 0  # the last TANDEM_CONFIG revision applied
        self.committed = False  # a commit was seen: the stored keys form a whole policy
        self.policy_error: str | None = None
        self.spreader = Spreader()
        self.answered = 0  # decisions this replica answered on the bus
        self.down: set[str] = set()  # trunks down by their edge's health probes
        self.active_calls: dict[str, int] = {}  # per trunk, in and out, from callstate
        self.conditions = Conditions(self.down, self.active_calls)
        self.loaded = asyncio.Event()
        self.kv: KeyValue | None = None
        self.sub: Subscription | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.app = create_app(
            "router", ready=lambda: ctx.nc.is_connected and self.loaded.is_set(), token=ctx.token
        )
        api.mount(self.app, self)

    # ---- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        js = self.ctx.js
        self.kv = await js.key_value(bus.CONFIG_BUCKET)
        health = await js.key_value(bus.TRUNK_HEALTH_BUCKET)
        counters = await js.key_value(bus.TRUNK_COUNTERS_BUCKET)
        self.tasks = [
            asyncio.create_task(self._watch(self.kv, self._on_config), name="watch-config"),
            asyncio.create_task(self._watch(health, self._on_health), name="watch-health"),
            asyncio.create_task(self._watch(counters, self._on_counters), name="watch-counters"),
        ]
        await self.loaded.wait()
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

    async def _on_config(self, key: str, value: bytes | None, revision: int) -> None:
        if not key:  # the first snapshot is complete
            if self.committed:  # keys without a commit are a first import still under way
                await self._rebuild()
            self.loaded.set()
            return
        if value is None:
            self.state.delete(key)
        else:
            self.state.put(key, value)
        if key == store.COMMIT_KEY:
            self.committed = True
            if self.loaded.is_set():
                await self._rebuild()
        self.revision = max(self.revision, revision)

    async def _rebuild(self) -> None:
        """Compile the stored policy off the event loop; a refused one leaves the last in force."""

        def build() -> RoutingTable:
            return RoutingTable(self.state.policy(), self.table)

        try:  # the watch awaits this, so nothing changes the state meanwhile
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
        gc.collect()
        gc.freeze()
        self.policy_error = None
        policy = table.policy
        POLICY_ROUTES.set(len(policy.routes))
        log.info(
            "policy in force", extra={"trunks": len(policy.trunks), "routes": len(policy.routes)}
        )

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
        """Store mutate(the latest stored policy) under the write lock; in force here on return.

        PolicyBusyError when it cannot be written now (another writer holds the lock, or this
        replica cannot catch up with the store): the caller may try again.
        """
        assert self.kv is not None
        try:
            async with store.write_lock(self.kv, self.ctx.name):
                await self.caught_up()
                policy = mutate(self.policy)
                revision = await store.write_policy(self.kv, policy, self.state)
        except TimeoutError as exc:
            raise store.PolicyBusyError(str(exc)) from None
        # read your writes; a timeout here is no reason to try again: the write is stored
        await self.applied(revision)
        return policy

    async def caught_up(self) -> None:
        """Wait until this replica has applied everything TANDEM_CONFIG holds right now."""
        assert self.kv is not None
        info = await self.ctx.js.stream_info(f"KV_{bus.CONFIG_BUCKET}")
        await self.applied(info.state.last_seq)

    async def applied(self, revision: int) -> None:
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while self.revision < revision:
            if time.monotonic() > deadline:
                raise TimeoutError(f"policy revision {revision} not seen in {CATCH_UP_TIMEOUT_S}s")
            await asyncio.sleep(0.005)
