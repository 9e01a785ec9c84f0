"""The NATS side of every process: subjects, durable stores, connecting and publishing.

Subjects and stores are named here once (the contract is in proto/tandem.proto). Connect
with reconnect and backoff, create streams and buckets idempotently, and put the W3C
`traceparent` (and a `Nats-Msg-Id` for events) in the headers of what is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import nats.errors
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from tandem import telemetry
from tandem.pb import tandem_pb2 as pb

log = logging.getLogger("tandem.bus")

# ---- subjects ---------------------------------------------------------------------------
ROUTE_DECIDE = "tandem.route.decide"
ROUTER_QUEUE = "router"
# a call event's subject ends with its kind's name: tandem.call.<call>.leg_answered
CALL_EVENT_KINDS = {
    kind: name.lower()
    for name, kind in pb.CallEvent.Kind.items()
    if kind != pb.CallEvent.KIND_UNSPECIFIED
}


def edge_cmd(edge: str) -> str:
    return f"tandem.edge.{edge}.cmd"


def edge_heartbeat(edge: str) -> str:
    return f"tandem.edge.{edge}.heartbeat"


def leg_event(owner_edge: str, leg: str) -> str:
    """Where a leg's events go: to the edge that owns its call, which subscribes once."""
    return f"tandem.leg.{owner_edge}.{leg}"


def call_event(call: str, kind: int) -> str:
    return f"tandem.call.{call}.{CALL_EVENT_KINDS[kind]}"


def call_hangup(call: str) -> str:
    return f"tandem.call.{call}.hangup"


def trunk_health(trunk: str) -> str:
    return f"tandem.trunk.{trunk}.health"


def cdr(trunk: str) -> str:
    return f"tandem.cdr.{trunk}"


def sip_capture(call: str) -> str:
    """A call's captured SIP messages: one subject per call, so they are one query."""
    return f"tandem.sip.{call}"


def sip_unmatched(edge: str) -> str:
    """Captured messages of no call (OPTIONS probes, strays), by the edge that saw them."""
    return f"tandem.sip.unmatched.{edge}"


# ---- durable stores ---------------------------------------------------------------------
CALLS_STREAM = "TANDEM_CALLS"
CDR_STREAM = "TANDEM_CDR"
CONFIG_BUCKET = "TANDEM_CONFIG"
ACTIVE_CALLS_BUCKET = "TANDEM_CALLS"
TRUNK_HEALTH_BUCKET = "TANDEM_TRUNK_HEALTH"
TRUNK_COUNTERS_BUCKET = "TANDEM_TRUNK_COUNTERS"
SIP_STREAM = "TANDEM_SIP"

DAY_S = 86400.0
STREAMS = (
    # hangup requests share the tandem.call.<call> prefix but are not events: list the kinds.
    StreamConfig(
        name=CALLS_STREAM,
        subjects=[call_event("*", kind) for kind in CALL_EVENT_KINDS],
        storage=StorageType.FILE,
        max_age=7 * DAY_S,
        duplicate_window=120.0,
    ),
    StreamConfig(
        name=CDR_STREAM,
        subjects=[cdr("*")],
        storage=StorageType.FILE,
        max_age=400 * DAY_S,
        duplicate_window=120.0,
    ),
)
BUCKETS = (
    KeyValueConfig(bucket=CONFIG_BUCKET, history=5, storage=StorageType.FILE),
    KeyValueConfig(bucket=ACTIVE_CALLS_BUCKET, storage=StorageType.FILE),
    KeyValueConfig(bucket=TRUNK_HEALTH_BUCKET, storage=StorageType.FILE),
    KeyValueConfig(bucket=TRUNK_COUNTERS_BUCKET, storage=StorageType.FILE),
)


def sip_stream(max_age_s: float, max_bytes: int) -> StreamConfig:
    """TANDEM_SIP, made by the edges with the config's capture limits (the oldest go first)."""
    return StreamConfig(
        name=SIP_STREAM,
        subjects=[sip_capture(">")],
        storage=StorageType.FILE,
        max_age=max_age_s,
        max_bytes=max_bytes,
        discard=DiscardPolicy.OLD,
    )


# ---- timeouts (named, as nats.py does) ----------------------------------------------------
CONNECT_TIMEOUT_S = 2.0
RECONNECT_WAIT_S = 0.5
MAX_RECONNECT_WAIT_S = 5.0
DRAIN_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 2.0
PENDING_BYTES_LIMIT = 64 * 1024 * 1024


async def connect(url: str, name: str, creds: str | None = None) -> Client:
    """Connect, retrying forever with backoff: a service that loses NATS waits, never spins."""

    async def disconnected() -> None:
        log.warning("nats disconnected", extra={"nats": url})

    async def reconnected() -> None:
        log.info("nats reconnected", extra={"nats": url})

    async def error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    wait = RECONNECT_WAIT_S
    while True:
        try:
            return await _connect_once(url, name, creds, disconnected, reconnected, error)
        except (OSError, TimeoutError, nats.errors.NoServersError) as exc:
            log.warning("nats %s unreachable (%s): retrying in %.1fs", url, exc, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_RECONNECT_WAIT_S)


async def _connect_once(
    url: str,
    name: str,
    creds: str | None,
    disconnected: Callable[[], Awaitable[None]],
    reconnected: Callable[[], Awaitable[None]],
    error: Callable[[Exception], Awaitable[None]],
) -> Client:
    return await nats.connect(
        servers=[url],
        name=name,
        user_credentials=creds,
        connect_timeout=CONNECT_TIMEOUT_S,
        reconnect_time_wait=RECONNECT_WAIT_S,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        drain_timeout=int(DRAIN_TIMEOUT_S),
        pending_size=PENDING_BYTES_LIMIT,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
    )


async def ensure_stores(js: JetStreamContext) -> None:
    """Create every stream and bucket tandem uses; existing ones are left as they are."""
    for stream in STREAMS:
        try:
            await js.add_stream(config=stream)
        except BadRequestError:  # exists with another config: keep what the operator set
            log.info("stream %s exists with a different config; kept", stream.name)
    for bucket in BUCKETS:
        await js.create_key_value(config=bucket)


def now_ms() -> int:
    """The wall-clock time in milliseconds since the epoch, as every bus message carries it."""
    return int(time.time() * 1000)


def headers(msg_id: str | None = None) -> dict[str, str]:
    """The NATS headers of an outgoing message: trace context, and the dedup id of events."""
    out = telemetry.inject({})
    if msg_id is not None:
        out["Nats-Msg-Id"] = msg_id
    return out


async def publish_event(js: JetStreamContext, subject: str, message: Message, msg_id: str) -> None:
    """Publish a durable event once: JetStream drops a repeat of the same msg_id."""
    await js.publish(subject, message.SerializeToString(), headers=headers(msg_id))


M = TypeVar("M", bound=Message)


async def request(
    nc: Client,
    subject: str,
    message: Message,
    reply_type: type[M],
    reply_timeout_s: float = REQUEST_TIMEOUT_S,
) -> M:
    reply = await nc.request(
        subject, message.SerializeToString(), timeout=reply_timeout_s, headers=headers()
    )
    return reply_type.FromString(reply.data)


class Outbox:
    """Messages for NATS that need no reply, sent in order by one task per loop turn.

    Leg commands (but `create`), leg events and call events all go this way: a task and a
    reply per message would cost more than the call's SIP. Call events reach TANDEM_CALLS
    the same, deduplicated by their Nats-Msg-Id; a message the connection refuses is lost
    (and logged), never retried out of order.
    """

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._queue: list[tuple[str, bytes, dict[str, str]]] = []
        self._task: asyncio.Task[None] | None = None

    def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self._queue.append((subject, data, headers))
        if self._task is None:
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._queue:
                queue, self._queue = self._queue, []
                for subject, data, headers in queue:
                    await self.nc.publish(subject, data, headers=headers)
        except Exception as exc:
            log.warning("messages to NATS lost: %r", exc)
            self._queue.clear()
        finally:
            self._task = None

    async def flush(self) -> None:
        """Wait until every queued message has left (for a clean stop)."""
        while self._task is not None:
            await asyncio.shield(self._task)
