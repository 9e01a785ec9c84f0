"""The policy in TANDEM_CONFIG: whole-policy writes, reads, and the writers' lock."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc

import pytest
from nats.js import JetStreamContext

from tandem import bus
from tandem.policy import Policy, store
from tests.router.policies import redmond


async def test_a_written_policy_reads_back_whole(js: JetStreamContext) -> None:
    kv = await js.key_value(bus.CONFIG_BUCKET)
    assert await store.read_policy(kv) is None
    assert await store.import_policy(js, redmond())
    assert await store.read_policy(kv) == redmond()
    assert not await store.import_policy(js, redmond(), if_empty=True)
    smaller = redmond().model_copy(update={"routes": redmond().routes[:1]})
    async with store.write_lock(kv):
        await store.write_policy(js, smaller)
    assert await store.read_policy(kv) == smaller
    assert "route.Universal" not in await store.read_entries(kv)  # deleted, not left behind


async def test_a_held_lock_makes_a_writer_wait_then_give_up(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv = await js.key_value(bus.CONFIG_BUCKET)
    monkeypatch.setattr(store, "LOCK_WAIT_S", 0.3)
    async with store.write_lock(kv, "first"):
        with pytest.raises(store.PolicyBusyError):
            async with store.write_lock(kv, "second"):
                pass
    async with store.write_lock(kv, "third"):  # freed: the next writer gets it at once
        pass


async def test_the_lock_of_a_writer_that_died_is_taken_over(js: JetStreamContext) -> None:
    kv = await js.key_value(bus.CONFIG_BUCKET)
    dead = {"owner": "crashed", "time": time.time() - 2 * store.LOCK_STALE_S}
    await kv.put(store.LOCK_KEY, json.dumps(dead).encode())
    started = time.monotonic()
    assert await store.import_policy(js, redmond())
    assert time.monotonic() - started < store.LOCK_WAIT_S


async def test_a_key_must_hold_the_object_it_names() -> None:
    state = store.PolicyState()
    for key, value in store.policy_entries(redmond()).items():
        state.put(key, value)
    state.put("route.other", state.raw["route.Universal"])
    state.commit()
    with pytest.raises(ValueError, match=r"route\.other holds the object with id 'Universal'"):
        state.policy()


async def test_the_snapshot_is_the_policy_as_of_its_commit(js: JetStreamContext) -> None:
    kv = await js.key_value(bus.CONFIG_BUCKET)
    assert await store.read_snapshot(kv) is None
    assert await store.import_policy(js, redmond())
    revision, blob = await store.read_snapshot(kv) or (0, b"")
    assert revision == (await kv.get(store.COMMIT_KEY)).revision
    assert store.policy_from_entries(store.decode_snapshot(blob)) == redmond()
    smaller = redmond().model_copy(update={"routes": redmond().routes[:1]})
    async with store.write_lock(kv) as lock:
        await store.write_policy(js, smaller, lock=lock)
    _, blob = await store.read_snapshot(kv) or (0, b"")
    assert store.policy_from_entries(store.decode_snapshot(blob)) == smaller


async def test_a_snapshot_torn_by_a_writer_is_not_used(js: JetStreamContext) -> None:
    kv = await js.key_value(bus.CONFIG_BUCKET)
    assert await store.import_policy(js, redmond())
    ref = json.loads((await kv.get(store.SNAPSHOT_KEY)).value or b"")
    await kv.put(f"snapshot.{ref['slot']}.0", b"half of another snapshot")
    assert await store.read_snapshot(kv) is None  # the digest says so: read the stream instead


async def test_a_long_write_keeps_its_lock(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv = await js.key_value(bus.CONFIG_BUCKET)
    monkeypatch.setattr(store, "LOCK_STALE_S", 0.6)
    monkeypatch.setattr(store, "LOCK_RENEW_S", 0.1)
    monkeypatch.setattr(store, "LOCK_WAIT_S", 1.5)
    async with store.write_lock(kv, "long") as lock:
        with pytest.raises(store.PolicyBusyError):  # waited 1.5 s, 2.5 times the stale age
            async with store.write_lock(kv, "impatient"):
                pass
        lock.check()  # still ours
    async with store.write_lock(kv, "next"):  # freed at the end
        pass


async def test_a_writer_whose_lock_was_taken_over_commits_nothing(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv = await js.key_value(bus.CONFIG_BUCKET)
    assert await store.import_policy(js, redmond())
    commit = (await kv.get(store.COMMIT_KEY)).revision
    monkeypatch.setattr(store, "LOCK_RENEW_S", 0.05)
    smaller = redmond().model_copy(update={"routes": redmond().routes[:1]})
    with pytest.raises(store.PolicyBusyError, match="took the policy lock"):
        async with store.write_lock(kv, "paused") as lock:
            # it stalled past the stale age, and another writer took the lock over
            await kv.put(
                store.LOCK_KEY, json.dumps({"owner": "other", "time": time.time()}).encode()
            )
            await asyncio.sleep(0.2)
            await store.write_policy(js, smaller, lock=lock)
    assert (await kv.get(store.COMMIT_KEY)).revision == commit
    assert json.loads((await kv.get(store.LOCK_KEY)).value or b"")["owner"] == "other"


async def follow(
    js: JetStreamContext, keys: tuple[str, ...] = store.POLICY_KEYS
) -> tuple[store.Follower, list[Policy], asyncio.Task[None]]:
    seen: list[Policy] = []

    async def on_commit(revision: int) -> None:
        seen.append(follower.state.policy())

    follower = store.Follower(js, on_commit, keys)
    task = asyncio.create_task(follower.run())
    await asyncio.wait_for(follower.caught_up.wait(), 10)
    return follower, seen, task


@pytest.mark.parametrize("snapshot", [True, False], ids=["from the snapshot", "from the stream"])
async def test_a_follower_never_applies_half_a_write(js: JetStreamContext, snapshot: bool) -> None:
    kv = await js.key_value(bus.CONFIG_BUCKET)
    assert await store.import_policy(js, redmond())
    if not snapshot:  # a store written before snapshots existed
        await kv.purge(store.SNAPSHOT_KEY)
    smaller = redmond().model_copy(update={"routes": redmond().routes[:1]})
    await kv.delete("route.Universal")  # a write under way: one key changed, no commit yet
    follower, seen, task = await follow(js)
    try:
        assert follower.from_snapshot is snapshot
        assert seen == [redmond()]  # the last whole policy
        revision = await kv.put(store.COMMIT_KEY, b"{}")
        await follower.applied(revision)
        assert seen == [redmond(), smaller]
    finally:
        task.cancel()


async def test_an_edge_follows_the_trunks_only(js: JetStreamContext) -> None:
    assert await store.import_policy(js, redmond())
    follower, seen, task = await follow(js, store.TRUNK_KEYS)
    try:
        assert [p.trunks for p in seen] == [redmond().trunks]
        assert all(key.startswith("trunk.") for key in follower.state.raw)
        kv = await js.key_value(bus.CONFIG_BUCKET)
        await kv.put("route.more", store.policy_entries(redmond())["route.Universal"])
        revision = await kv.put(store.COMMIT_KEY, b"{}")
        await follower.applied(revision)
        assert "route.more" not in follower.state.raw  # never even delivered
    finally:
        task.cancel()


def many_routes(count: int) -> Policy:
    """A policy of `count` routes over a few trunks, shaped as the bench's (and real) ones."""
    base = redmond()
    trunks = [t.id for t in base.trunks]
    routes = [
        base.routes[0].model_copy(
            update={
                "id": f"r{n}",
                "number_pattern": rf"^\+1{n:07d}\d{{3}}$",
                "trunks": [trunks[n % len(trunks)]],
                "priority": n % 10,
            }
        )
        for n in range(count)
    ]
    return base.model_copy(update={"routes": routes})


@pytest.mark.parametrize("trusted", [True, False])
def test_routes_read_from_the_store_share_their_repeated_values(trusted: bool) -> None:
    state = store.PolicyState()
    state.load(store.policy_entries(many_routes(50)), trusted=trusted)
    first, *others = state.policy().routes
    assert first.model_fields_set == set(type(first).model_fields)
    for route in others:
        assert route.model_fields_set is first.model_fields_set  # 728 bytes each otherwise
        assert route.pstn_usages is first.pstn_usages
    assert state.policy() == many_routes(50)


def test_ten_thousand_routes_from_a_snapshot_take_a_bounded_memory() -> None:
    """The store's bytes, the routes and the router's table: 1,260 bytes a route here when
    this was written, 2,430 before routes shared their repeated values."""
    from tandem.router.table import RoutingTable  # the router's table is the routes' user

    blob = store.encode_snapshot(store.policy_entries(many_routes(10_000)))
    tracemalloc.start()
    try:
        state = store.PolicyState()
        state.load(store.decode_snapshot(blob), trusted=True)
        table = RoutingTable(state.policy())
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table.routes) == 10_000
    assert used < 10_000 * 1_800
