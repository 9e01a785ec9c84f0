"""The OTLP/HTTP span exporter: spans written straight to protobuf bytes, posted on one
kept-alive connection.

The official exporter builds a protobuf object per span, attribute and value before it
serializes them (about 40 µs a span, in a thread that holds the GIL while the event loop
waits) and posts through `requests`. This one writes the same `ExportTraceServiceRequest`
bytes directly (field by field, in field order, so the output equals the official
encoder's byte for byte) and posts with `http.client`. It reads the same OTEL_EXPORTER_OTLP_*
variables as the official exporter, retries as it does (429, 502, 503, 504 and lost
connections, with exponential backoff and jitter, honouring Retry-After, within the
timeout), and logs a failure by status and endpoint, never by its headers.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import logging
import math
import os
import random
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind
from opentelemetry.util.re import parse_env_headers

from tandem import __version__

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://localhost:4318"
DEFAULT_TIMEOUT = 10.0  # seconds, as the official exporter reads OTEL_EXPORTER_OTLP_TIMEOUT
MAX_ATTEMPTS = 6
JITTER = 0.2
RETRYABLE = frozenset({429, 502, 503, 504})

# -- the encoder ---------------------------------------------------------------------------
#
# A length-delimited field is its tag, the varint length and the bytes; a message nested in
# another is encoded first and then framed. proto3 leaves out fields at their default
# (empty, zero) except a oneof's member (AnyValue's value) and a message field that is set
# (a span's status, a batch's resource and scope), which the official encoder always sets.

_SMALL = [bytes((n,)) for n in range(0x80)]
_DOUBLE = struct.Struct("<Bd").pack
_TIMES = struct.Struct("<BQBQ").pack  # a span's start (field 7) and end (8), fixed64
_EVENT_TIME = struct.Struct("<BQ").pack  # an event's time (field 1), fixed64
_SPAN_FLAGS = struct.Struct("<2sI").pack  # field 16 (a two-byte tag), fixed32
_LINK_FLAGS = struct.Struct("<BI").pack  # field 6, fixed32
_IDS = struct.Struct(">2sQQ2sQ").pack  # trace id (16 bytes), span id (8), big-endian
_INT64_MIN, _INT64_MAX, _UINT64 = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1

_KIND = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_LOCAL_FLAGS = _SPAN_FLAGS(b"\x85\x01", _HAS_IS_REMOTE)
_REMOTE_FLAGS = _SPAN_FLAGS(b"\x85\x01", _HAS_IS_REMOTE | _IS_REMOTE)
_EMPTY_STATUS = b"\x7a\x00"


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: its tag, the length of `data`, `data`."""
    n = len(data)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + data


def _text(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode())


_keys: dict[str, bytes] = {}  # a KeyValue's key field by key: spans repeat a few keys


def _key(key: str) -> bytes:
    field = _keys.get(key)
    if field is None:
        field = _text(b"\x0a", key)
        if len(_keys) < 4096:
            _keys[key] = field
    return field


def _value(value: Any) -> bytes:
    """An AnyValue's body."""
    if isinstance(value, str):
        return _text(b"\x0a", value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{value} is out of an int64's range")
        return b"\x18" + _varint(value & _UINT64)
    if isinstance(value, float):
        return _DOUBLE(0x21, value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if value is None:
        return b""
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _value(v)) for v in value]))
    if isinstance(value, Mapping):
        pairs = [
            _field(b"\x0a", _key(str(k)) + _field(b"\x12", _value(v))) for k, v in value.items()
        ]
        return _field(b"\x32", b"".join(pairs))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


# A KeyValue's bytes by (key, value), for string and integer values: most of them repeat
# from span to span (an edge, a trunk, a status); the cache starts over when it is full,
# so values seen once (a Call-ID) only cost their place until then. A value is looked up
# in the cache of its exact type, so True, 1 and 1.0 never stand for one another.
_CACHED, _CACHED_PAIR = 8192, 160  # pairs, and bytes a pair: at most ~3 MB in all
_strings: dict[tuple[str, Any], bytes] = {}
_ints: dict[tuple[str, Any], bytes] = {}


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Each attribute as a KeyValue field; one that cannot be encoded is logged and left
    out, as the official encoder does."""
    if not attributes:
        return b""
    if isinstance(attributes, MappingProxyType | BoundedAttributes):
        attributes = attributes.copy()  # a dict, whose items are iterated in C, not in Python
    out = []
    for item in attributes.items():
        kind = type(item[1])
        cache = _strings if kind is str else _ints if kind is int else None
        if cache is not None:
            pair = cache.get(item)
            if pair is not None:
                out.append(tag + pair)
                continue
        try:
            # untagged: the same pair goes in spans, events and links under their tags
            pair = _field(b"", _key(item[0]) + _field(b"\x12", _value(item[1])))
        except (TypeError, ValueError) as error:
            log.error("span attribute %s not exported: %s", item[0], error)
            continue
        if cache is not None and len(pair) <= _CACHED_PAIR:
            if len(cache) >= _CACHED:
                cache.clear()
            cache[item] = pair
        out.append(tag + pair)
    return b"".join(out)


def _count(tag: bytes, n: int) -> bytes:
    return tag + _varint(n) if n else b""


def _trace_state(context: SpanContext) -> bytes:
    state = context.trace_state
    if not state:
        return b""
    return _text(b"\x1a", ",".join([f"{k}={v}" for k, v in state.items()]))


def _ids(context: SpanContext) -> bytes:
    """The trace id (field 1) and span id (field 2) of a span or a link."""
    trace_id = context.trace_id
    return _IDS(b"\x0a\x10", trace_id >> 64, trace_id & _UINT64, b"\x12\x08", context.span_id)


def _span(span: ReadableSpan) -> bytes:
    context = span.context
    assert context is not None  # an SDK span always has one
    parent = span.parent
    status = span.status
    parts = [
        _ids(context),
        _trace_state(context),
        b"\x22\x08" + parent.span_id.to_bytes(8, "big") if parent is not None else b"",
        _text(b"\x2a", span.name) if span.name else b"",
        _KIND[span.kind],
        _TIMES(0x39, span.start_time or 0, 0x41, span.end_time or 0),
        _attributes(b"\x4a", span.attributes),
        _count(b"\x50", span.dropped_attributes),
    ]
    for event in span.events:
        name = _text(b"\x12", event.name) if event.name else b""
        body = _EVENT_TIME(0x09, event.timestamp) + name + _attributes(b"\x1a", event.attributes)
        body += _count(b"\x20", event.dropped_attributes)
        parts.append(_field(b"\x5a", body))
    parts.append(_count(b"\x60", span.dropped_events))
    for link in span.links:
        linked = link.context
        # no trace_state (field 3): the official encoder leaves a link's out, and so do we
        body = _ids(linked) + _attributes(b"\x22", link.attributes)
        body += _count(b"\x28", link.dropped_attributes)
        body += _LINK_FLAGS(0x35, _HAS_IS_REMOTE | (_IS_REMOTE if linked.is_remote else 0))
        parts.append(_field(b"\x6a", body))
    parts.append(_count(b"\x70", span.dropped_links))
    code = status.status_code.value
    if code or status.description:
        message = _text(b"\x12", status.description) if status.description else b""
        parts.append(_field(b"\x7a", message + (b"\x18" + _SMALL[code] if code else b"")))
    else:
        parts.append(_EMPTY_STATUS)
    parts.append(_REMOTE_FLAGS if parent is not None and parent.is_remote else _LOCAL_FLAGS)
    return _field(b"\x12", b"".join(parts))  # as ScopeSpans.spans (field 2)


def _scope(scope: InstrumentationScope | None) -> tuple[bytes, bytes]:
    """A ScopeSpans' scope field and its schema_url field, which follows the spans."""
    if scope is None:
        return b"\x0a\x00", b""
    body = _text(b"\x0a", scope.name) if scope.name else b""
    body += _text(b"\x12", scope.version) if scope.version else b""
    body += _attributes(b"\x1a", scope.attributes)
    return _field(b"\x0a", body), _text(b"\x1a", scope.schema_url) if scope.schema_url else b""


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ExportTraceServiceRequest of `spans`, grouped by resource and then
    by instrumentation scope in the order they first appear, as the official encoder
    groups them."""
    grouped: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    # the spans of a batch share one or two Resource objects, whose hash is a JSON dump:
    # look a resource (and a scope) up only when it is not the previous span's
    resource: Resource | None = None
    scope: InstrumentationScope | None = None
    encoded: list[bytes] = []
    for span in spans:
        if span.resource is not resource or (span.instrumentation_scope or None) is not scope:
            resource, scope = span.resource, span.instrumentation_scope or None
            encoded = grouped.setdefault(resource, {}).setdefault(scope, [])
        encoded.append(_span(span))
    out = []
    for resource, by_scope in grouped.items():
        body = [_field(b"\x0a", _attributes(b"\x0a", resource.attributes))]
        for scope, encoded in by_scope.items():
            head, schema_url = _scope(scope)
            body.append(_field(b"\x12", head + b"".join(encoded) + schema_url))
        if resource.schema_url:
            body.append(_text(b"\x1a", resource.schema_url))
        out.append(_field(b"\x0a", b"".join(body)))  # ExportTraceServiceRequest.resource_spans
    return b"".join(out)


# -- the exporter --------------------------------------------------------------------------


def _setting(name: str) -> str | None:
    """An OTEL_EXPORTER_OTLP_TRACES_* variable, or else its OTEL_EXPORTER_OTLP_* fallback."""
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{name}"
    )


def _timeout() -> float:
    raw = _setting("TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        log.warning("OTLP timeout %r is not a number: %s s instead", raw, DEFAULT_TIMEOUT)
        return DEFAULT_TIMEOUT


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110: seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class OTLPSpanExporter(SpanExporter):
    """Spans to an OTLP/HTTP collector as protobuf, configured as the official exporter is
    (endpoint, headers, timeout in seconds, compression and certificates from the
    OTEL_EXPORTER_OTLP_[TRACES_]* variables), one request at a time on one connection."""

    def __init__(
        self,
        endpoint: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        compression: str | None = None,
    ) -> None:
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
        endpoint = (
            endpoint
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or f"{base.removesuffix('/')}/v1/traces"
        )
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"OTLP endpoint {self._shown(endpoint)} is not an http(s) URL")
        self.endpoint = self._shown(endpoint)  # what the logs may show
        self.timeout = timeout if timeout is not None else _timeout()
        self.compression = (compression or _setting("COMPRESSION") or "none").strip().lower()
        if self.compression not in ("none", "gzip", "deflate"):
            log.warning("OTLP compression %r is not supported: none instead", self.compression)
            self.compression = "none"
        self._path = url.path or "/"
        if url.query:
            self._path += f"?{url.query}"
        sent = {
            "content-type": "application/x-protobuf",
            "user-agent": f"tandem/{__version__} (OTLP/HTTP)",
        }
        sent.update(parse_env_headers(_setting("HEADERS") or "", liberal=True))
        sent.update({k.lower(): v for k, v in (headers or {}).items()})
        if url.username and "authorization" not in sent:  # as requests does with userinfo
            userinfo = f"{unquote(url.username)}:{unquote(url.password or '')}"
            sent["authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        if self.compression != "none":
            sent.setdefault("content-encoding", self.compression)
        self._headers = sent
        port = url.port or (443 if url.scheme == "https" else 80)
        self._connection: http.client.HTTPConnection
        if url.scheme == "https":
            tls = ssl.create_default_context(cafile=_setting("CERTIFICATE"))
            if certificate := _setting("CLIENT_CERTIFICATE"):
                tls.load_cert_chain(certificate, _setting("CLIENT_KEY"))
            self._connection = http.client.HTTPSConnection(
                url.hostname, port, timeout=self.timeout, context=tls
            )
        else:
            self._connection = http.client.HTTPConnection(url.hostname, port, timeout=self.timeout)
        self._stopped = threading.Event()

    @staticmethod
    def _shown(endpoint: str) -> str:
        """The endpoint without its userinfo and query, where a token may be."""
        url = urlsplit(endpoint)
        netloc = url.netloc.rpartition("@")[2]
        return f"{url.scheme}://{netloc}{url.path}"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopped.is_set():
            return SpanExportResult.FAILURE
        try:
            body = encode_spans(spans)
        except Exception:  # a span the SDK let through but OTLP cannot carry
            log.exception("%d spans not exported: they could not be encoded", len(spans))
            return SpanExportResult.FAILURE
        if self.compression == "gzip":
            body = gzip.compress(body)
        elif self.compression == "deflate":
            body = zlib.compress(body)
        deadline = time.monotonic() + self.timeout
        for attempt in range(MAX_ATTEMPTS):
            wait = 2**attempt * random.uniform(1 - JITTER, 1 + JITTER)
            try:
                status, reason, retry_after = self._post(body, deadline)
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out
                problem = f"{type(error).__name__}: {error}"
            else:
                if 200 <= status < 400:
                    return SpanExportResult.SUCCESS
                problem = f"HTTP {status} {reason}"
                if status not in RETRYABLE:
                    break
                if (asked := _retry_after(retry_after)) is not None:
                    wait = asked
            if attempt + 1 == MAX_ATTEMPTS or wait > deadline - time.monotonic():
                break
            log.warning("span export to %s: %s, retrying in %.1f s", self.endpoint, problem, wait)
            if self._stopped.wait(wait):
                break
        log.error("%d spans not exported to %s: %s", len(spans), self.endpoint, problem)
        return SpanExportResult.FAILURE

    def _post(self, body: bytes, deadline: float) -> tuple[int, str, str | None]:
        """POST the batch; a kept-alive connection the collector has closed meanwhile is
        opened again at once, once. The response's status, reason and Retry-After."""
        connection = self._connection
        for fresh in (connection.sock is None, True):
            timeout = max(deadline - time.monotonic(), 0.001)
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            try:
                connection.request("POST", self._path, body, self._headers)
                response = connection.getresponse()
                response.read()  # the whole of it, so the connection can carry the next
            except (OSError, http.client.HTTPException):
                connection.close()
                if fresh or time.monotonic() >= deadline:
                    raise
                continue
            if response.will_close:
                connection.close()
            return response.status, response.reason, response.getheader("retry-after")
        raise AssertionError("unreachable")  # the second attempt returns or raises

    def shutdown(self) -> None:
        self._stopped.set()
        self._connection.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing is held here: each export is sent before it returns
