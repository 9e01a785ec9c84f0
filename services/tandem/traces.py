"""A small OTLP/HTTP trace receiver and a terminal view of a call's trace.

`tandem up` runs the receiver when no OTEL endpoint is set, so a local system keeps its
recent traces in memory and `tandem trace` can print one as a tree; in production the
same spans go to Jaeger, Tempo or any OTLP collector instead.
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

MAX_TRACES = 2000
_PROTOBUF = "application/x-protobuf"


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "service": self.service,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "status": self.status,
            "attributes": self.attributes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Span:
        return cls(**data)


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


def decode(body: bytes) -> list[Span]:
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", "?"))
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        name=s.name,
                        service=service,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        status={0: "unset", 1: "ok", 2: "error"}.get(s.status.code, "?"),
                        attributes=_attributes(s.attributes),
                    )
                )
    return spans


class TraceStore:
    """The most recent traces, by trace id, oldest dropped first."""

    def __init__(self, limit: int = MAX_TRACES) -> None:
        self.limit = limit
        self.traces: OrderedDict[str, list[Span]] = OrderedDict()

    def add(self, spans: list[Span]) -> None:
        for span in spans:
            self.traces.setdefault(span.trace_id, []).append(span)
            self.traces.move_to_end(span.trace_id)
        while len(self.traces) > self.limit:
            self.traces.popitem(last=False)

    def find(self, key: str) -> list[Span] | None:
        """A trace by its id, or by any span attribute value (a call id, a SIP Call-ID)."""
        if key in self.traces:
            return self.traces[key]
        for spans in reversed(self.traces.values()):
            if any(key in map(str, s.attributes.values()) for s in spans):
                return spans
        return None


def receiver_app(store: TraceStore) -> FastAPI:
    app = FastAPI(title="tandem trace receiver")

    @app.post("/v1/traces")
    async def export(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            store.add(decode(body))
        except Exception as exc:  # a bad export must not take the receiver down
            raise HTTPException(400, f"not an OTLP protobuf trace export: {exc}") from None
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return Response(reply, media_type=_PROTOBUF)

    @app.get("/v1/traces/{key}")
    def get(key: str) -> list[dict[str, Any]]:
        spans = store.find(key)
        if spans is None:
            raise HTTPException(404, f"no trace for {key!r}")
        return [s.to_json() for s in spans]

    return app


_SHOWN = (
    "tandem.ingress_trunk",
    "tandem.trunk",
    "tandem.attempt",
    "sip.calling",
    "sip.called",
    "tandem.normalized_called",
    "tandem.usage",
    "tandem.route",
    "tandem.targets",
    "sip.status",
    "tandem.failover_reason",
    "sip.call_id",
)


def render_tree(spans: list[Span]) -> str:
    """The trace as an indented tree: name, service, duration, the telephony attributes."""
    by_id = {s.span_id: s for s in spans}
    roots: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(span.parent_id)
        (parent.children if parent else roots).append(span)
    lines: list[str] = []

    def walk(span: Span, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        attrs = span.attributes
        shown = " ".join(f"{k.split('.', 1)[1]}={attrs[k]}" for k in _SHOWN if attrs.get(k))
        error = " ERROR" if span.status == "error" else ""
        where = " ".join(filter(None, (span.service, attrs.get("tandem.edge"))))
        lines.append(
            f"{prefix}{branch}{span.name} [{where}] {span.duration_ms:.1f} ms{error}"
            + (f"  {shown}" if shown else "")
        )
        child_prefix = prefix if top else prefix + ("   " if last else "│  ")
        for i, child in enumerate(span.children):
            walk(child, child_prefix, i == len(span.children) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return "\n".join(lines)
