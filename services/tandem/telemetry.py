"""Tracing and logging for every process: OpenTelemetry from the OTEL_* variables, one-line logs.

Spans are exported by OTLP/HTTP (`tandem.otlp`, batched by the SDK's processor, which reads
the OTEL_BSP_* variables) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific
variable) is set, and not at all otherwise. The trace context crosses NATS as a W3C
`traceparent` header.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tandem import __version__
from tandem.otlp import OTLPSpanExporter

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def setup_tracing(service: str) -> TracerProvider:
    """Install the global tracer provider for this process (idempotent per process)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    name = os.environ.get("OTEL_SERVICE_NAME", f"tandem-{service}")
    resource = Resource.create({"service.name": name, "service.version": __version__})
    provider = TracerProvider(resource=resource)
    if any(os.environ.get(var) for var in ENDPOINT_VARS):
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name, __version__)


def inject(carrier: dict[str, str], ctx: context.Context | None = None) -> dict[str, str]:
    """Add the current (or given) trace context to a header dict, and return it."""
    propagate.inject(carrier, context=ctx)
    return carrier


def extract(carrier: dict[str, str] | None) -> context.Context:
    return propagate.extract(carrier or {})


def mask_number(number: str, masked: bool) -> str:
    """Numbers in spans and logs: in full, or with all but the last four digits hidden."""
    if not masked or len(number) <= 4:
        return number
    return "*" * (len(number) - 4) + number[-4:]


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        line = f"{line} {extra}" if extra else line
        return line.replace("\n", " | ")  # one line per event, always


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "uvicorn.error", "nats", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
