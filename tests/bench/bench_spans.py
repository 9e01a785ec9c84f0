"""Span export: CPU per span of the official OTLP/HTTP exporter and of tandem.otlp's.

The spans are an edge's own, made by `tandem.edge.tracing` on a real TracerProvider: per
call the `call` span and its `ingress leg`, one `egress leg` (two for one call in four,
which failed over: an `attempt failed` event), half of them anchored with their RTP
figures. Each round's batch holds new calls, so the Call-IDs are new as in production.
Figures are the CPU time of the exporting thread (`time.thread_time`) per span, the
median of the rounds, official and ours alternating: for the encoding alone, and for
encode and POST to a local sink (a separate process that answers 200 to each request),
at the batch processor's largest batch (512) and at a small one (a quiet edge's 200 ms).

Run: .venv/bin/python -m tests.bench.bench_spans [--rounds 9] [--batches 512,32]
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tandem import __version__, otlp
from tandem.b2bua.actions import Finished
from tandem.edge.tracing import CallTrace, LegTrace
from tandem.pb import tandem_pb2 as pb


def edge_spans(calls: int, first: int) -> list[ReadableSpan]:
    provider = TracerProvider(
        resource=Resource.create({"service.name": "tandem-edge", "service.version": __version__})
    )
    finished = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("tandem.edge", __version__)
    for n in range(first, first + calls):
        call_id = f"{n:08x}-5c1e-4b0a-9d2e-1f0c{n:08x}"
        call = CallTrace(tracer, "edge-pbx", call_id, "pbx", f"{n}a7f3@10.1.2.3", mask=True)
        call.numbers(f"+4420794{n % 100_000:05d}", f"+3314567{n % 10_000:04d}")
        call.event(pb.CallEvent(kind=pb.CallEvent.ROUTED, route="uk-national"))
        anchored = n % 2 == 0
        parent = trace.set_span_in_context(call.span)
        for attempt, trunk in enumerate(["carrier-a", "carrier-b"][: 2 if n % 4 == 0 else 1], 1):
            target = pb.RouteTarget(trunk=trunk, called=f"+4420794{n % 100_000:05d}")
            create = pb.LegCreate(target=target, attempt=attempt, anchored=anchored)
            command = pb.LegCommand(call_id=call_id, leg_id=f"{call_id}.{attempt}", create=create)
            leg = LegTrace(tracer, parent, "edge-pstn", command, f"{n}b{attempt}@10.9.8.7", True)
            failed = attempt == 1 and n % 4 == 0
            leg.finish(Finished(503 if failed else 200, "Service Unavailable" if failed else "OK"))
            if failed:
                event = pb.CallEvent(kind=pb.CallEvent.LEG_FAILED, status=503, failure="response")
                call.event(event)
            if anchored:
                leg.quality(quality(n))
        if anchored:
            media = pb.CallEvent(kind=pb.CallEvent.ENDED, media="anchored", quality=[quality(n)])
            call.event(media)
        call.finish(Finished(200, "OK"))
    return list(finished.get_finished_spans())


def quality(n: int) -> pb.MediaQuality:
    return pb.MediaQuality(
        rtpengine="10.0.0.5:2223",
        protocol="RTP/AVP",
        packets_from=1500 + n % 97,
        packets_to=1500 + n % 89,
        packets_lost=n % 7,
        loss_percent=(n % 7) / 15,
        jitter_ms=1.5 + n % 5,
        mos=4.3,
    )


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(ready: multiprocessing.SimpleQueue[int]) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    ready.put(server.server_address[1])
    server.serve_forever()


def cpu_us_per_span(
    work: Callable[[Sequence[ReadableSpan]], object], batch: list[ReadableSpan]
) -> float:
    start = time.thread_time()
    work(batch)
    return (time.thread_time() - start) / len(batch) * 1e6


def measure(
    contenders: dict[str, Callable[[Sequence[ReadableSpan]], object]],
    batches: list[list[ReadableSpan]],
) -> dict[str, float]:
    """The median over `batches` of each contender's CPU µs per span, taking turns."""
    figures: dict[str, list[float]] = {name: [] for name in contenders}
    for work in contenders.values():
        work(batches[0][:8])  # warm: imports, the first connection
    for batch in batches:
        for name, work in contenders.items():
            figures[name].append(cpu_us_per_span(work, batch))
    return {name: statistics.median(values) for name, values in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batches", default="512,32")
    args = parser.parse_args()

    ready: multiprocessing.SimpleQueue[int] = multiprocessing.SimpleQueue()
    sink = multiprocessing.Process(target=serve, args=(ready,), daemon=True)
    sink.start()
    endpoint = f"http://127.0.0.1:{ready.get()}/v1/traces"
    exporters: dict[str, SpanExporter] = {
        "official": OTLPSpanExporter(endpoint=endpoint),
        "tandem.otlp": otlp.OTLPSpanExporter(endpoint=endpoint),
    }
    print(f"{'batch':>6} {'what':<14} {'official µs/span':>17} {'tandem.otlp':>12} {'ratio':>6}")
    try:
        for size in (int(b) for b in args.batches.split(",")):
            spans = edge_spans(calls=(size * args.rounds) // 3 + 16, first=size * 1000)
            batches = [spans[i * size : (i + 1) * size] for i in range(args.rounds)]
            for what, contenders in (
                (
                    "encode",
                    {
                        "official": lambda s: encode_spans(s).SerializePartialToString(),
                        "tandem.otlp": otlp.encode_spans,
                    },
                ),
                ("encode+post", {name: e.export for name, e in exporters.items()}),
            ):
                got = measure(contenders, batches)
                ratio = got["official"] / got["tandem.otlp"]
                print(
                    f"{size:>6} {what:<14} {got['official']:>17.1f} {got['tandem.otlp']:>12.1f}"
                    f" {ratio:>5.1f}x"
                )
        size = len(otlp.encode_spans(batches[0])) / len(batches[0])
        print(f"({size:.0f} bytes a span on the wire; {args.rounds} rounds, medians)")
    finally:
        for exporter in exporters.values():
            exporter.shutdown()
        sink.terminate()


if __name__ == "__main__":
    main()
