"""The OTLP exporter: its bytes equal the official encoder's for real SDK spans of every
shape, and they reach a real HTTP server (retried, kept alive, compressed) as configured
by the OTEL_* variables."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import logging
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from tandem import otlp
from tandem.http import ApiServer
from tandem.traces import TraceStore, receiver_app
from tests.conftest import free_port
from tests.edge.certs import Ca

EVERY_TYPE = {
    "str": "edge-a",
    "empty": "",
    "unicode": "Zürich → 東京",
    "long": "x" * 200,  # a two-byte length
    "longer": "y" * 20_000,  # a three-byte length
    "true": True,
    "false": False,
    "zero": 0,
    "int": 200,
    "big": 2**40,
    "max": 2**63 - 1,
    "negative": -5,
    "min": -(2**63),
    "float": 0.25,
    "float zero": 0.0,
    "negative float": -1e300,
    "inf": float("inf"),
    "strs": ("a", "", "b"),
    "bools": (True, False),
    "ints": (1, -1, 0),
    "floats": (1.5, 0.0),
    "no items": (),
}


def remote(trace_id: int, span_id: int, **state: str) -> SpanContext:
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState(list(state.items())),
    )


@pytest.fixture(scope="module")
def spans() -> list[ReadableSpan]:
    """Spans of two resources and three scopes, in every shape an SDK span takes."""
    edge = TracerProvider(
        resource=Resource.create({"service.name": "tandem-edge", "ports": (5060, 5061)}),
        span_limits=SpanLimits(max_events=2, max_links=1, max_span_attributes=40),
    )
    router = TracerProvider(resource=Resource({"service.name": "tandem-router"}, "https://s/1"))
    exported = InMemorySpanExporter()
    for provider in (edge, router):
        provider.add_span_processor(SimpleSpanProcessor(exported))
    calls = edge.get_tracer("tandem.edge", "0.1")
    plain = edge.get_tracer("plain")
    scoped = edge.get_tracer(
        "scoped", "2", schema_url="https://s/2", attributes={"scope.kind": "test", "n": 1}
    )
    upstream = remote(0xABC, 0xDEF, vendor="v1", other="2")
    with calls.start_as_current_span("call", kind=SpanKind.SERVER, attributes=EVERY_TYPE) as root:
        root.add_event("nothing")
        root.add_event("figures", {"sip.status": 503, "reason": "busy"}, timestamp=123)
        root.add_event("dropped", {"a": 1})
        root.set_attribute("too big", 2**64)  # the official encoder leaves it out: so do we
        root.set_status(Status(StatusCode.ERROR, "486 Busy Here"))
        for kind in SpanKind:
            with calls.start_as_current_span(f"leg {kind.name}", kind=kind) as leg:
                leg.set_status(Status(StatusCode.OK))
    links = [
        Link(upstream, {"link": "one", "count": 2}),
        Link(SpanContext(1, 2, is_remote=False)),
    ]
    parent = trace.set_span_in_context(NonRecordingSpan(upstream))
    with calls.start_as_current_span("from upstream", context=parent, links=links[:1]):
        pass
    with plain.start_as_current_span("", links=links, kind=SpanKind.CONSUMER):
        pass  # no name, one link dropped
    with scoped.start_as_current_span("scoped", attributes={"x": 1}):
        pass
    for value in (True, 1, 1.0, "1", 1):  # one key, values that compare equal in Python
        with router.get_tracer("tandem.router").start_as_current_span(
            "route.decide", attributes={"x": value}
        ):
            pass
    return list(exported.get_finished_spans())


def test_the_bytes_are_the_official_encoders(spans: list[ReadableSpan]) -> None:
    ours = otlp.encode_spans(spans)
    theirs = official(spans).SerializeToString()
    assert ExportTraceServiceRequest.FromString(ours) == ExportTraceServiceRequest.FromString(
        theirs
    )
    assert ours == theirs
    assert otlp.encode_spans(spans) == theirs  # again, from the caches


def test_the_batch_holds_every_shape(spans: list[ReadableSpan]) -> None:
    """The fixture is what it claims: the equality above covers these."""
    request = ExportTraceServiceRequest.FromString(otlp.encode_spans(spans))
    assert len(request.resource_spans) == 2
    assert sorted(len(r.scope_spans) for r in request.resource_spans) == [1, 3]
    by_name = {s.name: s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans}
    root = by_name["call"]
    assert not root.parent_span_id and len(root.events) == 2 and root.dropped_events_count == 1
    assert root.status.code == StatusCode.ERROR.value and root.status.message == "486 Busy Here"
    assert "too big" not in {kv.key for kv in root.attributes}
    assert len(root.attributes) == len(EVERY_TYPE)
    assert {s.kind for s in by_name.values()} == {1, 2, 3, 4, 5}
    upstream = by_name["from upstream"]
    assert upstream.parent_span_id == (0xDEF).to_bytes(8, "big")
    assert upstream.trace_state == "vendor=v1,other=2"
    assert upstream.flags == 0x300  # the parent is remote
    assert by_name[""].dropped_links_count == 1
    decisions = [s for r in request.resource_spans[1:] for s in r.scope_spans[0].spans]
    kinds = [s.attributes[0].value.WhichOneof("value") for s in decisions]
    assert kinds == ["bool_value", "int_value", "double_value", "string_value", "int_value"]


def test_an_empty_batch_is_an_empty_request() -> None:
    assert otlp.encode_spans([]) == official([]).SerializeToString() == b""


# -- over HTTP -------------------------------------------------------------------------------


@dataclass
class Collector:
    """A real HTTP server on 127.0.0.1: it answers each POST with the next of `answers`
    (200 when they run out) and keeps what arrived."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    hang_up: bool = False  # close each connection after its response, without saying so
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve(state: Collector, tls: ssl.SSLContext | None = None) -> Iterator[Collector]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(
                (self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            state.peers.append(self.client_address)
            status, headers = state.answers.pop(0) if state.answers else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = state.hang_up

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    with serve(Collector()) as state:
        yield state


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def decoded(body: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(body)


def test_spans_arrive_as_the_variables_say_on_one_connection(
    spans: list[ReadableSpan], collector: Collector, environment: pytest.MonkeyPatch
) -> None:
    environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url + "/")
    environment.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20s3cret,x-tenant=a")
    environment.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=b")  # wins: all of it
    environment.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    exporter = otlp.OTLPSpanExporter()
    assert exporter.timeout == 2.0
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans[:3]) is SpanExportResult.SUCCESS
    exporter.shutdown()

    (path, headers, body), (_, _, second) = collector.received
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-tenant"] == "b" and "authorization" not in headers
    assert "content-encoding" not in headers
    assert decoded(body) == decoded(official(spans).SerializeToString())
    assert decoded(second) == decoded(official(spans[:3]).SerializeToString())
    assert collector.peers[0] == collector.peers[1]  # kept alive


def test_gzip_when_configured_and_the_traces_endpoint_as_given(
    spans: list[ReadableSpan], collector: Collector, environment: pytest.MonkeyPatch
) -> None:
    environment.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.url + "/custom/path")
    environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")  # not used
    environment.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    exporter = otlp.OTLPSpanExporter()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    [(path, headers, body)] = collector.received
    assert path == "/custom/path" and headers["content-encoding"] == "gzip"
    assert decoded(gzip.decompress(body)) == decoded(official(spans).SerializeToString())


def test_https_with_the_configured_ca_and_client_certificate(
    spans: list[ReadableSpan], environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = Ca(tmp_path)
    server, client = ca.issue("collector", ["localhost"]), ca.issue("edge", ["edge"])
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(server.cert, server.key)
    tls.load_verify_locations(ca.bundle)
    tls.verify_mode = ssl.CERT_REQUIRED  # mutual: the edge's certificate too
    with serve(Collector(), tls) as collector:
        environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://localhost:{collector.port}")
        environment.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(ca.bundle))
        environment.setenv("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", str(client.cert))
        environment.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(client.key))
        exporter = otlp.OTLPSpanExporter()
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert len(collector.received) == 2 and collector.peers[0] == collector.peers[1]
        assert decoded(collector.received[0][2]) == decoded(official(spans).SerializeToString())


def test_a_connection_the_collector_closed_is_opened_again(
    spans: list[ReadableSpan], collector: Collector, environment: pytest.MonkeyPatch
) -> None:
    collector.hang_up = True
    exporter = otlp.OTLPSpanExporter(endpoint=collector.url + "/v1/traces")
    for _ in range(3):
        assert exporter.export(spans[:2]) is SpanExportResult.SUCCESS
    assert len(collector.received) == 3


def test_busy_answers_are_retried_as_the_collector_asks(
    spans: list[ReadableSpan], collector: Collector, environment: pytest.MonkeyPatch
) -> None:
    collector.answers = [(429, {"Retry-After": "0"}), (503, {"Retry-After": "0"}), (200, {})]
    exporter = otlp.OTLPSpanExporter(endpoint=collector.url + "/v1/traces")
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(collector.received) == 3


def test_a_refused_batch_is_logged_without_its_secrets(
    spans: list[ReadableSpan],
    collector: Collector,
    environment: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector.answers = [(400, {})]
    environment.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer s3cret")
    endpoint = f"http://user:pa55@127.0.0.1:{collector.port}/v1/traces?token=t0ken"
    exporter = otlp.OTLPSpanExporter(endpoint=endpoint)
    with caplog.at_level(logging.WARNING, logger="tandem.otlp"):
        assert exporter.export(spans) is SpanExportResult.FAILURE
    assert len(collector.received) == 1  # 400 is not retried
    [(path, headers, _)] = collector.received
    assert path == "/v1/traces?token=t0ken" and headers["authorization"] == "Bearer s3cret"
    assert "HTTP 400" in caplog.text and f"127.0.0.1:{collector.port}/v1/traces" in caplog.text
    for secret in ("s3cret", "pa55", "t0ken", "user"):
        assert secret not in caplog.text


def test_an_unreachable_collector_fails_the_batch_within_the_timeout(
    spans: list[ReadableSpan], environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    environment.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "authorization=Bearer s3cret")
    exporter = otlp.OTLPSpanExporter(endpoint=f"http://127.0.0.1:{free_port()}/v1/traces")
    exporter.timeout = 1.5  # room for one retry (1 s, jittered) and not a second (2 s)
    with caplog.at_level(logging.WARNING, logger="tandem.otlp"):
        assert exporter.export(spans) is SpanExportResult.FAILURE
    assert "ConnectionRefusedError" in caplog.text and "retrying" in caplog.text
    assert "s3cret" not in caplog.text


async def test_the_local_receiver_of_tandem_up_takes_them() -> None:
    """`tandem up`'s own receiver (uvicorn) reads what this exporter sends, as a tree."""
    store = TraceStore()
    server = ApiServer(receiver_app(store), f"127.0.0.1:{free_port()}")
    await server.start()
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": "tandem-edge"}))
        exporter = otlp.OTLPSpanExporter(endpoint=f"http://127.0.0.1:{server.port}/v1/traces")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")

        def call() -> int:
            with (
                tracer.start_as_current_span("call", attributes={"tandem.call_id": "c7"}) as root,
                tracer.start_as_current_span("egress leg", attributes={"sip.status": 486}),
            ):
                pass
            return root.get_span_context().trace_id

        trace_id = await asyncio.to_thread(call)  # the export blocks: off the server's loop
        provider.shutdown()
    finally:
        await server.stop()
    found = store.find(format(trace_id, "032x"))
    assert found is not None and store.find("c7") == found
    assert sorted(s.name for s in found) == ["call", "egress leg"]
    assert {s.service for s in found} == {"tandem-edge"}
    assert next(s for s in found if s.name == "egress leg").attributes["sip.status"] == 486
