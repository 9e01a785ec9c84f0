"""When an edge stops taking new calls: before the calls it has would miss their deadlines.

Two signs predict it, and neither fires on a single hiccup: the event loop's lateness,
smoothed (a garbage collection or a burst of datagrams sheds nothing), and how long the
oldest call has been waiting for its route decision (the pipeline behind the edge, the bus
and the routers, is falling behind). Either past its threshold, new INVITEs get 503 with
Retry-After at once, which costs a parse and a reply, not a call's worth of work.
"""

from __future__ import annotations

LAG_S = 0.1  # smoothed lateness of the event loop
ROUTING_S = 0.5  # a decision is a millisecond's work: this long behind is a backlog
SMOOTHING = 0.2  # weight of each new lag sample (taken every LAG_CHECK_S)


class Overload:
    """The edge's load signals, and whether they refuse a new call."""

    def __init__(self) -> None:
        self.lag = 0.0  # seconds, smoothed

    def sample(self, lag: float) -> None:
        self.lag += SMOOTHING * (max(lag, 0.0) - self.lag)

    def figures(self, routing_wait: float) -> dict[str, float]:
        """The signals and their thresholds, in ms (the edge's status shows them)."""
        return {
            "lag_ms": round(self.lag * 1000, 1),
            "lag_limit_ms": LAG_S * 1000,
            "routing_wait_ms": round(routing_wait * 1000, 1),
            "routing_limit_ms": ROUTING_S * 1000,
        }

    def refuses(self, routing_wait: float) -> bool:
        """True when a new call should be refused; `routing_wait` is how long the oldest
        call still waiting for its route decision has waited (0 for none)."""
        return self.lag > LAG_S or routing_wait > ROUTING_S
