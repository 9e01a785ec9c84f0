"""max_concurrent_calls across edges, on a real nats-server: places are taken with
compare-and-set, so edges racing for the last ones never take more than the limit; a dead
edge's places are reclaimed, a restarted edge's zeroed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from tandem import bus
from tandem.edge.limits import Limits


def limits(edge: str, dead: set[str] | None = None) -> Limits:
    def spawn(coro: Coroutine[Any, Any, Any]) -> None:
        asyncio.get_running_loop().create_task(coro)

    return Limits(edge, lambda e: e not in (dead or set()), spawn)


async def record(js: JetStreamContext, trunk: str) -> dict[str, int]:
    kv = await js.key_value(bus.TRUNK_CALLS_BUCKET)
    return dict(json.loads((await kv.get(trunk)).value or b"{}"))


async def settle(*edges: Limits) -> None:
    """Let spawned releases finish."""
    for _ in range(50):
        await asyncio.sleep(0.02)
        if all(not lock.locked() for e in edges for lock in e._locks.values()):
            return


async def test_two_edges_racing_for_200_calls_at_a_limit_of_50_get_50(
    nc: Client, js: JetStreamContext
) -> None:
    await bus.ensure_stores(js)
    a, b = limits("edge-a"), limits("edge-b")
    await a.start(js)
    await b.start(js)
    tries = [edge.reserve("gw", 50) for _ in range(100) for edge in (a, b)]
    placed = await asyncio.gather(*tries)
    assert sum(placed) == 50
    counts = await record(js, "gw")
    assert sum(counts.values()) == 50 and counts == {"edge-a": a.held["gw"], "edge-b": b.held["gw"]}
    assert not await b.reserve("gw", 50)

    for _ in range(a.held["gw"]):
        a.release("gw")
    await settle(a)
    assert await record(js, "gw") == {"edge-b": b.held["gw"]}
    assert await a.reserve("gw", 50)  # a freed place is taken again


async def test_a_dead_edges_places_are_reclaimed_and_a_restart_zeroes_its_own(
    nc: Client, js: JetStreamContext
) -> None:
    await bus.ensure_stores(js)
    a = limits("edge-a")
    await a.start(js)
    assert all(await asyncio.gather(*(a.reserve("gw", 10) for _ in range(10))))

    b = limits("edge-b", dead={"edge-a"})  # edge-a stopped heartbeating
    await b.start(js)
    assert await b.reserve("gw", 10)
    assert await record(js, "gw") == {"edge-b": 1}  # edge-a's ten left out of the record

    again = limits("edge-a")  # edge-a back: three calls, then restarted again
    await again.start(js)
    assert all(await asyncio.gather(*(again.reserve("gw", 10) for _ in range(3))))
    assert await record(js, "gw") == {"edge-b": 1, "edge-a": 3}
    await limits("edge-a").start(js)  # it holds nothing after a restart
    assert await record(js, "gw") == {"edge-b": 1}
    c = limits("edge-c")
    await c.start(js)
    assert sum(await asyncio.gather(*(c.reserve("gw", 10) for _ in range(12)))) == 9


async def test_without_nats_a_call_is_refused_rather_than_let_past_the_limit(
    nc: Client, js: JetStreamContext
) -> None:
    await bus.ensure_stores(js)
    a = limits("edge-a")
    await a.start(js)
    await nc.close()
    assert not await a.reserve("gw", 50)
    assert a.held["gw"] == 0
