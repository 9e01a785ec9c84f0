"""A call's captured SIP messages, read from TANDEM_SIP (the edges write it), and the API route
that serves them: `GET /v1/calls/{id}/sip`, for the console's ladder and `tandem ladder`.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from tandem import bus
from tandem.http import AUTH
from tandem.pb import tandem_pb2 as pb

READ_BATCH = 256
READ_TIMEOUT_S = 1.0
MAX_MESSAGES = 5000  # a call with more (a re-INVITE storm) shows its first ones

DIRECTIONS = {pb.SipMessage.IN: "in", pb.SipMessage.OUT: "out"}


async def call_messages(js: JetStreamContext, call_id: str) -> list[pb.SipMessage]:
    """Every message kept for the call, in the order the edges published them."""
    return await read(js, bus.sip_capture(call_id))


async def read(js: JetStreamContext, subject: str) -> list[pb.SipMessage]:
    """Every message kept on one subject of TANDEM_SIP (a call's, or an edge's unmatched)."""
    try:
        last = await js.get_last_msg(bus.SIP_STREAM, subject)
    except NotFoundError:  # no stream yet, or nothing (left) of this call
        return []
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(subject, stream=bus.SIP_STREAM, config=config)
    out: list[pb.SipMessage] = []
    try:
        while len(out) < MAX_MESSAGES:
            try:
                msgs = await sub.fetch(READ_BATCH, timeout=READ_TIMEOUT_S)
            except TimeoutError:
                break
            for msg in msgs:
                out.extend(pb.SipCapture.FromString(msg.data).messages)
            if msgs[-1].metadata.sequence.stream >= (last.seq or 0):
                break
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(NotFoundError):  # it would go by itself when idle
            await js.delete_consumer(bus.SIP_STREAM, sub._consumer)
    return out[:MAX_MESSAGES]


def message_json(m: pb.SipMessage) -> dict[str, Any]:
    return {
        "time_unix_us": m.time_unix_us,
        "edge": m.edge,
        "direction": DIRECTIONS.get(m.direction, "?"),
        "transport": m.transport,
        "src": m.src,
        "dst": m.dst,
        "trunk": m.trunk,
        "leg_id": m.leg_id,
        "sip_call_id": m.sip_call_id,
        "method": m.method,
        "status": m.status,
        "reason": m.reason,
        "cseq": m.cseq,
        "text": m.data.decode("utf-8", "replace"),
    }


async def messages_json(js: JetStreamContext, call_id: str) -> list[dict[str, Any]]:
    messages = sorted(await call_messages(js, call_id), key=lambda m: m.time_unix_us)
    return [message_json(m) for m in messages]


async def jetstream_of(request: Request) -> JetStreamContext:
    js: JetStreamContext = request.app.state.capture_js
    return js


router = APIRouter(prefix="/v1", tags=["calls"], dependencies=AUTH)


@router.get("/calls/{call_id}/sip")
async def call_sip(
    call_id: str, js: Annotated[JetStreamContext, Depends(jetstream_of)]
) -> dict[str, Any]:
    """The SIP messages of a call (in progress or ended, while TANDEM_SIP keeps them), by time."""
    return {"call_id": call_id, "messages": await messages_json(js, call_id)}


def mount(app: FastAPI, js: JetStreamContext) -> None:
    app.state.capture_js = js
    app.include_router(router)
