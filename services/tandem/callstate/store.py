"""Where callstate keeps what it derived: active calls, CDRs, trunk counters, its checkpoint.

- `TANDEM_CALLS` (KV): one ActiveCall per call in progress. An ended call's key is deleted,
  and the delete marker it leaves is the proof that the call is over (a late or replayed
  event for it is dropped).
- `TANDEM_CDR` (stream): one Cdr per finished call, published with the Nats-Msg-Id
  "cdr.<call id>" so that a repeat within the duplicate window is dropped by the server.
- `TANDEM_CALLSTATE` (KV, private to callstate): the figures of finished calls with the
  CDR stream sequence they cover, the leader lease, and the leader's statistics (which a
  standby replica serves).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    StorageType,
)
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from tandem import bus
from tandem.callstate.feed import Feed
from tandem.callstate.stats import Ledger
from tandem.pb import tandem_pb2 as pb

log = logging.getLogger("tandem.callstate")

WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's error codes for a failed compare-and-set
STATE_BUCKET = "TANDEM_CALLSTATE"
STATE_KEY = "finished"
STATS_KEY = "stats"
CONSUMER = "callstate"
READ_BATCH = 500
READ_TIMEOUT_S = 1.0
CONSUMER_ACK_WAIT_S = 30.0
CONSUMER_MAX_ACK_PENDING = 20_000


def cdr_msg_id(call_id: str) -> str:
    return f"cdr.{call_id}"


@dataclass
class Checkpoint:
    """The figures of every finished call whose CDR is at or below `cdr_seq` in TANDEM_CDR."""

    cdr_seq: int
    finished: Ledger
    peak: dict[str, int]

    def to_bytes(self) -> bytes:
        data = {"cdr_seq": self.cdr_seq, "finished": self.finished.to_json(), "peak": self.peak}
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        value = json.loads(data)
        return cls(value["cdr_seq"], Ledger.from_json(value["finished"]), value["peak"])


class Store:
    def __init__(self, nc: Client, js: JetStreamContext, replicas: int = 1) -> None:
        self.nc, self.js = nc, js
        self.replicas = replicas  # of the private bucket, as of every other store
        self.revisions: dict[str, int] = {}  # of the active-call records we wrote or loaded
        self.calls: KeyValue
        self.counters: KeyValue
        self.state: KeyValue

    async def open(self) -> None:
        self.calls = await self.js.key_value(bus.ACTIVE_CALLS_BUCKET)
        self.counters = await self.js.key_value(bus.TRUNK_COUNTERS_BUCKET)
        config = KeyValueConfig(bucket=STATE_BUCKET, storage=StorageType.FILE)
        await bus.ensure_bucket(self.js, config.evolve(replicas=self.replicas))
        self.state = await self.js.key_value(STATE_BUCKET)

    # ---- active calls ----------------------------------------------------------------------
    async def load_calls(self, to_write: bool = False) -> dict[str, pb.ActiveCall]:
        """Every active-call record; `to_write` when the leader takes them over."""
        revisions: dict[str, int] = {}
        calls: dict[str, pb.ActiveCall] = {}
        watcher = await self.calls.watchall(ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:  # the initial values are all in
                    break
                if entry.value:
                    calls[entry.key] = pb.ActiveCall.FromString(entry.value)
                    revisions[entry.key] = entry.revision
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        if to_write:
            self.revisions = revisions
        return calls

    async def is_finished(self, call_id: str) -> bool:
        """True when the call's record was deleted: it ended and has its CDR."""
        try:
            await self.calls.get(call_id)
        except KeyNotFoundError as exc:
            return exc.op is not None  # a delete marker, not a key never written
        return False

    async def get_call(self, call_id: str) -> pb.ActiveCall | None:
        try:
            entry = await self.calls.get(call_id)
        except KeyNotFoundError:
            return None
        return pb.ActiveCall.FromString(entry.value or b"")

    async def purge_markers(self, older_than_s: float) -> int:
        """Drop the delete markers of calls that ended long ago; returns how many.

        A marker is only needed while the events of its call may still be replayed, which
        is bounded by how far behind the stream the consumer's ack floor can be.
        """
        watcher = await self.calls.watchall(meta_only=True)
        old = []
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=older_than_s)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.operation in ("DEL", "PURGE") and entry.created < cutoff:
                    old.append(entry.key)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        for key in old:
            await self.js.purge_stream(
                f"KV_{bus.ACTIVE_CALLS_BUCKET}", subject=f"$KV.{bus.ACTIVE_CALLS_BUCKET}.{key}"
            )
        return len(old)

    async def put_call(self, call: pb.ActiveCall) -> None:
        """Write the record if nobody else wrote it since we did (compare-and-set).

        That fences a leader that lost its lease without noticing: its writes fail instead
        of bringing back a call that its successor has ended.
        """
        key = call.call_id
        try:
            self.revisions[key] = await self.calls.update(
                key, call.SerializeToString(), last=self.revisions.get(key, 0)
            )
        except KeyWrongLastSequenceError:
            raise FencedError(f"the record of call {key} changed under us") from None

    async def delete_call(self, call_id: str) -> None:
        revision = self.revisions.pop(call_id, None)
        try:
            await self.calls.delete(call_id, last=revision)
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise FencedError(f"the record of call {call_id} changed under us") from None
            raise

    # ---- CDRs ------------------------------------------------------------------------------
    async def publish_cdr(self, cdr: pb.Cdr) -> int:
        """Write the CDR once; returns its sequence in TANDEM_CDR (the first one's, if repeated)."""
        ack = await self.js.publish(
            bus.cdr(cdr.ingress_trunk or "unknown"),
            cdr.SerializeToString(),
            headers=bus.headers(cdr_msg_id(cdr.call_id)),
        )
        return int(ack.seq)

    async def read_cdrs(
        self,
        *,
        after_seq: int = 0,
        since: datetime.datetime | None = None,
    ) -> AsyncGenerator[tuple[int, pb.Cdr]]:
        """Every CDR after a sequence (or from a time), oldest first, to the stream's end."""
        if after_seq:
            policy, start_seq, start_time = DeliverPolicy.BY_START_SEQUENCE, after_seq + 1, None
        elif since is not None:
            policy, start_seq, start_time = DeliverPolicy.BY_START_TIME, None, since
        else:
            policy, start_seq, start_time = DeliverPolicy.ALL, None, None
        info = await self.js.stream_info(bus.CDR_STREAM)
        if info.state.last_seq <= after_seq or info.state.messages == 0:
            return
        config = ConsumerConfig(
            deliver_policy=policy,
            opt_start_seq=start_seq,
            opt_start_time=start_time,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
        )
        sub = await self.js.pull_subscribe(bus.cdr("*"), stream=bus.CDR_STREAM, config=config)
        try:
            while True:
                try:
                    msgs = await sub.fetch(READ_BATCH, timeout=READ_TIMEOUT_S)
                except TimeoutError:
                    return  # nothing (more) matches
                for msg in msgs:
                    yield msg.metadata.sequence.stream, pb.Cdr.FromString(msg.data)
                if msgs[-1].metadata.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()
            with contextlib.suppress(NotFoundError):  # it goes by itself when idle anyway
                await self.js.delete_consumer(bus.CDR_STREAM, sub._consumer)

    # ---- counters and checkpoint -----------------------------------------------------------
    async def put_counters(self, counters: list[pb.TrunkCounters]) -> None:
        await asyncio.gather(*(self.counters.put(c.trunk, c.SerializeToString()) for c in counters))

    async def put_stats(self, stats: list[dict[str, Any]]) -> None:
        """The leader's statistics, for standby replicas to serve."""
        await self.state.put(STATS_KEY, json.dumps(stats).encode())

    async def load_stats(self) -> list[dict[str, Any]]:
        try:
            entry = await self.state.get(STATS_KEY)
        except KeyNotFoundError:
            return []
        result: list[dict[str, Any]] = json.loads(entry.value or b"[]")
        return result

    async def load_checkpoint(self) -> Checkpoint:
        try:
            entry = await self.state.get(STATE_KEY)
        except KeyNotFoundError:
            return Checkpoint(0, Ledger(), {})
        return Checkpoint.from_bytes(entry.value or b"{}")

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        await self.state.put(STATE_KEY, checkpoint.to_bytes())

    # ---- the event consumer ------------------------------------------------------------------
    async def subscribe_events(self) -> Feed:
        """The durable consumer, restarted just after its ack floor so events come in order.

        Events a dead predecessor had fetched but not acked would otherwise only come back
        after the ack wait, behind newer events of the same calls; re-creating the consumer
        at its ack floor delivers them first. Anything already applied is a duplicate by seq.
        """
        try:
            info = await self.js.consumer_info(bus.CALLS_STREAM, CONSUMER)
            start = info.ack_floor.stream_seq + 1 if info.ack_floor else 1
            await self.js.delete_consumer(bus.CALLS_STREAM, CONSUMER)
            policy = DeliverPolicy.BY_START_SEQUENCE
        except NotFoundError:
            start, policy = 0, DeliverPolicy.ALL
        config = ConsumerConfig(
            durable_name=CONSUMER,
            deliver_policy=policy,
            opt_start_seq=start or None,
            ack_policy=AckPolicy.ALL,  # a batch's last ack acknowledges the whole batch
            ack_wait=CONSUMER_ACK_WAIT_S,
            max_ack_pending=CONSUMER_MAX_ACK_PENDING,
        )
        await self.js.add_consumer(bus.CALLS_STREAM, config=config)
        feed = Feed(self.nc, bus.CALLS_STREAM, CONSUMER)
        await feed.start()
        return feed

    async def last_event_seq(self) -> int:
        info = await self.js.stream_info(bus.CALLS_STREAM)
        return int(info.state.last_seq)


class FencedError(Exception):
    """Another replica wrote what we hold: we are no longer the leader."""
