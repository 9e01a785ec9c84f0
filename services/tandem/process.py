"""The life of one long-running process: connect, start, serve the API, drain on SIGTERM.

`tandem router`, `tandem callstate` and `tandem edge` are each a Component run by `run`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fastapi import FastAPI
from nats.aio.client import Client
from nats.js import JetStreamContext

from tandem import bus, telemetry
from tandem.config import Config
from tandem.http import ApiServer, api_token, check_exposure

log = logging.getLogger("tandem.process")


@dataclass
class Context:
    """What a component gets: its config, the bus, and the API token in force."""

    name: str
    config: Config
    nc: Client
    js: JetStreamContext
    token: str | None


class Component(Protocol):
    app: FastAPI

    async def start(self) -> None: ...

    async def drain(self) -> None:
        """SIGTERM: take no new work and let work in progress finish (bounded by the caller)."""

    async def stop(self) -> None: ...


async def run(
    name: str,
    config: Config,
    nats_url: str,
    listen: str,
    build: Callable[[Context], Component],
    creds: str | None = None,
    grace_s: float = 30.0,
) -> int:
    token = api_token(config.api_token)
    check_exposure(listen, token)
    telemetry.setup_tracing(name.split(":")[0])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    nc = await bus.connect(nats_url, f"tandem-{name}", creds)
    js = nc.jetstream()
    await bus.ensure_stores(js, config.replicas)
    component = build(Context(name, config, nc, js, token))
    await component.start()
    api = ApiServer(component.app, listen)
    await api.start()
    # what is loaded by now (modules, the policy's tables) lives as long as the process:
    # out of the collector's sight, a full collection walks only what calls allocate
    gc.freeze()
    gc.set_threshold(20_000, 20, 10)  # fewer young passes: a call allocates a few hundred
    log.info("%s ready", name, extra={"api": f"http://{listen}"})

    await stop.wait()
    log.info("%s draining", name)
    try:
        await asyncio.wait_for(component.drain(), grace_s)
    except TimeoutError:
        log.warning("%s: grace period of %ss over, stopping with work in progress", name, grace_s)
    await api.stop()
    await component.stop()
    await nc.drain()
    telemetry.shutdown_tracing()
    log.info("%s stopped", name)
    return 0
