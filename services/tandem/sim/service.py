"""`tandem sim pbx|gateway`: one simulated trunk as a process, commanded over loopback HTTP.

The control API (also at /docs while it runs):

    GET    /v1/calls                    every call since start, newest last
    POST   /v1/calls                    {"calling": "0100", "called": "+12065550100"}
    GET    /v1/calls/{id}               state, last SIP status, media, RTP counters, DTMF
    POST   /v1/calls/{id}/dtmf          {"digits": "123#"}  (RFC 4733)
    POST   /v1/calls/{id}/hold          re-INVITE with a=sendonly
    POST   /v1/calls/{id}/resume        re-INVITE with a=sendrecv
    POST   /v1/calls/{id}/hangup        {"code": 486} rejects an unanswered inbound call

An operation pjsua2 refuses (no such state, media not up) answers 409 with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import TypeVar

from fastapi import FastAPI, HTTPException

from tandem.http import ApiServer, create_app
from tandem.sim.agent import CallNotFound, CallOperationError, UserAgent
from tandem.sim.config import Kind, Sim
from tandem.sim.views import CallView, Hangup, PlaceCall, SendDtmf

log = logging.getLogger("tandem.sim")

T = TypeVar("T")
COMMAND_TIMEOUT_S = 10.0


def build_app(agent: UserAgent) -> FastAPI:
    app = create_app(f"sim {agent.kind} {agent.sim.id}", ready=lambda: agent.ready, token=None)

    async def on_agent(command: Callable[[], T]) -> T:
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(agent.submit(command)), COMMAND_TIMEOUT_S
            )
        except CallNotFound as exc:
            raise HTTPException(404, f"no call {exc}") from None
        except CallOperationError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/v1/calls", tags=["calls"])
    async def calls() -> list[CallView]:
        return await on_agent(agent.views)

    @app.post("/v1/calls", tags=["calls"], status_code=201)
    async def place(body: PlaceCall) -> CallView:
        return await on_agent(lambda: agent.place_call(body.calling, body.called))

    @app.get("/v1/calls/{call_id}", tags=["calls"])
    async def call(call_id: str) -> CallView:
        return await on_agent(lambda: agent.view(call_id))

    @app.post("/v1/calls/{call_id}/dtmf", tags=["calls"])
    async def dtmf(call_id: str, body: SendDtmf) -> CallView:
        return await on_agent(lambda: agent.send_dtmf(call_id, body.digits))

    @app.post("/v1/calls/{call_id}/hold", tags=["calls"])
    async def hold(call_id: str) -> CallView:
        return await on_agent(lambda: agent.hold(call_id))

    @app.post("/v1/calls/{call_id}/resume", tags=["calls"])
    async def resume(call_id: str) -> CallView:
        return await on_agent(lambda: agent.resume(call_id))

    @app.post("/v1/calls/{call_id}/hangup", tags=["calls"])
    async def hangup(call_id: str, body: Hangup | None = None) -> CallView:
        code = body.code if body else None
        return await on_agent(lambda: agent.hangup(call_id, code))

    return app


async def serve(agent: UserAgent) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api = ApiServer(build_app(agent), agent.sim.control)
    await api.start()
    # tests and scripts wait for this line
    print(
        f"sim {agent.kind} {agent.sim.id} ready: sip udp:{agent.sim.sip}, "
        f"control http://{agent.sim.control}",
        flush=True,
    )
    await stop.wait()
    await api.stop()
    return 0


def run(sim: Sim, kind: Kind, pjsip_log_level: int) -> int:
    agent = UserAgent(sim, kind, pjsip_log_level)
    agent.start()
    try:
        return asyncio.run(serve(agent))
    finally:
        agent.stop()
