"""The routing policy in the TANDEM_CONFIG bucket: one key per object, a commit marker, and
a snapshot of the whole policy as of its latest commit.

Keys are `usages`, `trunk.<id>` and `route.<id>` (JSON): the truth, which edits change one
at a time. A writer takes the `lock` key (renewing it while it writes), puts every changed
object, deletes what is gone, puts `commit`, then writes the snapshot: the policy as of
that commit, compressed, in `snapshot.<slot>.<n>` chunks, which the `snapshot` key names
with the commit's revision and a digest. Readers (`Follower`) load the snapshot, then take
every change of the keys they need from the stream just after it, and apply a policy only
when `commit` passes: a reader never sees half a write, and a cold router reads a few
chunks instead of 100,000 keys. Two writers (API calls on two replicas, `tandem config
import`) never interleave their keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import (
    BadRequestError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue
from pydantic import BaseModel

from tandem import bus
from tandem.policy.model import Policy, Route, Trunk

log = logging.getLogger("tandem.policy")

COMMIT_KEY = "commit"
USAGES_KEY = "usages"
LOCK_KEY = "lock"
SNAPSHOT_KEY = "snapshot"
POLICY_KEYS = (USAGES_KEY, "trunk.>", "route.>")  # what a router follows
TRUNK_KEYS = ("trunk.>",)  # what an edge follows
LOCK_WAIT_S = 10.0
LOCK_STALE_S = 30.0  # a writer that died holding the lock loses it this long after its last renewal
LOCK_RENEW_S = 5.0
LOCK_RETRY_S = 0.05
SNAPSHOT_TIMEOUT_S = 10.0
SNAPSHOT_CHUNK = 512 * 1024  # NATS refuses messages over 1 MB by default
SNAPSHOT_SLOTS = ("a", "b")  # a new snapshot goes in the slot the current one is not in
SNAPSHOT_READS = 3  # a snapshot replaced while read is read again, this many times at most
CATCH_UP_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 60.0  # for the last acknowledgement of a whole policy's keys

Parsed = BaseModel | list[str]
Change = tuple[str, bytes, dict[str, str] | None]  # a key, its value, and headers (a delete's)


class PolicyBusyError(Exception):
    """Another writer held the policy lock for longer than we could wait, or took it from us."""


class PolicyNotInForceError(Exception):
    """The policy is stored, but not every reader applied it in time: nothing failed."""

    def __init__(self, revision: int, lagging: list[str], waited_s: float) -> None:
        self.revision, self.lagging = revision, lagging
        super().__init__(
            f"stored as revision {revision}, not yet in force after {waited_s:.0f}s on "
            + ", ".join(lagging)
        )


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """While 100,000 objects are built at once: the cyclic GC would scan them all again and
    again (a third of a cold router's start). They hold no cycles; the caller collects."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def policy_entries(policy: Policy) -> dict[str, bytes]:
    entries = {USAGES_KEY: json.dumps(policy.pstn_usages).encode()}
    entries.update({f"trunk.{t.id}": t.model_dump_json().encode() for t in policy.trunks})
    entries.update({f"route.{r.id}": r.model_dump_json().encode() for r in policy.routes})
    return entries


def is_policy_key(key: str) -> bool:
    return key == USAGES_KEY or key.startswith(("trunk.", "route."))


class PolicyState:
    """The policy's keys as stored now, and as of the last commit; each parsed once, so a
    commit re-reads only what changed and unchanged objects stay the very same ones."""

    def __init__(self) -> None:
        self.raw: dict[str, bytes] = {}  # every policy key as stored now
        self.committed: dict[str, bytes] = {}  # as of the last commit
        self._parsed: dict[str, tuple[bytes, Parsed]] = {}  # the bytes parsed, and the object
        self._shared = SharedValues()

    def put(self, key: str, value: bytes) -> None:
        if is_policy_key(key):
            self.raw[key] = value

    def delete(self, key: str) -> None:
        self.raw.pop(key, None)

    def commit(self) -> None:
        """A commit was stored: the keys as they are now form the policy."""
        self.committed = dict(self.raw)
        for key in self._parsed.keys() - self.committed.keys():
            del self._parsed[key]

    def load(self, entries: dict[str, bytes], trusted: bool) -> None:
        """A snapshot: every key, committed. `trusted` constructs its routes without
        validating them (a writer validated them; `verify` checks them later)."""
        self.raw = dict(entries)
        self.commit()
        if trusted:
            for key, value in entries.items():
                if key.startswith("route."):
                    fields = json.loads(value)
                    self._parsed[key] = (value, self._shared.route(fields, set(fields)))

    def policy(self) -> Policy:
        """The committed policy; ValueError (pydantic's included) if it is invalid."""
        objects: dict[str, Parsed] = {}
        for key, value in self.committed.items():
            cached = self._parsed.get(key)
            if cached is None or cached[0] != value:
                cached = self._parsed[key] = (value, self._compact(_parse(key, value)))
            objects[key] = cached[1]
        usages = objects.get(USAGES_KEY, [])
        trunks = [v for k, v in objects.items() if k.startswith("trunk.")]
        routes = [v for k, v in objects.items() if k.startswith("route.")]
        # each object was validated when its key was read: only the cross-checks run again
        policy = Policy.model_construct(pstn_usages=usages, trunks=trunks, routes=routes)
        return policy.checked()

    def verify(self, key: str) -> None:
        """Validate one key's object as read (ValueError if it is not what it claims)."""
        cached = self._parsed.get(key)
        if cached is not None and _parse(key, cached[0]) != cached[1]:
            raise ValueError(f"{key} differs from its own validation")

    def entries(self, policy: Policy) -> dict[str, bytes]:
        """The policy's keys and values; objects parsed from these keys keep their bytes."""
        entries = {USAGES_KEY: json.dumps(policy.pstn_usages).encode()}
        for prefix, objects in (("trunk.", policy.trunks), ("route.", policy.routes)):
            for item in objects:
                key = prefix + item.id
                cached = self._parsed.get(key)
                same = cached is not None and cached[1] is item
                entries[key] = cached[0] if cached and same else item.model_dump_json().encode()
        return entries

    def _compact(self, parsed: Parsed) -> Parsed:
        if isinstance(parsed, Route):
            return self._shared.route(dict(parsed), set(parsed.model_fields_set))
        return parsed


class SharedValues:
    """One object for each value that many routes repeat: their usages, trunk lists, weights
    and the set of fields given (ten names: a set of 728 bytes, otherwise once per route).

    Routes are frozen and nothing changes their lists in place, so sharing is safe (a
    cold router's 100,000 routes: 120 MB less). What it keeps grows with the distinct
    values only.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[Any, ...], Any] = {}

    def route(self, fields: dict[str, Any], given: set[str]) -> Route:
        """A route of trusted (validated) fields, constructed without validating again."""
        for name in ("pstn_usages", "trunks"):
            items = fields.get(name)
            if isinstance(items, list):
                fields[name] = self._one((name, *items), [_text(i) for i in items])
        weights = fields.get("weights")
        if isinstance(weights, dict):
            pairs = [(_text(t), w) for t, w in weights.items()]
            fields["weights"] = self._one(("weights", *pairs), dict(pairs))
        for name in ("spread", "description", "alternate_caller_id"):
            if name in fields:
                fields[name] = _text(fields[name])
        given &= Route.model_fields.keys()  # as model_construct counts them: no extras
        given = self._one(("fields", *sorted(given)), given)
        return Route.model_construct(_fields_set=given, **fields)

    def _one(self, key: tuple[Any, ...], value: Any) -> Any:
        try:
            return self._values.setdefault(key, value)
        except TypeError:  # an unhashable item in a snapshot's route: `verify` refuses it
            return value


def _text(value: Any) -> Any:
    return sys.intern(value) if type(value) is str else value


def _parse(key: str, value: bytes) -> Parsed:
    if key.startswith(("trunk.", "route.")):
        model: Trunk | Route = (Trunk if key[0] == "t" else Route).model_validate_json(value)
        if key.partition(".")[2] != model.id:
            raise ValueError(f"{key} holds the object with id {model.id!r}")
        return model
    usages = json.loads(value)
    if not isinstance(usages, list) or not all(isinstance(u, str) for u in usages):
        raise ValueError(f"{USAGES_KEY}: expected a list of usage names")
    return usages


def policy_from_entries(entries: dict[str, bytes]) -> Policy:
    state = PolicyState()
    for key, value in entries.items():
        state.put(key, value)
    state.commit()
    return state.policy()


async def config_bucket(js: JetStreamContext) -> KeyValue:
    return await js.key_value(bus.CONFIG_BUCKET)


async def read_entries(kv: KeyValue) -> dict[str, bytes]:
    """Every key's current value, read as one watcher snapshot (quicker than a get per key)."""
    watcher = await kv.watchall(ignore_deletes=True)
    entries: dict[str, bytes] = {}
    try:
        while (entry := await watcher.updates(SNAPSHOT_TIMEOUT_S)) is not None:  # type: ignore[no-untyped-call]
            if entry.value is not None:
                entries[entry.key] = entry.value
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return entries


async def read_policy(kv: KeyValue) -> Policy | None:
    entries = await read_entries(kv)
    if COMMIT_KEY not in entries:
        return None
    return policy_from_entries({k: v for k, v in entries.items() if is_policy_key(k)})


# ---- the writers' lock ------------------------------------------------------------------


class Lock:
    """The policy's write lock while held: renewed in the background, so a write that takes
    longer than LOCK_STALE_S keeps it; `check` says whether another writer took it over."""

    def __init__(self, kv: KeyValue, owner: str, revision: int) -> None:
        self.kv, self.owner, self.revision = kv, owner, revision
        self.lost = False

    def value(self) -> bytes:
        return json.dumps({"owner": self.owner, "time": time.time()}).encode()

    async def keep(self) -> None:
        while not self.lost:
            await asyncio.sleep(LOCK_RENEW_S)
            try:
                self.revision = await self.kv.update(LOCK_KEY, self.value(), last=self.revision)
            except KeyWrongLastSequenceError:
                self.lost = True
                log.error("the policy write lock of %s was taken over", self.owner)
            except Exception as exc:  # NATS slow or away: the next renewal may get through
                log.warning("policy write lock not renewed: %r", exc)

    def check(self) -> None:
        if self.lost:
            raise PolicyBusyError("another writer took the policy lock: nothing was committed")


@asynccontextmanager
async def write_lock(kv: KeyValue, owner: str = "") -> AsyncIterator[Lock]:
    """Hold the policy's write lock; PolicyBusyError if it stays taken for LOCK_WAIT_S."""
    deadline = time.monotonic() + LOCK_WAIT_S
    lock = Lock(kv, owner, 0)
    while True:
        try:
            lock.revision = await kv.create(LOCK_KEY, lock.value())
            break
        except KeyWrongLastSequenceError:
            taken = await _take_stale_lock(kv, lock.value())
            if taken:
                lock.revision = taken
                break
        if time.monotonic() > deadline:
            raise PolicyBusyError("the policy is being changed by another writer: try again")
        await asyncio.sleep(LOCK_RETRY_S)
    keeper = asyncio.create_task(lock.keep())
    try:
        yield lock
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        if not lock.lost:
            with contextlib.suppress(BadRequestError):  # taken over at the very end
                await kv.delete(LOCK_KEY, last=lock.revision)


async def _take_stale_lock(kv: KeyValue, mine: bytes) -> int:
    """The lock's new revision if it was stale and is ours now, else 0."""
    try:
        entry = await kv.get(LOCK_KEY)
    except (KeyNotFoundError, KeyDeletedError):  # freed since: the next create may win
        return 0
    try:
        taken = float(json.loads(entry.value or b"{}").get("time", 0))
    except (ValueError, AttributeError):
        taken = 0.0
    if time.time() - taken < LOCK_STALE_S:
        return 0
    try:
        return await kv.update(LOCK_KEY, mine, last=entry.revision)
    except KeyWrongLastSequenceError:
        return 0


# ---- writing ------------------------------------------------------------------------------


async def write_policy(
    js: JetStreamContext, policy: Policy, known: PolicyState | None = None, lock: Lock | None = None
) -> int:
    """Replace the stored policy with this one (call under write_lock); the commit revision.

    `known` is what the caller knows to be stored (a follower's state): saves reading it
    back, and serializing again the objects it parsed. With the lock, nothing is committed
    if another writer took it over meanwhile (PolicyBusyError).
    """
    kv = await config_bucket(js)
    if known is None:
        known = PolicyState()
        for key, value in (await read_entries(kv)).items():
            known.put(key, value)
    old = dict(known.raw)
    new = await asyncio.to_thread(known.entries, policy)  # 100,000 routes: off the loop
    changes: list[Change] = [(k, v, None) for k, v in new.items() if old.get(k) != v]
    changes += [(k, b"", {KV_OP: KV_DEL}) for k in sorted(old.keys() - new.keys())]
    await _publish_all(js, changes)
    if lock is not None:
        lock.check()
    marker = {"time": time.time(), "trunks": len(policy.trunks), "routes": len(policy.routes)}
    revision = await kv.put(COMMIT_KEY, json.dumps(marker).encode())
    await write_snapshot(kv, revision, new)
    return revision


async def _publish_all(js: JetStreamContext, changes: list[Change]) -> None:
    """Puts and deletes of keys, all in flight at once (nats.py bounds how many), then every
    acknowledgement awaited: 100,000 keys in seconds, where one request each takes half a
    minute. Their order does not matter: the commit comes after them all."""
    prefix = f"$KV.{bus.CONFIG_BUCKET}."
    acks = [await js.publish_async(prefix + k, v, headers=h) for k, v, h in changes]
    await asyncio.wait_for(asyncio.gather(*acks), WRITE_TIMEOUT_S)


@dataclass(frozen=True)
class SnapshotRef:
    """What the `snapshot` key says: which commit, where its chunks are, their digest."""

    revision: int
    slot: str
    chunks: int
    sha256: str

    @classmethod
    def parse(cls, value: bytes) -> SnapshotRef:
        data = json.loads(value)
        return cls(int(data["revision"]), str(data["slot"]), int(data["chunks"]), data["sha256"])

    def chunk(self, n: int) -> str:
        return f"{SNAPSHOT_KEY}.{self.slot}.{n}"


def encode_snapshot(entries: dict[str, bytes]) -> bytes:
    """Each key as `key<TAB>length<LF>` then its value's bytes (in the policy's order), the
    lot compressed. Compressed as it goes: joined first, 100,000 routes made 30 MB at once,
    which a router that writes kept in its RSS."""
    compressor = zlib.compressobj(1)
    parts = []
    for key, value in entries.items():
        parts.append(compressor.compress(f"{key}\t{len(value)}\n".encode() + value))
    parts.append(compressor.flush())
    return b"".join(parts)


def decode_snapshot(blob: bytes) -> dict[str, bytes]:
    data = zlib.decompress(blob)
    entries, at = {}, 0
    while at < len(data):
        end = data.index(b"\n", at)
        key, _, length = data[at:end].partition(b"\t")
        at = end + 1 + int(length)
        entries[key.decode()] = data[end + 1 : at]
    return entries


async def write_snapshot(kv: KeyValue, revision: int, entries: dict[str, bytes]) -> None:
    """The policy as of the commit at `revision`, in the slot the current snapshot is not in."""
    current = await _snapshot_ref(kv)
    slot = SNAPSHOT_SLOTS[current is not None and current.slot == SNAPSHOT_SLOTS[0]]
    blob = await asyncio.to_thread(encode_snapshot, entries)
    chunks = [blob[at : at + SNAPSHOT_CHUNK] for at in range(0, len(blob), SNAPSHOT_CHUNK)]
    ref = SnapshotRef(revision, slot, len(chunks), hashlib.sha256(blob).hexdigest())
    # purge first: a chunk key then holds its latest value only, not a history of snapshots
    await asyncio.gather(*(kv.purge(ref.chunk(n)) for n in range(len(chunks))))
    await asyncio.gather(*(kv.put(ref.chunk(n), chunk) for n, chunk in enumerate(chunks)))
    value = {"revision": revision, "slot": slot, "chunks": len(chunks), "sha256": ref.sha256}
    await kv.put(SNAPSHOT_KEY, json.dumps(value).encode())


async def _snapshot_ref(kv: KeyValue) -> SnapshotRef | None:
    try:
        entry = await kv.get(SNAPSHOT_KEY)
    except (KeyNotFoundError, KeyDeletedError):
        return None
    try:
        return SnapshotRef.parse(entry.value or b"")
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable policy snapshot key: ignored")
        return None


async def read_snapshot(kv: KeyValue) -> tuple[int, bytes] | None:
    """The latest snapshot (its commit revision and compressed bytes), or None when there is
    none or it cannot be read whole (then the stream itself is read)."""
    for _ in range(SNAPSHOT_READS):
        ref = await _snapshot_ref(kv)
        if ref is None:
            return None
        try:
            chunks = await asyncio.gather(*(kv.get(ref.chunk(n)) for n in range(ref.chunks)))
        except (KeyNotFoundError, KeyDeletedError):
            continue  # replaced while we read it
        blob = b"".join(chunk.value or b"" for chunk in chunks)
        if hashlib.sha256(blob).hexdigest() == ref.sha256:
            return ref.revision, blob
    log.warning("the policy snapshot changed under every read: reading the stream instead")
    return None


async def import_policy(js: JetStreamContext, policy: Policy, if_empty: bool = False) -> bool:
    """Store the policy; with if_empty, only when the bucket holds none. True if written."""
    kv = await config_bucket(js)
    async with write_lock(kv, "import") as lock:
        if if_empty:
            try:
                await kv.get(COMMIT_KEY)
                return False
            except KeyNotFoundError:
                pass
        await write_policy(js, policy, lock=lock)
    return True


def is_delete(operation: str | None) -> bool:
    return operation in (KV_DEL, KV_PURGE)


# ---- following ----------------------------------------------------------------------------


class Follower:
    """The policy as TANDEM_CONFIG holds it, followed live: the latest snapshot first, then
    every change of the keys followed, in stream order, applied at each commit.

    `on_commit(revision)` is awaited with `state` at that commit: once caught up with the
    stream (for the last commit stored, never for keys written after it), then for each
    commit that follows. Nothing else changes `state` while it runs.
    """

    def __init__(
        self,
        js: JetStreamContext,
        on_commit: Callable[[int], Awaitable[None]],
        keys: Iterable[str] = POLICY_KEYS,
        trusted: bool = False,
    ) -> None:
        self.js = js
        self.on_commit = on_commit
        self.keys = (*keys, COMMIT_KEY)
        self.trusted = trusted  # routes from the snapshot are constructed, not validated
        self.state = PolicyState()
        self.revision = 0  # the last revision taken and, for a commit, applied
        self.commit = 0  # the revision of the commit `state.committed` is
        self.from_snapshot = False
        self.caught_up = asyncio.Event()
        self._prefix = f"$KV.{bus.CONFIG_BUCKET}."
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub: JetStreamContext.PushSubscription | None = None

    async def run(self) -> None:
        """Follow until cancelled."""
        kv = await self.js.key_value(bus.CONFIG_BUCKET)
        snapshot = await read_snapshot(kv)
        if snapshot is not None:
            self.commit, blob = snapshot
            await asyncio.to_thread(self._load, blob)
            self.revision, self.from_snapshot = self.commit, True
        sub = await self.js.subscribe(
            self._prefix + self.keys[0],
            stream=f"KV_{bus.CONFIG_BUCKET}",
            cb=self._queue.put,
            ordered_consumer=True,
            config=ConsumerConfig(
                filter_subjects=[self._prefix + key for key in self.keys],
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.revision + 1,
            ),
        )
        self._sub = sub
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and self._queue.empty():
                await self._caught_up()
            while True:
                await self._take(await self._queue.get())
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _load(self, blob: bytes) -> None:
        with gc_paused():
            entries = decode_snapshot(blob)
            wanted = tuple(key.removesuffix(">") for key in self.keys)
            chosen = {k: v for k, v in entries.items() if k.startswith(wanted)}
            self.state.load(chosen, self.trusted)

    async def _take(self, msg: Msg) -> None:
        key = msg.subject[len(self._prefix) :]
        revision = msg.metadata.sequence.stream
        if msg.headers and is_delete(msg.headers.get(KV_OP)):
            self.state.delete(key)
        else:
            self.state.put(key, msg.data)
        if key == COMMIT_KEY:
            self.state.commit()
            self.commit = revision
            if self.caught_up.is_set():
                await self.on_commit(revision)
        self.revision = max(self.revision, revision)
        if not self.caught_up.is_set() and msg.metadata.num_pending == 0:
            await self._caught_up()

    async def _caught_up(self) -> None:
        if self.commit:  # keys without any commit are a first import still under way
            await self.on_commit(self.commit)
        self.caught_up.set()

    async def sync(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """Return once everything stored now in the keys followed has been taken;
        TimeoutError if that takes longer than timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._sub is None:
                raise TimeoutError("not following the policy store yet")
            info = await self._sub.consumer_info()
            delivered = info.delivered.stream_seq if info.delivered else 0
            if info.num_pending == 0 and self.revision >= (delivered or 0):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the policy store was not caught up in {timeout_s}s")
            await asyncio.sleep(0.005)

    async def applied(self, revision: int, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """Return once the commit at `revision` (or a later one) has been applied here."""
        deadline = time.monotonic() + timeout_s
        while self.revision < revision:
            if time.monotonic() > deadline:
                raise TimeoutError(f"policy revision {revision} not seen in {timeout_s}s")
            await asyncio.sleep(0.005)
