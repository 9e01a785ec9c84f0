"""Which trunk a request comes from (its sources; the most specific match wins), and the
rate limit on answering sources that are no trunk's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from tandem.policy import Source, Trunk

# An unknown source gets at most this many 403s per second (with a burst of REJECT_BURST);
# past that its requests are dropped, so a flood costs a counter increment, not a reply.
REJECT_RATE_PER_S = 5.0
REJECT_BURST = 10.0
MAX_TRACKED_SOURCES = 10000


class Admission:
    """The trunks this edge serves, looked up by source address (cached per address)."""

    def __init__(self, trunks: Iterable[Trunk]) -> None:
        entries = [(source, trunk) for trunk in trunks for source in trunk.admitted]
        # most specific first: longest prefix, then a port beats no port
        entries.sort(key=lambda entry: entry[0].specificity, reverse=True)
        self._entries: list[tuple[Source, Trunk]] = entries
        self._cache: dict[tuple[str, int], Trunk | None] = {}

    def trunk(self, host: str, port: int) -> Trunk | None:
        key = (host, port)
        try:
            return self._cache[key]
        except KeyError:
            pass
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        found = next((t for s, t in self._entries if s.matches(ip, port)), None)
        if len(self._cache) >= MAX_TRACKED_SOURCES:
            self._cache.clear()
        self._cache[key] = found
        return found


class RejectLimiter:
    """A token bucket per unknown source IP: whether this reject may still be answered."""

    def __init__(self, rate: float = REJECT_RATE_PER_S, burst: float = REJECT_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, host: str, now: float) -> bool:
        tokens, last = self._buckets.get(host, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= MAX_TRACKED_SOURCES and host not in self._buckets:
            self._buckets.clear()  # a spoofed-source flood must not grow memory
        self._buckets[host] = (tokens, now)
        return allowed
