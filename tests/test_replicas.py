"""The bus on a real three-server JetStream cluster: every stream and bucket kept three
times, a server killed losing nothing, and a server back with an empty disk catching up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from tandem import bus
from tandem.pb import tandem_pb2 as pb
from tandem.policy import store
from tests.conftest import NatsCluster
from tests.router.policies import redmond

STREAMS = {bus.CALLS_STREAM, bus.CDR_STREAM, *(f"KV_{b.bucket}" for b in bus.BUCKETS)}
RECOVERY_S = 60.0  # a generous bound: elections and catching up on a loaded 2-core machine


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = RECOVERY_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


T = TypeVar("T")


async def retried(ask: Callable[[], Awaitable[T]]) -> T:
    """The answer once the cluster gives one: right after a server dies or comes back,
    requests time out or find no stream leader until an election is over."""
    deadline = time.monotonic() + RECOVERY_S
    while True:
        try:
            return await ask()
        except (nats.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def connect(cluster: NatsCluster) -> tuple[Client, JetStreamContext]:
    nc = await bus.connect(cluster.url, "test")
    return nc, nc.jetstream()


async def replicas(js: JetStreamContext) -> dict[str, int]:
    infos = [await js.stream_info(name) for name in sorted(STREAMS)]
    return {i.config.name: i.config.num_replicas or 1 for i in infos if i.config.name}


def event(call: str, seq: int) -> tuple[str, bytes, dict[str, str]]:
    message = pb.CallEvent(call_id=call, kind=pb.CallEvent.STARTED, seq=seq)
    subject = bus.call_event(call, pb.CallEvent.STARTED)
    return subject, message.SerializeToString(), bus.headers(f"{call}.{seq}")


async def stored_events(js: JetStreamContext) -> list[tuple[str, int]]:
    info = await js.stream_info(bus.CALLS_STREAM)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = pb.CallEvent.FromString((await js.get_msg(bus.CALLS_STREAM, seq)).data or b"")
        found.append((message.call_id, message.seq))
    return found


async def publish_cdr(js: JetStreamContext, n: int) -> None:
    """As callstate does: until stored (a stream electing its leader answers nothing)."""
    cdr = pb.Cdr(call_id=f"c{n}", ingress_trunk="pbx")

    data, headers = cdr.SerializeToString(), bus.headers(f"cdr.c{n}")
    await retried(lambda: js.publish(bus.cdr("pbx"), data, headers=headers))


async def test_stores_get_the_configured_replicas_and_follow_a_change(
    nats_cluster: NatsCluster,
) -> None:
    nc, js = await connect(nats_cluster)
    try:
        await bus.ensure_stores(js, 1)
        assert set((await replicas(js)).values()) == {1}
        # an operator's own setting survives the change of replicas
        info = await js.stream_info(bus.CDR_STREAM)
        await js.update_stream(info.config.evolve(max_age=3600.0))
        await bus.ensure_stores(js, 3)
        assert await replicas(js) == dict.fromkeys(STREAMS, 3)
        assert (await js.stream_info(bus.CDR_STREAM)).config.max_age == 3600.0

        async def copied() -> bool:  # a leader and two current copies, on every store
            infos = [await js.stream_info(name) for name in STREAMS]
            peers = [i.cluster.replicas or [] for i in infos if i.cluster]
            return len(peers) == len(STREAMS) and all(
                len(p) == 2 and all(r.current for r in p) for p in peers
            )

        await eventually(copied)
    finally:
        await nc.close()


async def test_a_killed_server_loses_no_policy_event_or_cdr_and_the_rest_keep_serving(
    nats_cluster: NatsCluster,
) -> None:
    nc, js = await connect(nats_cluster)
    outbox = bus.Outbox(nc)
    try:
        await bus.ensure_stores(js, 3)
        assert await store.import_policy(js, redmond())
        for n in range(20):
            outbox.publish(*event(f"before{n}", 1))
            await publish_cdr(js, n)
        await eventually(lambda: asyncio.sleep(0, outbox.pending_events == 0))

        # the worst server to lose: the one leading the call events' stream
        leader = (await js.stream_info(bus.CALLS_STREAM)).cluster.leader  # type: ignore[union-attr]
        nats_cluster.kill(next(n for n in nats_cluster.nodes if n.name == leader))
        for n in range(60):  # events keep coming while the stream elects a new leader
            outbox.publish(*event(f"during{n % 20}", n // 20 + 1))
            await asyncio.sleep(0.05)
        await eventually(lambda: asyncio.sleep(0, outbox.pending_events == 0))

        expected = [(f"before{n}", 1) for n in range(20)]
        expected += [(f"during{n % 20}", n // 20 + 1) for n in range(60)]
        assert sorted(await stored_events(js)) == sorted(expected)  # each once
        # each call's events are stored in the order they were sent
        during = [e for e in await stored_events(js) if e[0].startswith("during")]
        for call in {c for c, _ in during}:
            assert [s for c, s in during if c == call] == [1, 2, 3]
        kv = await js.key_value(bus.CONFIG_BUCKET)
        assert await store.read_policy(kv) == redmond()
        await publish_cdr(js, 20)  # the two left still take writes
        assert (await js.stream_info(bus.CDR_STREAM)).state.messages == 21
    finally:
        await nc.close()


async def test_a_server_back_with_an_empty_disk_catches_up_from_its_peers(
    nats_cluster: NatsCluster,
) -> None:
    nc, js = await connect(nats_cluster)
    try:
        await bus.ensure_stores(js, 3)
        assert await store.import_policy(js, redmond())
        for n in range(10):
            await publish_cdr(js, n)
        lost = nats_cluster.nodes[0]
        nats_cluster.kill(lost)
        nats_cluster.wipe(lost)
        for n in range(10, 30):  # written while it is away: it must fetch these too
            await publish_cdr(js, n)
        nats_cluster.start(lost)

        want = {}
        for name in STREAMS:
            info = await retried(lambda name=name: js.stream_info(name))  # type: ignore[misc]
            want[name] = info.state.messages
        assert want[bus.CDR_STREAM] == 30

        async def caught_up() -> bool:
            held = await asyncio.to_thread(nats_cluster.stored, lost)
            return all(held.get(name) == count for name, count in want.items())

        await eventually(caught_up)
        # and it serves: with another server gone, the policy and CDRs are all there
        nats_cluster.kill(nats_cluster.nodes[1])

        async def readable() -> bool:
            try:
                kv = await js.key_value(bus.CONFIG_BUCKET)
                info = await js.stream_info(bus.CDR_STREAM)
                return await store.read_policy(kv) == redmond() and info.state.messages == 30
            except Exception:  # no leader yet: the two left are electing one
                return False

        await eventually(readable)
    finally:
        await nc.close()
