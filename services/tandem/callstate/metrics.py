"""Prometheus figures of callstate: the same per-trunk figures as `GET /v1/stats`, at scrape time.

A collector reads them from the leading Service when scraped, so /metrics and the API can
never disagree; a standby exports none (sum over replicas safely). It is registered once
per process (tests run several services in one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tandem.callstate.stats import Figures


class Service(Protocol):
    """What the collector reads of a callstate replica."""

    @property
    def leading(self) -> bool: ...
    @property
    def calls(self) -> Sized: ...
    @property
    def cdrs_written(self) -> int: ...
    def trunks(self) -> list[str]: ...
    def figures(self, trunk: str) -> dict[str, Figures]: ...
    def active(self, trunk: str) -> tuple[int, int]: ...
    def trunk_stats(self, trunk: str) -> dict[str, Any]: ...


EVENTS = Counter(
    "tandem_callstate_events", "Call events consumed, by what they did", ["result"]
)  # applied, duplicate, after_end, undecodable

_services: list[Service] = []


class TrunkCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        service = next((s for s in _services if s.leading), None)
        attempts = CounterMetricFamily(
            "tandem_trunk_attempts", "Call attempts", labels=["trunk", "direction"]
        )
        answered = CounterMetricFamily(
            "tandem_trunk_answered", "Answered attempts", labels=["trunk", "direction"]
        )
        failures = CounterMetricFamily(
            "tandem_trunk_failures",
            "Failed attempts by final SIP code",
            labels=["trunk", "direction", "code"],
        )
        active = GaugeMetricFamily(
            "tandem_trunk_active_calls", "Calls up now", labels=["trunk", "direction"]
        )
        peak = GaugeMetricFamily(
            "tandem_trunk_peak_calls", "Most calls up at once", labels=["trunk"]
        )
        asr = GaugeMetricFamily("tandem_trunk_asr", "Answer-seizure ratio", labels=["trunk"])
        ner = GaugeMetricFamily(
            "tandem_trunk_ner", "Network effectiveness ratio (Teams)", labels=["trunk"]
        )
        acd = GaugeMetricFamily(
            "tandem_trunk_acd_seconds", "Average call duration", labels=["trunk"]
        )
        media_legs = CounterMetricFamily(
            "tandem_trunk_media_legs",
            "Anchored legs ended (RTP through rtpengine)",
            labels=["trunk", "direction"],
        )
        media_packets = CounterMetricFamily(
            "tandem_trunk_media_packets",
            "RTP packets from the trunk in anchored legs",
            labels=["trunk", "direction"],
        )
        media_lost = CounterMetricFamily(
            "tandem_trunk_media_packets_lost",
            "RTP packets from the trunk lost on the way (RTCP) in anchored legs",
            labels=["trunk", "direction"],
        )
        mos = GaugeMetricFamily(
            "tandem_trunk_media_mos",
            "Average MOS of the trunk's anchored legs (from RTCP)",
            labels=["trunk", "direction"],
        )
        jitter = GaugeMetricFamily(
            "tandem_trunk_media_jitter_seconds",
            "Average jitter of the trunk's anchored legs (from RTCP)",
            labels=["trunk", "direction"],
        )
        calls = GaugeMetricFamily("tandem_callstate_active_calls", "Calls in progress")
        cdrs = CounterMetricFamily("tandem_callstate_cdrs", "CDRs written by this process")
        if service is not None:
            calls.add_metric([], len(service.calls))
            cdrs.add_metric([], service.cdrs_written)
            for trunk in service.trunks():
                for direction, figures in service.figures(trunk).items():
                    attempts.add_metric([trunk, direction], figures.attempts)
                    answered.add_metric([trunk, direction], figures.answered)
                    for code, n in sorted(figures.failures.items()):
                        failures.add_metric([trunk, direction, str(code)], n)
                    media = figures.media_summary()
                    if media is not None:
                        labels = [trunk, direction]
                        media_legs.add_metric(labels, media["anchored_legs"])
                        media_packets.add_metric(labels, media["packets"])
                        media_lost.add_metric(labels, media["packets_lost"])
                        if media["mos"] is not None:
                            mos.add_metric(labels, media["mos"])
                            jitter.add_metric(labels, media["jitter_ms"] / 1000)
                for direction, n in zip(("in", "out"), service.active(trunk), strict=True):
                    active.add_metric([trunk, direction], n)
                stats = service.trunk_stats(trunk)
                peak.add_metric([trunk], stats["peak"])
                for family, name in ((asr, "asr"), (ner, "ner"), (acd, "acd_s")):
                    if stats[name] is not None:
                        family.add_metric([trunk], stats[name])
        yield from (attempts, answered, failures, active, peak, asr, ner, acd, calls, cdrs)
        yield from (media_legs, media_packets, media_lost, mos, jitter)


_collector = TrunkCollector()
REGISTRY.register(_collector)


def register(service: Service, remove: bool = False) -> None:
    if remove:
        if service in _services:
            _services.remove(service)
    elif service not in _services:
        _services.append(service)
