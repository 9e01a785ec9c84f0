"""The policy in TANDEM_CONFIG: whole-policy writes, reads, and the writers' lock."""

from __future__ import annotations

import json
import time

import pytest
from nats.js import JetStreamContext

from tandem import bus
from tandem.policy import store
from tests.router.policies import redmond


async def test_a_written_policy_reads_back_whole(js: JetStreamContext) -> None:
    kv = await js.key_value(bus.CONFIG_BUCKET)
    assert await store.read_policy(kv) is None
    assert await store.import_policy(js, redmond())
    assert await store.read_policy(kv) == redmond()
    assert not await store.import_policy(js, redmond(), if_empty=True)
    smaller = redmond().model_copy(update={"routes": redmond().routes[:1]})
    async with store.write_lock(kv):
        await store.write_policy(kv, smaller)
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
    with pytest.raises(ValueError, match=r"route\.other holds the object with id 'Universal'"):
        state.policy()
