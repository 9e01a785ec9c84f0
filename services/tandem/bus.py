"""The NATS side of every process: subjects, durable stores, connecting and publishing.

Subjects and stores are named here once (the contract is in proto/tandem.proto). Connect
with reconnect and backoff, create streams and buckets idempotently with the configured
number of replicas (and move existing ones to it), and put the W3C `traceparent` (and a
`Nats-Msg-Id` for events) in the headers of what is sent. Call events are published until
JetStream acknowledges them, so a NATS node that dies under them loses none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats
import nats.errors
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, ServiceUnavailableError

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


CALL_PREFIX = "tandem.call."


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
ROUTERS_BUCKET = "TANDEM_ROUTERS"  # each router replica: the policy revision it has in force
TRUNK_CALLS_BUCKET = "TANDEM_TRUNK_CALLS"  # a limited trunk's calls now, by edge (edge/limits.py)
LEASES_BUCKET = "TANDEM_LEASES"  # which edge probes a trunk served by several (key: trunk)
ROUTER_ENTRY_TTL_S = 10.0  # a replica's entry outlives it this long at most

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
    KeyValueConfig(bucket=ROUTERS_BUCKET, storage=StorageType.FILE, ttl=ROUTER_ENTRY_TTL_S),
    KeyValueConfig(bucket=TRUNK_CALLS_BUCKET, storage=StorageType.FILE),
    KeyValueConfig(bucket=LEASES_BUCKET, storage=StorageType.FILE),
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
STORES_WAIT_S = 30.0  # a cluster that just started elects its JetStream leader meanwhile
EVENT_ACK_WAIT_S = 2.0  # a call event not acknowledged in this time is sent again
EVENT_RETRY_S = 0.5  # after JetStream refused one (no stream leader during an election)
EVENTS_PENDING_MAX = 200_000  # call events held for JetStream at most; beyond, lost (logged)
OUTBOX_FLUSH_S = 5.0  # how long a stopping edge waits for its last events to be stored


async def connect(url: str, name: str, creds: str | None = None) -> Client:
    """Connect, retrying forever with backoff: a service that loses NATS waits, never spins.

    `url` may list a cluster's servers, comma-separated: any of them will do, and the
    client moves to another when its server dies (it also learns the others from it).
    """

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
        servers=[server.strip() for server in url.split(",")],
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


async def ensure_stores(js: JetStreamContext, replicas: int = 1) -> None:
    """Create every stream and bucket tandem uses, with `replicas` copies each.

    Existing ones keep the rest of their config (what an operator set stays), but their
    replica count is moved to `replicas`: JetStream copies the data to the new peers itself.
    """
    for stream in STREAMS:
        await ensure_stream(js, stream.evolve(num_replicas=replicas))
    for bucket in BUCKETS:
        await ensure_bucket(js, bucket.evolve(replicas=replicas))


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    await _ensure(js, config.name or "", config.num_replicas or 1, lambda: js.add_stream(config))


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> None:
    await _ensure(js, f"KV_{config.bucket}", config.replicas, lambda: js.create_key_value(config))


async def _ensure(
    js: JetStreamContext, stream: str, replicas: int, create: Callable[[], Awaitable[object]]
) -> None:
    deadline = time.monotonic() + STORES_WAIT_S
    while True:
        try:
            await create()
            return
        except BadRequestError:  # exists with another config: converge on the replica count
            info = await js.stream_info(stream)
            if info.config.num_replicas == replicas:
                log.info("stream %s exists with a different config; kept", stream)
                return
            log.warning("stream %s: replicas %s -> %d", stream, info.config.num_replicas, replicas)
            await js.update_stream(info.config.evolve(num_replicas=replicas))
            return
        except (ServiceUnavailableError, nats.errors.TimeoutError) as exc:
            if time.monotonic() > deadline:  # e.g. more replicas than servers
                raise RuntimeError(f"JetStream cannot create {stream}: {exc}") from exc
            log.info("JetStream not ready for %s (%s): retrying", stream, exc)
            await asyncio.sleep(RECONNECT_WAIT_S)


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


@dataclass(eq=False)
class _Event:
    """A call event waiting for JetStream's acknowledgement."""

    call: str
    token: str  # its reply subject's last token: what the acknowledgement names
    subject: str
    data: bytes
    headers: dict[str, str]
    resend_at: float = 0.0  # monotonic; 0: not sent yet


class Outbox:
    """Messages for NATS that need no reply, sent in order by one task per loop turn.

    Leg commands (but `create`), leg events and call events all go this way: a task and a
    reply per message would cost more than the call's SIP. A message the connection
    refuses is lost (and logged), never retried out of order.

    Call events (tandem.call.*, with a Nats-Msg-Id) are the record of the call, so they
    are JetStream publishes: each carries a reply subject, and one not acknowledged in
    EVENT_ACK_WAIT_S (its stream had no leader: a NATS node died) is sent again, which
    its Nats-Msg-Id makes harmless. A call's next event waits for the acknowledgement of
    the one before, so its events are stored in the order they happened even across a
    change of stream leader; the events of different calls do not wait for each other.
    """

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._queue: list[tuple[str, bytes, dict[str, str]] | _Event] = []
        self._task: asyncio.Task[None] | None = None
        self._lanes: dict[str, deque[_Event]] = {}  # per call; the first is in flight
        self._sent: dict[str, _Event] = {}  # in flight, by token
        self._inbox = ""
        self._acks: Subscription | None = None
        self._resender: asyncio.Task[None] | None = None
        self._said_late = 0.0
        self._tokens = 0
        self.pending_events = 0
        self._stored = asyncio.Event()  # set while no call event waits for JetStream
        self._stored.set()

    def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        if "Nats-Msg-Id" in headers and subject.startswith(CALL_PREFIX):
            self._hold(subject, data, headers)
        else:
            self._queue.append((subject, data, headers))
        if self._task is None:
            self._task = asyncio.create_task(self._flush())

    def _hold(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        if self.pending_events >= EVENTS_PENDING_MAX:
            log.warning("call event lost: %d already wait for JetStream", self.pending_events)
            return
        call = subject.split(".")[2]
        self._tokens += 1
        event = _Event(call, str(self._tokens), subject, data, headers)
        lane = self._lanes.setdefault(call, deque())
        lane.append(event)
        self.pending_events += 1
        self._stored.clear()
        if len(lane) == 1:
            self._queue.append(event)

    async def _flush(self) -> None:
        queue: list[tuple[str, bytes, dict[str, str]] | _Event] = []
        sent = 0
        try:
            if self._acks is None:
                self._inbox = self.nc.new_inbox()
                self._acks = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)
            while self._queue:
                queue, self._queue, sent = self._queue, [], 0
                for item in queue:
                    if isinstance(item, _Event):
                        await self._send(item)
                    else:
                        await self.nc.publish(item[0], item[1], headers=item[2])
                    sent += 1
        except Exception as exc:
            log.warning("messages to NATS lost: %r", exc)
            for item in [*queue[sent:], *self._queue]:  # but events: sent again later
                if isinstance(item, _Event):
                    self._sent[item.token] = item
                    item.resend_at = time.monotonic() + EVENT_RETRY_S
            self._queue.clear()
            if self._sent and self._resender is None:
                self._resender = asyncio.create_task(self._resend())
        finally:
            self._task = None

    async def _send(self, event: _Event) -> None:
        self._sent[event.token] = event
        if self._resender is None:
            self._resender = asyncio.create_task(self._resend())
        event.resend_at = time.monotonic() + EVENT_ACK_WAIT_S
        await self.nc.publish(
            event.subject, event.data, reply=f"{self._inbox}.{event.token}", headers=event.headers
        )

    async def _on_ack(self, msg: Msg) -> None:
        event = self._sent.get(msg.subject.rpartition(".")[2])
        if event is None:  # a late acknowledgement of an event sent twice
            return
        # a refusal is JSON naming an error; no responders is a 503 status without a body
        if (msg.headers and msg.headers.get("Status")) or b'"error"' in msg.data:
            event.resend_at = time.monotonic() + EVENT_RETRY_S
            return
        del self._sent[event.token]
        self.pending_events -= 1
        if not self.pending_events:
            self._stored.set()
        lane = self._lanes[event.call]
        lane.popleft()
        if lane:
            self._queue.append(lane[0])
            if self._task is None:
                self._task = asyncio.create_task(self._flush())
        else:
            del self._lanes[event.call]

    async def _resend(self) -> None:
        """Send again what is not acknowledged in time; ends when nothing is in flight."""
        while self._sent:
            await asyncio.sleep(EVENT_RETRY_S / 2)
            now = time.monotonic()
            late = [e for e in self._sent.values() if e.resend_at <= now]
            if late:
                if now - self._said_late > EVENT_ACK_WAIT_S:  # once in a while, not each time
                    self._said_late = now
                    log.info("%d call events not acknowledged yet: sent again", len(late))
                self._queue.extend(late)
                for event in late:
                    event.resend_at = now + EVENT_ACK_WAIT_S
                if self._task is None:
                    self._task = asyncio.create_task(self._flush())
        self._resender = None

    async def flush(self) -> None:
        """Wait until every queued message has left, and the call events are stored (for a
        clean stop; bounded by OUTBOX_FLUSH_S when JetStream does not answer)."""
        while self._task is not None:
            await asyncio.shield(self._task)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stored.wait(), OUTBOX_FLUSH_S)
        if self.pending_events:
            log.warning("%d call events not stored before stopping", self.pending_events)
