"""The routing policy in the TANDEM_CONFIG bucket: one key per object, and a commit marker.

Keys are `usages`, `trunk.<id>` and `route.<id>` (JSON). A writer takes the `lock` key,
puts every changed object, deletes what is gone, then puts `commit` and frees the lock;
readers rebuild their policy when `commit` moves, so an import of the whole policy is seen
all at once, and two writers (API calls on two replicas, `tandem config import`) never
interleave their keys.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import BaseModel

from tandem import bus
from tandem.policy.model import Policy, Route, Trunk

COMMIT_KEY = "commit"
USAGES_KEY = "usages"
LOCK_KEY = "lock"
LOCK_WAIT_S = 10.0
LOCK_STALE_S = 30.0  # a writer that died holding the lock loses it after this long
LOCK_RETRY_S = 0.05
SNAPSHOT_TIMEOUT_S = 10.0
WRITE_BATCH = 512


class PolicyBusyError(Exception):
    """Another writer held the policy lock for longer than we could wait."""


def policy_entries(policy: Policy) -> dict[str, bytes]:
    entries = {USAGES_KEY: json.dumps(policy.pstn_usages).encode()}
    entries.update({f"trunk.{t.id}": t.model_dump_json().encode() for t in policy.trunks})
    entries.update({f"route.{r.id}": r.model_dump_json().encode() for r in policy.routes})
    return entries


def is_policy_key(key: str) -> bool:
    return key == USAGES_KEY or key.startswith(("trunk.", "route."))


class PolicyState:
    """The policy's keys as last seen, each parsed once: a commit re-reads only what changed."""

    def __init__(self) -> None:
        self.raw: dict[str, bytes] = {}
        self._parsed: dict[str, BaseModel | list[str]] = {}

    def put(self, key: str, value: bytes) -> None:
        if is_policy_key(key) and self.raw.get(key) != value:
            self.raw[key] = value
            self._parsed.pop(key, None)

    def delete(self, key: str) -> None:
        self.raw.pop(key, None)
        self._parsed.pop(key, None)

    def policy(self) -> Policy:
        """The policy these keys describe; ValueError (pydantic's included) if it is invalid."""
        for key, value in self.raw.items():
            if key not in self._parsed:
                self._parsed[key] = _parse(key, value)
        usages = self._parsed.get(USAGES_KEY, [])
        trunks = [v for k, v in self._parsed.items() if k.startswith("trunk.")]
        routes = [v for k, v in self._parsed.items() if k.startswith("route.")]
        # each object was validated when its key was read: only the cross-checks run again
        policy = Policy.model_construct(pstn_usages=usages, trunks=trunks, routes=routes)
        return policy.checked()

    def entries(self, policy: Policy) -> dict[str, bytes]:
        """The policy's keys and values; objects parsed from these keys keep their bytes."""
        entries = {USAGES_KEY: json.dumps(policy.pstn_usages).encode()}
        for prefix, objects in (("trunk.", policy.trunks), ("route.", policy.routes)):
            for item in objects:
                key = prefix + item.id
                same = self._parsed.get(key) is item
                entries[key] = self.raw[key] if same else item.model_dump_json().encode()
        return entries


def _parse(key: str, value: bytes) -> BaseModel | list[str]:
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


@asynccontextmanager
async def write_lock(kv: KeyValue, owner: str = "") -> AsyncIterator[None]:
    """Hold the policy's write lock; PolicyBusyError if it stays taken for LOCK_WAIT_S."""
    deadline = time.monotonic() + LOCK_WAIT_S
    mine = json.dumps({"owner": owner, "time": time.time()}).encode()
    while True:
        try:
            await kv.create(LOCK_KEY, mine)
            break
        except KeyWrongLastSequenceError:
            if await _take_stale_lock(kv, mine):
                break
        if time.monotonic() > deadline:
            raise PolicyBusyError("the policy is being changed by another writer: try again")
        await asyncio.sleep(LOCK_RETRY_S)
    try:
        yield
    finally:
        await kv.delete(LOCK_KEY)


async def _take_stale_lock(kv: KeyValue, mine: bytes) -> bool:
    try:
        entry = await kv.get(LOCK_KEY)
    except (KeyNotFoundError, KeyDeletedError):  # freed since: the next create may win
        return False
    try:
        taken = float(json.loads(entry.value or b"{}").get("time", 0))
    except (ValueError, AttributeError):
        taken = 0.0
    if time.time() - taken < LOCK_STALE_S:
        return False
    try:
        await kv.update(LOCK_KEY, mine, last=entry.revision)
    except KeyWrongLastSequenceError:
        return False
    return True


async def write_policy(kv: KeyValue, policy: Policy, known: PolicyState | None = None) -> int:
    """Replace the stored policy with this one (call under write_lock); the commit revision.

    `known` is what the caller knows to be stored (a watcher's state): saves reading it back,
    and serializing again the objects it parsed.
    """
    if known is None:
        known = PolicyState()
        for key, value in (await read_entries(kv)).items():
            known.put(key, value)
    old = dict(known.raw)
    new = known.entries(policy)
    puts = [(k, v) for k, v in new.items() if old.get(k) != v]
    gone = sorted(old.keys() - new.keys())
    for start in range(0, len(puts), WRITE_BATCH):  # pipelined: 100,000 routes in seconds
        await asyncio.gather(*(kv.put(k, v) for k, v in puts[start : start + WRITE_BATCH]))
    for start in range(0, len(gone), WRITE_BATCH):
        await asyncio.gather(*(kv.delete(k) for k in gone[start : start + WRITE_BATCH]))
    marker = {"time": time.time(), "trunks": len(policy.trunks), "routes": len(policy.routes)}
    return await kv.put(COMMIT_KEY, json.dumps(marker).encode())


async def import_policy(js: JetStreamContext, policy: Policy, if_empty: bool = False) -> bool:
    """Store the policy; with if_empty, only when the bucket holds none. True if written."""
    kv = await config_bucket(js)
    async with write_lock(kv, "import"):
        if if_empty:
            try:
                await kv.get(COMMIT_KEY)
                return False
            except KeyNotFoundError:
                pass
        await write_policy(kv, policy)
    return True


def is_delete(operation: str | None) -> bool:
    return operation in (KV_DEL, KV_PURGE)
