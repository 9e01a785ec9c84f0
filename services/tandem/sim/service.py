"""`tandem sim pbx|gateway`: one simulated trunk as a process, commanded over loopback HTTP.

The control API (also at /docs while it runs):

    GET    /v1/sim                      the sim's settings (its part of the YAML file)
    GET    /v1/calls                    every call since start, newest last
    POST   /v1/calls                    {"calling": "0100", "called": "+12065550100",
                                         "headers": {"Privacy": "id"}}
    GET    /v1/calls/{id}               state, last SIP status, media, RTP counters, DTMF,
                                        when and why it ended, transfers
    GET    /v1/calls/{id}/sip           its SIP messages, in and out, headers and body
    POST   /v1/calls/{id}/answer        {"code": 183} early media, {"code": 200} answers
    POST   /v1/calls/{id}/dtmf          {"digits": "123#"}  (RFC 4733)
    POST   /v1/calls/{id}/hold          re-INVITE with a=sendonly
    POST   /v1/calls/{id}/resume        re-INVITE with a=sendrecv
    POST   /v1/calls/{id}/transfer      {"to": "+12065550150"} REFER (blind), or
                                        {"replaces": "2"} REFER with Replaces (attended)
    POST   /v1/calls/{id}/hangup        {"code": 486} rejects an unanswered inbound call
    GET    /v1/sip                      whether the sim has vanished
    POST   /v1/sip/vanish               no more SIP in or out, no BYE: the box is gone
    POST   /v1/sip/reappear             SIP again, starting with what waited in the socket

An operation pjsua2 refuses (no such state, media not up) answers 409 with its reason, as
does any that needs SIP while the sim has vanished.
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
from tandem.sim.config import Gateway, Kind, Pbx, Sim
from tandem.sim.views import (
    Answer,
    CallView,
    Hangup,
    PlaceCall,
    SendDtmf,
    SipMessage,
    SipPresence,
    Transfer,
)

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

    @app.get("/v1/sim", tags=["sim"])
    async def settings() -> Pbx | Gateway:
        """What this sim was started with: addresses, answering, 100rel, session timers."""
        assert isinstance(agent.sim, Pbx | Gateway)
        return agent.sim

    @app.get("/v1/calls", tags=["calls"])
    async def calls() -> list[CallView]:
        return await on_agent(agent.views)

    @app.post("/v1/calls", tags=["calls"], status_code=201)
    async def place(body: PlaceCall) -> CallView:
        """Place a call through the trunk: INVITE sip:<called>@<trunk>, with the sim's
        prack and session_timer settings and any extra headers given."""
        return await on_agent(lambda: agent.place_call(body.calling, body.called, body.headers))

    @app.get("/v1/calls/{call_id}", tags=["calls"])
    async def call(call_id: str) -> CallView:
        return await on_agent(lambda: agent.view(call_id))

    @app.get("/v1/calls/{call_id}/sip", tags=["calls"])
    async def sip_messages(call_id: str) -> list[SipMessage]:
        """The SIP requests and responses of the call, each `in` (arrived) or `out` (sent),
        oldest first, with every header: an inbound call's INVITE, provisionals (RSeq when
        reliable), PRACKs, refreshes (UPDATE, re-INVITE), REFER and NOTIFYs, the BYE and
        its Reason. The first and the latest 47 are kept."""
        return await on_agent(lambda: agent.messages(call_id))

    @app.post("/v1/calls/{call_id}/answer", tags=["calls"])
    async def answer(call_id: str, body: Answer | None = None) -> CallView:
        """Answer an inbound call that is still ringing (one a rule keeps ringing, or before
        answer_after_s), or send it a provisional: 183 starts early media."""
        code = body.code if body else 200
        return await on_agent(lambda: agent.answer(call_id, code))

    @app.post("/v1/calls/{call_id}/dtmf", tags=["calls"])
    async def dtmf(call_id: str, body: SendDtmf) -> CallView:
        return await on_agent(lambda: agent.send_dtmf(call_id, body.digits))

    @app.post("/v1/calls/{call_id}/hold", tags=["calls"])
    async def hold(call_id: str) -> CallView:
        return await on_agent(lambda: agent.hold(call_id))

    @app.post("/v1/calls/{call_id}/resume", tags=["calls"])
    async def resume(call_id: str) -> CallView:
        return await on_agent(lambda: agent.resume(call_id))

    @app.post("/v1/calls/{call_id}/transfer", tags=["calls"])
    async def transfer(call_id: str, body: Transfer) -> CallView:
        """Transfer the far end of this call with REFER (RFC 3515). Progress (the REFER's
        response, each NOTIFY's sipfrag) appears in the call's `transfer`; once it ends in
        a 2xx the sim hangs this call up, as a phone that transferred a call does."""
        return await on_agent(lambda: agent.transfer(call_id, body.to, body.replaces))

    @app.post("/v1/calls/{call_id}/hangup", tags=["calls"])
    async def hangup(call_id: str, body: Hangup | None = None) -> CallView:
        code = body.code if body else None
        return await on_agent(lambda: agent.hangup(call_id, code))

    @app.get("/v1/sip", tags=["sip"])
    async def presence() -> SipPresence:
        return await on_agent(agent.presence)

    @app.post("/v1/sip/vanish", tags=["sip"])
    async def vanish() -> SipPresence:
        """Stop all SIP, as when the box dies or loses its network: nothing is read, sent or
        retransmitted (no BYE), and pjsip's timers wait, so its calls stay up here while
        the far end's refreshes and requests go unanswered. RTP keeps flowing: pjmedia runs
        on its own threads. Calls can still be read; operations that need SIP answer 409."""
        return await on_agent(agent.vanish)

    @app.post("/v1/sip/reappear", tags=["sip"])
    async def reappear() -> SipPresence:
        """SIP again: pjsip reads what waited in the socket (a BYE, a refresh) and its
        timers catch up."""
        return await on_agent(agent.reappear)

    return app


async def serve(agent: UserAgent) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api = ApiServer(build_app(agent), agent.sim.control)
    await api.start()
    # tests and scripts wait for this line
    tls = agent.sim.tls
    host = agent.sim.sip_address[0]
    print(
        f"sim {agent.kind} {agent.sim.id} ready: sip udp:{agent.sim.sip}"
        + (f", tls:{host}:{tls.port}" if tls is not None else "")
        + f", control http://{agent.sim.control}",
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
