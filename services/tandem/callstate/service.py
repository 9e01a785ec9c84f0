"""The callstate process: applies call events to records, writes CDRs and counters, serves the API.

One replica leads at a time (the lease in `lease.py`); any other waits as a hot standby
and serves the API from what the leader keeps in NATS. The leader keeps everything it
derives there (records in KV, CDRs in a stream, the figures of finished calls in a
checkpoint), so it can be killed at any moment: the next leader reloads that state and
re-reads the events from the consumer's ack floor, and every event already applied is
recognised by its per-call seq, or by the delete marker of a call that has ended.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tandem import bus
from tandem.callstate import api, console, lease, records
from tandem.callstate.feed import Feed
from tandem.callstate.metrics import EVENTS, register
from tandem.callstate.stats import Figures, Ledger
from tandem.callstate.store import Checkpoint, Store
from tandem.http import create_app
from tandem.lease import Lease
from tandem.pb import tandem_pb2 as pb
from tandem.process import Context

log = logging.getLogger("tandem.callstate")

FETCH_TIMEOUT_S = 0.5
HOUSEKEEPING_S = 0.2  # the router reads trunk counters: keep them well within a second
EDGE_CHECK_S = 1.0
STATS_EVERY_S = 1.0  # how stale a standby's /v1/stats may be
CHECKPOINT_EVERY_S = 5.0
RECENTLY_ENDED = 100_000  # ended call ids remembered in memory (the KV marker is the truth)
RETRY_S = 1.0
PURGE_EVERY_S = 600.0
MARKERS_KEPT_S = 6 * 3600.0  # longer than any backlog callstate would still be replaying
HANGUP_TIMEOUT_S = 2.0


Ended = tuple[pb.ActiveCall, pb.Cdr]  # a call that has just ended, and its CDR


@dataclass
class EdgeSeen:
    """The last heartbeat of one edge, by our clocks."""

    monotonic: float
    unix_ms: int
    calls: set[str] = field(default_factory=set)
    listed: bool = False  # the heartbeat lists every call the edge owns


class Service:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.edge_lost_s = ctx.config.callstate.edge_lost_s
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.store = Store(ctx.nc, ctx.js, ctx.config.replicas)
        self.lease: Lease | None = None
        self.calls: dict[str, pb.ActiveCall] = {}
        self.live = Ledger()  # calls in progress
        self.checkpoint = Checkpoint(0, Ledger(), {})  # finished calls
        self.recently_ended: OrderedDict[str, None] = OrderedDict()
        self.edges: dict[str, EdgeSeen] = {}
        self.missing_since: dict[str, float] = {}  # calls their edge's heartbeat did not list
        self.dirty_trunks: set[str] = set()
        self.lock = asyncio.Lock()
        self.leading = False
        self.caught_up = False  # no event waits in the stream: the records are current
        self.replay_until = 0  # events up to here may have been applied by an earlier leader
        self.stopping = False
        self.cdrs_written = 0
        self._task: asyncio.Task[None] | None = None
        self._heartbeats: Subscription | None = None
        self.app = create_app("callstate", ready=self.ready, token=ctx.token)
        api.mount(self.app, self)
        console.mount(self.app, self, ctx.js, ctx.config)

    # ---- life cycle -------------------------------------------------------------------------
    def ready(self) -> bool:
        # a standby serves the API too (from NATS), so both replicas take traffic
        return bool(self.ctx.nc.is_connected)

    async def start(self) -> None:
        await self.store.open()
        self.lease = Lease(self.store.state, self.replica, lease.LEASE_KEY, lease.LEASE_TTL_S)
        self._heartbeats = await self.ctx.nc.subscribe(
            bus.edge_heartbeat("*"), cb=self._on_heartbeat
        )
        register(self)
        self._task = asyncio.create_task(self._run())

    async def drain(self) -> None:
        """Finish the batch in hand, save the checkpoint, and hand the lease on at once."""
        self.stopping = True
        if self._task is not None:
            await asyncio.wait({self._task})

    async def stop(self) -> None:
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        if self._heartbeats is not None:
            await self._heartbeats.unsubscribe()
        register(self, remove=True)

    async def _run(self) -> None:
        assert self.lease is not None
        while not self.stopping:
            try:
                if not await self.lease.try_acquire():
                    await asyncio.sleep(self.lease.renew_every_s)
                    continue
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception:
                # NATS gone or slow: drop what is in memory and rebuild it from NATS
                log.exception("callstate stopped leading; recovering in %ss", RETRY_S)
                await asyncio.sleep(RETRY_S)
            finally:
                self.leading = False
        if self.lease.revision:
            try:
                await self.lease.release()
            except Exception:  # the lease then simply expires
                log.warning("could not release the leader lease", exc_info=True)

    async def _lead(self) -> None:
        await self._recover()
        feed = await self.store.subscribe_events()
        self.leading, self.caught_up = True, False
        log.info("callstate leading: %d calls in progress", len(self.calls))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._consume(feed))
                group.create_task(self._keep_lease())
                group.create_task(self._housekeeping())
                group.create_task(self._purge_markers())
        finally:
            self.leading = False
            await feed.stop()
        await self.store.save_checkpoint(self.checkpoint)

    # ---- recovery ----------------------------------------------------------------------------
    async def _recover(self) -> None:
        """Rebuild memory from NATS: records, finished-call figures, CDRs past the checkpoint."""
        self.replay_until = await self.store.last_event_seq()
        self.checkpoint = await self.store.load_checkpoint()
        self.calls = await self.store.load_calls(to_write=True)
        self.recently_ended.clear()
        async for seq, cdr in self.store.read_cdrs(after_seq=self.checkpoint.cdr_seq):
            self.checkpoint.finished.add(cdr)
            self.checkpoint.cdr_seq = seq
            self._remember_ended(cdr.call_id)
            if self.calls.pop(cdr.call_id, None) is not None:
                # written just before a crash, the record not yet deleted: the call is over
                await self.store.delete_call(cdr.call_id)
        # ended before a crash, its CDR not written yet: write it now
        ended = [c for c in self.calls.values() if c.state == records.State.ENDED]
        for call in ended:
            del self.calls[call.call_id]
            self._remember_ended(call.call_id)
        await self._persist([], [(c, records.cdr(c, c.timeline[-1])) for c in ended])
        self.live = Ledger()
        for call in self.calls.values():
            self.live.add(call)
        now = time.monotonic()
        for call in self.calls.values():  # an edge we never hear from must still time out
            self.edges.setdefault(call.edge, EdgeSeen(now, bus.now_ms()))
        self.dirty_trunks = self.live.trunks() | self.checkpoint.finished.trunks()
        await self._publish_counters()
        await self.store.save_checkpoint(self.checkpoint)

    # ---- events ------------------------------------------------------------------------------
    async def _consume(self, feed: Feed) -> None:
        while not self.stopping:
            msgs = await feed.next_batch(FETCH_TIMEOUT_S)
            if not msgs:
                self.caught_up = True
                continue
            self.caught_up = msgs[-1].metadata.num_pending == 0
            self._check_lease()
            async with self.lock:
                await self._process(msgs)

    def _check_lease(self) -> None:
        if self.lease is None or not self.lease.held:
            raise LeaseLostError("the leader lease was not renewed in time")

    async def _process(self, msgs: list[Msg]) -> None:
        events: list[pb.CallEvent] = []
        suspect: set[str] = set()  # calls that may have ended already: ask the KV
        new: set[str] = set()  # calls that began in this batch: their next events are no replay
        for msg in msgs:
            try:
                event = pb.CallEvent.FromString(msg.data)
            except DecodeError:
                log.warning("undecodable call event on %s: dropped", msg.subject)
                EVENTS.labels("undecodable").inc()
                continue
            event.call_id = event.call_id or msg.subject.split(".")[2]
            events.append(event)
            if event.call_id in new:
                continue
            if self._may_be_replay(msg, event):
                suspect.add(event.call_id)
            elif event.call_id not in self.calls:
                new.add(event.call_id)
        await self._skip_finished(suspect)
        await self._persist(*self._apply(events))
        if msgs:  # the consumer acknowledges all before it with the last (AckPolicy.ALL)
            await msgs[-1].ack()

    def _may_be_replay(self, msg: Msg, event: pb.CallEvent) -> bool:
        """False only for the first event of a new call, seen for the first time.

        A call's first event (started, seq 1) delivered once and past what any earlier leader
        could have read is new; anything else about a call we do not hold may concern one
        that ended (and was deleted) before, which only the KV can tell.
        """
        if event.call_id in self.calls or event.call_id in self.recently_ended:
            return False
        meta = msg.metadata
        first = event.kind == records.Kind.STARTED and event.seq == 1
        return not first or meta.num_delivered > 1 or meta.sequence.stream <= self.replay_until

    async def _skip_finished(self, call_ids: set[str]) -> None:
        """Remember which unknown calls already ended (their events are replays)."""
        unknown = [c for c in call_ids if c not in self.calls and c not in self.recently_ended]
        finished = await asyncio.gather(*(self.store.is_finished(c) for c in unknown))
        for call_id, done in zip(unknown, finished, strict=True):
            if done:
                self._remember_ended(call_id)

    def _apply(self, events: list[pb.CallEvent]) -> tuple[list[pb.ActiveCall], list[Ended]]:
        """Apply a batch in memory: the records it changed, and the CDRs of the calls it ended.

        A call's contribution to the live figures is taken out before its first event in the
        batch and put back after its last, and the peaks are sampled then: once per batch.
        """
        changed: dict[str, pb.ActiveCall] = {}
        ended: list[Ended] = []
        for event in events:
            if event.call_id in self.recently_ended:
                EVENTS.labels("after_end").inc()
                continue
            call = self.calls.get(event.call_id)
            if call is None:
                call = self.calls[event.call_id] = records.new_call(event)
            elif records.is_duplicate(call, event):
                EVENTS.labels("duplicate").inc()
                continue
            elif call.call_id not in changed:
                self.dirty_trunks |= self.live.add(call, -1)
            changed[call.call_id] = call
            seen = self.edges.get(call.edge)
            if seen is not None:  # an edge that sends events is alive, heartbeat or not
                seen.monotonic = max(seen.monotonic, time.monotonic())
            records.apply(call, event)
            EVENTS.labels("applied").inc()
            if call.state == records.State.ENDED:
                del self.calls[call.call_id], changed[call.call_id]
                self.missing_since.pop(call.call_id, None)
                self._remember_ended(call.call_id)
                ended.append((call, records.cdr(call, event)))
        for call in changed.values():
            touched = self.live.add(call)
            for trunk in touched:
                self.peak(trunk)
            self.dirty_trunks |= touched
        return list(changed.values()), ended

    async def _persist(self, changed: list[pb.ActiveCall], ended: list[Ended]) -> None:
        """Write the records, then the CDRs, then delete the ended calls' records.

        An ended call's record is written first (state "ended") like any other: that write
        is compare-and-set, so a leader that was replaced fails there, before any CDR; and a
        leader whose lease ran out while it wrote renews it or stops, before the CDRs. A crash
        after it is repaired at recovery, whether the CDR got written or not.
        """
        records_out = [*changed, *(call for call, _ in ended)]
        await asyncio.gather(*(self.store.put_call(call) for call in records_out))
        if not ended:
            return
        # a leader that stalled past its lease (its writes above were slow) renews it before
        # writing CDRs, or leaves them to the one that took it over: the stream's duplicate
        # window is only 2 minutes, and a lease renewed is one nobody else holds
        assert self.lease is not None
        if not self.lease.held and not await self.lease.renew():
            raise LeaseLostError("the leader lease was taken over while writing a batch")
        cdrs = [cdr for _, cdr in ended]
        seqs = await asyncio.gather(*(self.store.publish_cdr(cdr) for cdr in cdrs))
        await asyncio.gather(*(self.store.delete_call(cdr.call_id) for cdr in cdrs))
        for seq, cdr in sorted(zip(seqs, cdrs, strict=True), key=lambda pair: pair[0]):
            if seq > self.checkpoint.cdr_seq:  # not a repeat of a CDR already counted
                self.dirty_trunks |= self.checkpoint.finished.add(cdr)
                self.checkpoint.cdr_seq = seq
                self.cdrs_written += 1

    def _remember_ended(self, call_id: str) -> None:
        self.recently_ended[call_id] = None
        while len(self.recently_ended) > RECENTLY_ENDED:
            self.recently_ended.popitem(last=False)

    # ---- edges -------------------------------------------------------------------------------
    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = pb.EdgeHeartbeat.FromString(msg.data)
        except DecodeError:
            return
        edge = beat.edge or msg.subject.split(".")[2]
        calls = set(beat.calls)
        self.edges[edge] = EdgeSeen(
            time.monotonic(), bus.now_ms(), calls, listed=len(calls) == beat.active_calls
        )
        for call_id in calls:
            self.missing_since.pop(call_id, None)

    def _lost_calls(self) -> list[tuple[pb.ActiveCall, int]]:
        """Calls whose edge went silent, or that their edge stopped listing, for too long."""
        now = time.monotonic()
        lost = []
        for call in self.calls.values():
            seen = self.edges.setdefault(call.edge, EdgeSeen(now, bus.now_ms()))
            if now - seen.monotonic > self.edge_lost_s:
                lost.append((call, seen.unix_ms))
            elif seen.listed and call.call_id not in seen.calls:
                # an edge that restarted has forgotten the call: it will never send its end
                since = self.missing_since.setdefault(call.call_id, now)
                if now - since > self.edge_lost_s:
                    lost.append((call, bus.now_ms()))
        return lost

    async def _close_lost_calls(self) -> None:
        if not self.caught_up:
            # behind the stream, a call's `ended` may be waiting in it: judge none yet
            self.missing_since.clear()
            return
        async with self.lock:
            ends = []
            for call, heard_ms in self._lost_calls():
                last_ms = max((e.time_unix_ms for e in call.timeline), default=0)
                ends.append(
                    records.ended_event(
                        call, max(heard_ms, last_ms), records.EDGE_LOST, records.EDGE_LOST_REASON
                    )
                )
                log.warning("call %s closed: edge %s lost", call.call_id, call.edge)
            await self._persist([], self._apply(ends)[1])

    # ---- housekeeping: the lease, counters for the router, edge timeouts, checkpoint --------
    async def _keep_lease(self) -> None:
        """Renew the lease on its own, never behind the lock a long batch holds."""
        assert self.lease is not None
        while not self.stopping:
            await asyncio.sleep(self.lease.renew_every_s)
            if not await self.lease.renew():
                raise LeaseLostError("another replica holds the leader lease")

    async def _housekeeping(self) -> None:
        next_checkpoint = next_edge_check = next_stats = time.monotonic()
        while not self.stopping:
            await asyncio.sleep(HOUSEKEEPING_S)
            now = time.monotonic()
            if now >= next_edge_check:
                await self._close_lost_calls()
                next_edge_check = now + EDGE_CHECK_S
            await self._publish_counters()
            if now >= next_checkpoint:
                self.dirty_trunks |= self.live.trunks() | self.checkpoint.finished.trunks()
                await self.store.save_checkpoint(self.checkpoint)
                next_checkpoint = now + CHECKPOINT_EVERY_S
            if now >= next_stats:
                await self.store.put_stats(self.all_stats())
                next_stats = now + STATS_EVERY_S

    async def _purge_markers(self) -> None:
        next_purge = time.monotonic() + PURGE_EVERY_S
        while not self.stopping:
            await asyncio.sleep(HOUSEKEEPING_S)  # short sleeps: a drain must not wait for it
            if time.monotonic() < next_purge:
                continue
            next_purge = time.monotonic() + PURGE_EVERY_S
            try:
                purged = await self.store.purge_markers(MARKERS_KEPT_S)
            except Exception:  # only storage is at stake: try again next time
                log.warning("could not purge the markers of ended calls", exc_info=True)
            else:
                log.info("purged the markers of %d calls ended long ago", purged)

    async def _publish_counters(self) -> None:
        trunks, self.dirty_trunks = self.dirty_trunks, set()
        counters = [self.counters(trunk) for trunk in sorted(trunks) if trunk]
        try:
            await self.store.put_counters(counters)
        except Exception:
            self.dirty_trunks |= trunks
            raise

    # ---- figures -----------------------------------------------------------------------------
    def figures(self, trunk: str) -> dict[str, Figures]:
        out = {}
        for direction in ("in", "out"):
            total = Figures()
            total.add(self.checkpoint.finished.get(trunk, direction))
            total.add(self.live.get(trunk, direction))
            out[direction] = total
        return out

    def active(self, trunk: str) -> tuple[int, int]:
        return self.live.get(trunk, "in").active, self.live.get(trunk, "out").active

    def peak(self, trunk: str) -> int:
        active = sum(self.active(trunk))
        peak = max(self.checkpoint.peak.get(trunk, 0), active)
        self.checkpoint.peak[trunk] = peak
        return peak

    def trunks(self) -> list[str]:
        return sorted(t for t in self.live.trunks() | self.checkpoint.finished.trunks() if t)

    def both_ways(self, trunk: str) -> Figures:
        total = Figures()
        for part in self.figures(trunk).values():
            total.add(part)
        return total

    def counters(self, trunk: str) -> pb.TrunkCounters:
        both = self.both_ways(trunk)
        active_in, active_out = self.active(trunk)
        return pb.TrunkCounters(
            trunk=trunk,
            active_in=active_in,
            active_out=active_out,
            attempts=both.attempts,
            answered=both.answered,
            updated_unix_ms=bus.now_ms(),
            failures=both.failures,
            peak_active=self.peak(trunk),
        )

    def all_stats(self) -> list[dict[str, Any]]:
        return [self.trunk_stats(t) for t in self.trunks()]

    # ---- reads for the API: from memory when leading, from NATS on a standby -----------------
    async def active_calls(self) -> list[pb.ActiveCall]:
        calls = self.calls if self.leading else await self.store.load_calls()
        return sorted(calls.values(), key=lambda c: c.invite_unix_ms)

    async def active_call(self, call_id: str) -> pb.ActiveCall | None:
        if self.leading:
            return self.calls.get(call_id)
        return await self.store.get_call(call_id)

    async def stats(self) -> list[dict[str, Any]]:
        return self.all_stats() if self.leading else await self.store.load_stats()

    def read_cdrs(
        self, *, after_seq: int = 0, since: datetime.datetime | None = None
    ) -> AsyncGenerator[tuple[int, pb.Cdr]]:
        # leading or not: CDRs are kept in their stream only
        return self.store.read_cdrs(after_seq=after_seq, since=since)

    def trunk_stats(self, trunk: str) -> dict[str, Any]:
        figures = self.figures(trunk)
        active_in, active_out = self.active(trunk)
        return {
            "trunk": trunk,
            **self.both_ways(trunk).summary(),
            "active_in": active_in,
            "active_out": active_out,
            "active": active_in + active_out,
            "peak": self.peak(trunk),
            "inbound": figures["in"].summary(),
            "outbound": figures["out"].summary(),
        }

    # ---- commands for the API ----------------------------------------------------------------
    async def hang_up(self, call_id: str, reason: str) -> pb.CommandReply:
        """Ask the call's ingress edge to end it; nats' TimeoutError or NoRespondersError if
        no edge answers."""
        hangup = pb.Hangup(call_id=call_id, reason=reason)
        subject = bus.call_hangup(call_id)
        return await bus.request(self.ctx.nc, subject, hangup, pb.CommandReply, HANGUP_TIMEOUT_S)


class LeaseLostError(Exception):
    """This replica may no longer apply events: another one leads, or may lead, now."""
