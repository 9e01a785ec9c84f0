"""Router replicas on the test's real nats-server, each with its API on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from tandem import bus
from tandem.config import Config
from tandem.http import ApiServer
from tandem.process import Context
from tandem.router.service import Service
from tests.conftest import NatsServer, free_port


class Replica:
    """One router replica as `tandem router` runs it, minus the signal handling."""

    def __init__(self, service: Service, api: ApiServer, nc: Client) -> None:
        self.service, self.api, self.nc = service, api, nc
        self.url = f"http://127.0.0.1:{api.port}"

    async def close(self) -> None:
        await self.service.drain()
        await self.api.stop()
        await self.service.stop()
        await self.nc.close()


StartReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def start_replica(
    nats_server: NatsServer, js: JetStreamContext
) -> AsyncIterator[StartReplica]:
    replicas: list[Replica] = []

    async def start(name: str = "router", token: str | None = None) -> Replica:
        nc = await bus.connect(nats_server.url, f"test-{name}")
        ctx = Context(name, Config(), nc, nc.jetstream(), token)
        service = Service(ctx)
        await service.start()
        api = ApiServer(service.app, f"127.0.0.1:{free_port()}")
        await api.start()
        replica = Replica(service, api, nc)
        replicas.append(replica)
        return replica

    yield start
    for replica in replicas:
        await replica.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client
