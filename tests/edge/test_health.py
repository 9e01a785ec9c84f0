"""OPTIONS probes of the trunks an edge serves: down after 3 failures, up after 1 answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from tandem import bus
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Policy
from tandem.policy.store import import_policy
from tests.edge.conftest import MakeSystem


async def test_a_trunk_goes_down_when_silent_and_up_when_it_answers(
    make_system: MakeSystem,
) -> None:
    changes: asyncio.Queue[pb.TrunkHealth] = asyncio.Queue()

    async def on_health(msg: Msg) -> None:
        await changes.put(pb.TrunkHealth.FromString(msg.data))

    system = await make_system(gw1={"options_interval_s": 0.2})
    await system.nc.subscribe(bus.trunk_health("gw1"), cb=on_health)
    gw1 = system.gw1

    async with asyncio.timeout(5):
        health = await changes.get()
        while health.up:  # the first report may be "up" from nothing heard yet
            health = await changes.get()
    assert not health.up and health.failed_probes == 3 and health.edge == "edge-b"
    kv = await system.js.key_value(bus.TRUNK_HEALTH_BUCKET)
    stored = pb.TrunkHealth.FromString((await kv.get("gw1")).value or b"")
    assert not stored.up

    async def answer_probes() -> None:
        while True:  # any answer but 408/503 means alive, 501 included
            probe, addr = await gw1.request("OPTIONS", within=5)
            gw1.answer(probe, 501, addr)

    answering = asyncio.create_task(answer_probes())
    async with asyncio.timeout(3):
        health = await changes.get()
    answering.cancel()
    assert health.up and health.failed_probes == 0
    status = system.edge_b.status()
    assert next(t for t in status["trunks"] if t["id"] == "gw1")["up"] is True


async def test_503_answers_count_as_failed_probes(make_system: MakeSystem) -> None:
    system = await make_system(gw2={"options_interval_s": 0.1})
    gw2 = system.gw2
    for _ in range(3):
        probe, addr = await gw2.request("OPTIONS")
        gw2.answer(probe, 503, addr)
    await asyncio.sleep(0.05)
    assert system.edge_b.probes["gw2"].up is False


async def test_the_kv_record_follows_every_probe_and_the_subject_only_changes(
    make_system: MakeSystem,
) -> None:
    announced: list[pb.TrunkHealth] = []

    async def on_health(msg: Msg) -> None:
        announced.append(pb.TrunkHealth.FromString(msg.data))

    system = await make_system(gw1={"options_interval_s": 0.2})
    await system.nc.subscribe(bus.trunk_health("gw1"), cb=on_health)
    kv = await system.js.key_value(bus.TRUNK_HEALTH_BUCKET)

    async def stored_when(check: Callable[[pb.TrunkHealth], bool]) -> pb.TrunkHealth:
        async with asyncio.timeout(5):
            while True:
                with contextlib.suppress(KeyNotFoundError):
                    health = pb.TrunkHealth.FromString((await kv.get("gw1")).value or b"")
                    if check(health):
                        return health
                await asyncio.sleep(0.02)

    # one unanswered probe, then answers: the record must not keep "no answer, 1 failed"
    first = await stored_when(lambda h: h.failed_probes == 1)
    assert first.up and first.reason == "no answer"

    async def answer_probes() -> None:
        while True:  # (the unanswered one is answered too late and changes nothing)
            probe, addr = await system.gw1.request("OPTIONS", within=5)
            system.gw1.answer(probe, 200, addr)

    answering = asyncio.create_task(answer_probes())
    alive = await stored_when(lambda h: h.failed_probes == 0)
    answering.cancel()
    assert alive.up and alive.reason == "200 OK"
    assert alive.last_probe_unix_ms > first.last_probe_unix_ms

    # silent again: each probe moves the record, up to down and on
    records = [await stored_when(lambda h, n=n: h.failed_probes == n) for n in (1, 2, 3, 4)]
    assert [r.up for r in records] == [True, True, False, False]
    times = [r.last_probe_unix_ms for r in records]
    assert times == sorted(times) and len(set(times)) == 4
    await asyncio.sleep(0.1)
    # announced: the first result (up) and the one change (down); never the steady probes
    assert [(h.up, h.failed_probes) for h in announced] == [(True, 1), (False, 3)]


async def until(check: Callable[[], Awaitable[bool]], within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def test_an_edited_trunk_keeps_its_health(make_system: MakeSystem) -> None:
    system = await make_system(gw2={"options_interval_s": 0.2})
    gw2, edge = system.gw2, system.edge_b
    for _ in range(3):
        probe, addr = await gw2.request("OPTIONS")
        gw2.answer(probe, 503, addr)
    await until(lambda: asyncio.sleep(0, not edge.probes["gw2"].up), 2)

    # an administrator changes the trunk's call limit: nothing about its peer
    data = system.config.policy.model_dump()
    next(t for t in data["trunks"] if t["id"] == "gw2")["max_concurrent_calls"] = 5
    await import_policy(system.js, Policy.model_validate(data))
    await until(lambda: asyncio.sleep(0, edge.trunks["gw2"].max_concurrent_calls == 5), 3)
    probe = edge.probes["gw2"]
    assert (probe.up, probe.failed, probe.reason) == (False, 3, "503 Service Unavailable")

    # and its next record still says down: one more failure, not a fresh start
    await gw2.request("OPTIONS", within=2)  # left unanswered
    kv = await system.js.key_value(bus.TRUNK_HEALTH_BUCKET)

    async def fourth_failure() -> bool:
        health = pb.TrunkHealth.FromString((await kv.get("gw2")).value or b"")
        assert not health.up, health
        return health.failed_probes >= 4

    await until(fourth_failure, 3)
