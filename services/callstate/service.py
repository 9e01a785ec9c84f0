"""The callstate process: a placeholder until its issue lands (health, readiness, metrics)."""

from __future__ import annotations

from tandem.http import create_app
from tandem.process import Context


class Service:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.app = create_app("callstate", ready=lambda: ctx.nc.is_connected, token=ctx.token)

    async def start(self) -> None:
        pass

    async def drain(self) -> None:
        pass

    async def stop(self) -> None:
        pass
