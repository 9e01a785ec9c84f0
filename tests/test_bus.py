"""The bus helpers against a real nats-server: stores, dedup by Nats-Msg-Id, trace headers."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.js import JetStreamContext

from tandem import bus, telemetry
from tandem.pb import tandem_pb2 as pb


async def test_stores_are_created_idempotently(js: JetStreamContext) -> None:
    await bus.ensure_stores(js)  # a second time changes nothing and raises nothing
    names = {s.config.name for s in await js.streams_info()}
    assert {bus.CALLS_STREAM, bus.CDR_STREAM, "KV_TANDEM_CONFIG", "KV_TANDEM_CALLS"} <= names


async def test_a_repeated_event_is_stored_once(js: JetStreamContext) -> None:
    event = pb.CallEvent(call_id="c1", kind="STARTED", seq=1)
    for _ in range(3):
        await bus.publish_event(js, bus.call_event("c1", pb.CallEvent.STARTED), event, "c1.1")
    info = await js.stream_info(bus.CALLS_STREAM)
    assert info.state.messages == 1
    msg = await js.get_msg(bus.CALLS_STREAM, seq=1)
    assert pb.CallEvent.FromString(msg.data) == event


async def test_hangup_requests_are_not_captured_as_events(js: JetStreamContext) -> None:
    await js._nc.publish(bus.call_hangup("c1"), b"")
    await js._nc.flush()
    info = await js.stream_info(bus.CALLS_STREAM)
    assert info.state.messages == 0


async def test_requests_carry_the_trace_context(nc: Client) -> None:
    telemetry.setup_tracing("test")
    seen: dict[str, str] = {}

    async def answer(msg) -> None:  # type: ignore[no-untyped-def]
        seen.update(msg.headers or {})
        await msg.respond(pb.CommandReply(ok=True).SerializeToString())

    await nc.subscribe("tandem.test", cb=answer)
    with telemetry.tracer("test").start_as_current_span("call") as span:
        reply = await bus.request(nc, "tandem.test", pb.Hangup(call_id="c1"), pb.CommandReply)
        trace_id = format(span.get_span_context().trace_id, "032x")
    assert reply.ok
    assert seen["traceparent"].split("-")[1] == trace_id


async def test_call_events_are_sent_again_until_the_stream_takes_them(nc: Client) -> None:
    """As while a stream elects its leader: nothing stores them for a while, then it does."""
    outbox = bus.Outbox(nc)
    for seq in (1, 2, 3):
        event = pb.CallEvent(call_id="c1", kind=pb.CallEvent.STARTED, seq=seq)
        outbox.publish(
            bus.call_event("c1", event.kind), event.SerializeToString(), bus.headers(f"c1.{seq}")
        )
    outbox.publish("tandem.other", b"not an event", {})  # not held back by them
    await asyncio.sleep(1.0)
    assert outbox.pending_events == 3
    js = nc.jetstream()
    await bus.ensure_stores(js)  # the stream is there now
    await asyncio.wait_for(outbox.flush(), 10)
    assert outbox.pending_events == 0
    info = await js.stream_info(bus.CALLS_STREAM)
    stored = [
        pb.CallEvent.FromString((await js.get_msg(bus.CALLS_STREAM, n)).data or b"").seq
        for n in range(info.state.first_seq, info.state.last_seq + 1)
    ]
    assert stored == [1, 2, 3]  # each once, in order
