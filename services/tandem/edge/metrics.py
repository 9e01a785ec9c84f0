"""The edge's Prometheus metrics, labelled by edge id (tests run several edges in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge

REQUESTS = Counter("tandem_edge_sip_requests_total", "SIP requests received", ["edge", "method"])
RESPONSES = Counter(
    "tandem_edge_sip_responses_total",
    "SIP responses by code and direction (in: received, out: sent)",
    ["edge", "direction", "code"],
)
MALFORMED = Counter(
    "tandem_edge_sip_malformed_total", "Messages that failed to parse", ["edge", "kind"]
)
ADMISSION_REJECTS = Counter(
    "tandem_edge_admission_rejects_total",
    "Requests refused at admission (unknown source, trunk limit, overload, draining)",
    ["edge", "reason"],
)
CALLS_ACTIVE = Gauge("tandem_edge_calls_active", "Calls this edge owns", ["edge"])
LEGS_ACTIVE = Gauge("tandem_edge_legs_active", "Egress legs this edge runs", ["edge"])
CALLS = Counter("tandem_edge_calls_total", "Calls ended, by final status", ["edge", "status"])
FAILOVERS = Counter(
    "tandem_edge_failovers_total", "Attempts given up for the next target", ["edge", "reason"]
)
PROTOCOL_ERRORS = Counter(
    "tandem_edge_protocol_errors_total",
    "Events a call or leg machine could not take in its state (logged, answered 500)",
    ["edge", "machine", "state", "event"],
)
MEDIA_FAILURES = Counter(
    "tandem_edge_media_failures_total",
    "SDP rewrites rtpengine did not do: refused (488 or the request refused) or unreachable "
    "(503, or the call bypassed with media_fallback: bypass)",
    ["edge", "reason"],
)
MEDIA_CALLS = Counter(
    "tandem_edge_media_calls_total",
    "Answered calls by media: anchored, fallback (rtpengine unreachable: bypassed), bypassed",
    ["edge", "media"],
)
TRUNK_UP = Gauge("tandem_edge_trunk_up", "Trunk health by OPTIONS probes (1 up)", ["edge", "trunk"])
LOAD = Gauge(
    "tandem_edge_load_seconds",
    "The shedding signals: lag (the event loop's, smoothed), queue (a datagram's wait in the "
    "UDP socket), routing (the oldest wait for a route); past its limit, new INVITEs get 503",
    ["edge", "signal"],
)
LOAD_SIGNALS = {"lag": "lag_ms", "queue": "queue_ms", "routing": "routing_wait_ms"}  # in `load`


class EdgeMetrics:
    """One edge's children of the metrics above, cached so a message costs a dict lookup."""

    def __init__(self, edge: str) -> None:
        self.edge = edge
        self._requests: dict[str, Counter] = {}
        self._responses: dict[tuple[str, int], Counter] = {}
        self.calls_active = CALLS_ACTIVE.labels(edge)
        self.legs_active = LEGS_ACTIVE.labels(edge)

    def request(self, method: str) -> None:
        child = self._requests.get(method)
        if child is None:
            # methods are attacker-chosen tokens: bound the label set
            label = method if len(self._requests) < 32 else "other"
            child = self._requests[method] = REQUESTS.labels(self.edge, label)
        child.inc()

    def response(self, direction: str, status: int) -> None:
        key = (direction, status)
        child = self._responses.get(key)
        if child is None:
            child = self._responses[key] = RESPONSES.labels(self.edge, direction, str(status))
        child.inc()

    def malformed(self, kind: str) -> None:
        MALFORMED.labels(self.edge, kind).inc()

    def reject(self, reason: str) -> None:
        ADMISSION_REJECTS.labels(self.edge, reason).inc()

    def failover(self, reason: str) -> None:
        FAILOVERS.labels(self.edge, reason).inc()

    def protocol_error(self, machine: str, state: str, event: str) -> None:
        PROTOCOL_ERRORS.labels(self.edge, machine, state, event).inc()

    def call_ended(self, status: int) -> None:
        CALLS.labels(self.edge, str(status)).inc()

    def media_failure(self, reason: str) -> None:
        MEDIA_FAILURES.labels(self.edge, reason).inc()

    def media_call(self, media: str) -> None:
        MEDIA_CALLS.labels(self.edge, media or "bypassed").inc()

    def watch_load(self, load: Callable[[], dict[str, float]]) -> None:
        """Each scrape reads the shedding signals from `load` (the edge's status figures)."""

        def seconds(key: str) -> Callable[[], float]:
            return lambda: load()[key] / 1000

        for signal, key in LOAD_SIGNALS.items():
            LOAD.labels(self.edge, signal).set_function(seconds(key))

    def trunk_up(self, trunk: str, up: bool) -> None:
        TRUNK_UP.labels(self.edge, trunk).set(1 if up else 0)
