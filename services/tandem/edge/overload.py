"""When an edge stops taking new calls: before the calls it has would miss their deadlines.

Three signs predict it, and none fires on a single hiccup:
- the event loop's lateness, smoothed (a garbage collection or a burst sheds nothing);
- how long a datagram arriving now waits in the kernel before the edge reads it, measured
  by a probe of its own sent to its SIP port (it queues behind everything else there). The
  loop reads a bounded batch of datagrams per turn, so its lag stays at a few ms while the
  socket holds seconds of INVITEs and their retransmissions: this is where an edge offered
  twice what the machine can carry falls behind;
- how long the oldest call has been waiting for its route decision (the pipeline behind
  the edge, the bus and the routers, is falling behind).
Any past its threshold, new INVITEs get 503 with Retry-After at once, which costs a parse
and a reply, not a call's worth of work.
"""

from __future__ import annotations

LAG_S = 0.1  # smoothed lateness of the event loop
# An INVITE read this late is answered 100 Trying this late: well before T1 (500 ms), when
# the caller sends it again and the queue doubles
QUEUE_S = 0.15
PROBE_LOST_S = 1.0  # a probe not back by then was dropped (a full socket): send another
ROUTING_S = 0.5  # a decision is a millisecond's work: this long behind is a backlog
SMOOTHING = 0.2  # weight of each new lag sample (taken every LAG_CHECK_S)


class Overload:
    """The edge's load signals, and whether they refuse a new call."""

    def __init__(self) -> None:
        self.lag = 0.0  # seconds, smoothed
        self.queue = 0.0  # seconds the last probe waited (or the one out has, so far)
        self._probe_sent: float | None = None

    def sample(self, lag: float) -> None:
        self.lag += SMOOTHING * (max(lag, 0.0) - self.lag)

    def probe_due(self, now: float) -> bool:
        """Whether to send a probe now: one is out at a time, and while it is out the wait
        is at least its age; one lost is replaced after PROBE_LOST_S."""
        if self._probe_sent is not None:
            self.queue = max(self.queue, now - self._probe_sent)
            if now - self._probe_sent < PROBE_LOST_S:
                return False
        self._probe_sent = now
        return True

    def probe_arrived(self, now: float) -> None:
        if self._probe_sent is not None:
            self.queue = now - self._probe_sent
            self._probe_sent = None

    def figures(self, routing_wait: float) -> dict[str, float]:
        """The signals and their thresholds, in ms (the edge's status shows them)."""
        return {
            "lag_ms": round(self.lag * 1000, 1),
            "lag_limit_ms": LAG_S * 1000,
            "queue_ms": round(self.queue * 1000, 1),
            "queue_limit_ms": QUEUE_S * 1000,
            "routing_wait_ms": round(routing_wait * 1000, 1),
            "routing_limit_ms": ROUTING_S * 1000,
        }

    def refuses(self, routing_wait: float) -> bool:
        """True when a new call should be refused; `routing_wait` is how long the oldest
        call still waiting for its route decision has waited (0 for none)."""
        return self.lag > LAG_S or self.queue > QUEUE_S or routing_wait > ROUTING_S
