"""A running callstate Service on the test's nats-server, started and killed like a process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from tandem import bus
from tandem.callstate import lease
from tandem.callstate.service import Service
from tandem.config import parse_config
from tandem.pb import tandem_pb2 as pb
from tandem.process import Context
from tests.callstate.edge import FakeEdge
from tests.conftest import NatsServer


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """Wait until `check` (plain or async) holds; fail the test if it does not in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def settled(service: Service) -> None:
    """Wait for the batch being applied to be written: memory runs ahead of NATS until then."""
    async with service.lock:
        pass


class Callstates:
    """Starts services (each with its own connection, as separate processes would have)."""

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self.running: list[Service] = []

    async def start(
        self, edge_lost_s: float = 30.0, token: str | None = None, wait: bool = True
    ) -> Service:
        nc = await bus.connect(self.server.url, "callstate-test")
        js = nc.jetstream()
        await bus.ensure_stores(js)
        config = parse_config({"callstate": {"edge_lost_s": edge_lost_s}})
        service = Service(Context("callstate", config, nc, js, token))
        await service.start()
        self.running.append(service)
        if wait:
            await eventually(lambda: service.leading)
        return service

    async def kill(self, service: Service) -> None:
        """As SIGKILL: whatever is in flight is cut off, and the lease is left to expire."""
        await service.stop()
        await service.ctx.nc.close()
        self.running.remove(service)

    async def shut_down(self, service: Service) -> None:
        """As SIGTERM: drain, hand the lease on, stop."""
        await service.drain()
        await service.stop()
        await service.ctx.nc.close()
        self.running.remove(service)


@pytest.fixture(autouse=True)
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    # a killed leader's lease expires in 2.4 s instead of 6: the tests wait for it
    monkeypatch.setattr(lease, "LEASE_TTL_S", 2.4)


@pytest.fixture
async def callstates(nats_server: NatsServer) -> AsyncIterator[Callstates]:
    services = Callstates(nats_server)
    yield services
    for service in list(services.running):
        await services.kill(service)


@pytest.fixture
async def callstate(callstates: Callstates) -> Service:
    return await callstates.start()


@pytest.fixture
async def edge(nc: Client, js: JetStreamContext) -> AsyncIterator[FakeEdge]:
    fake = FakeEdge(nc, js)
    yield fake
    await fake.close()


@pytest.fixture
async def api(callstate: Service) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=callstate.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callstate") as client:
        yield client


async def cdrs(js: JetStreamContext) -> list[pb.Cdr]:
    """Every CDR in TANDEM_CDR, read straight from the stream."""
    info = await js.stream_info(bus.CDR_STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(bus.CDR_STREAM, seq)
        out.append(pb.Cdr.FromString(msg.data or b""))
    return out


async def counters(js: JetStreamContext, trunk: str) -> pb.TrunkCounters:
    """The trunk's counters as the router reads them (empty when none are written yet)."""
    kv = await js.key_value(bus.TRUNK_COUNTERS_BUCKET)
    try:
        entry = await kv.get(trunk)
    except KeyNotFoundError:
        return pb.TrunkCounters()
    return pb.TrunkCounters.FromString(entry.value or b"")
