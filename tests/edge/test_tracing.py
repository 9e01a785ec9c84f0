"""One trace per call: the root at the ingress INVITE, the route decision, both legs."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.edge.conftest import LOCAL, MakeSystem


async def test_a_call_is_one_trace_across_edges_and_the_router(make_system: MakeSystem) -> None:
    system = await make_system(gw1={"failover_timer_s": 0.3})
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    system.pbx.invite(system.a, LOCAL)
    await system.gw1.request("INVITE")  # silent: fails over on its timer
    second, addr = await system.gw2.request("INVITE")
    system.gw2.answer(second, 486, addr)
    await system.pbx.final()
    events = await system.call_events()
    trace_id = int(events[0].trace_id, 16)

    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    names = sorted(s.name for s in spans)
    assert names == ["call", "egress leg", "egress leg", "ingress leg", "route.decide"]
    root = next(s for s in spans if s.name == "call")
    assert all(
        s.parent is not None and s.parent.span_id == root.context.span_id
        for s in spans
        if s is not root
    )
    legs = {s.attributes["tandem.trunk"]: s for s in spans if s.name == "egress leg"}
    assert set(legs) == {"gw1", "gw2"}
    assert legs["gw2"].attributes["sip.status"] == 486
    assert legs["gw2"].attributes["sip.call_id"] == second.call_id
    assert root.attributes["sip.called"] == LOCAL
