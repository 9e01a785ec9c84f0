"""The local trace receiver: real OTLP/HTTP exports in, a readable call tree out."""

from __future__ import annotations

import asyncio

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tandem.http import ApiServer
from tandem.traces import Span, TraceStore, receiver_app, render_tree
from tests.conftest import free_port


async def test_exported_spans_come_back_as_a_tree() -> None:
    store = TraceStore()
    server = ApiServer(receiver_app(store), f"127.0.0.1:{free_port()}")
    await server.start()
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": "tandem-edge"}))
        endpoint = f"http://127.0.0.1:{server.port}/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("call", attributes={"tandem.call_id": "c42"}) as root:
            with tracer.start_as_current_span("leg", attributes={"tandem.trunk": "gw1"}) as leg:
                leg.set_attribute("sip.status", 503)
                leg.set_status(Status(StatusCode.ERROR))
            with tracer.start_as_current_span("leg", attributes={"tandem.trunk": "gw2"}):
                pass
        trace_id = format(root.get_span_context().trace_id, "032x")
        # the exporter blocks its thread on HTTP: flush off the loop that serves the receiver
        assert await asyncio.to_thread(provider.force_flush)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            by_id = (await http.get(f"/v1/traces/{trace_id}")).json()
            by_call = (await http.get("/v1/traces/c42")).json()
            missing = await http.get("/v1/traces/nope")
            bad = await http.post("/v1/traces", content=b"\xff\x00garbage")
        assert by_id == by_call and len(by_id) == 3
        assert missing.status_code == 404 and bad.status_code == 400
        tree = render_tree([Span.from_json(s) for s in by_id]).splitlines()
        assert tree[0].startswith("call [tandem-edge]")
        assert tree[1].startswith("├─ leg [tandem-edge]") and "trunk=gw1 status=503" in tree[1]
        assert tree[1].split(" ms")[1].startswith(" ERROR")
        assert tree[2].startswith("└─ leg [tandem-edge]") and "trunk=gw2" in tree[2]
        await asyncio.to_thread(provider.shutdown)
    finally:
        await server.stop()


def test_the_store_keeps_the_most_recent_traces() -> None:
    store = TraceStore(limit=2)
    for n in range(3):
        store.add([Span(f"t{n}", "s", "", "call", "svc", 0, 1, "ok", {})])
    assert list(store.traces) == ["t1", "t2"]
