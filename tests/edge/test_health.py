"""OPTIONS probes of the trunks an edge serves: down after 3 failures, up after 1 answer."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

from tandem import bus
from tandem.pb import tandem_pb2 as pb
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
