"""Per-trunk traffic figures (attempts, answers, ASR, NER, ACD, failures by SIP code, and the
RTP quality of anchored calls) as sums.

Every figure is a sum of per-call contributions, so the totals can always be rebuilt from
the records alone: finished calls from their CDRs, calls in progress from their active
records. A call's contribution is subtracted and added back whenever its record changes,
which keeps the totals exact however often a call is replayed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from tandem.pb import tandem_pb2 as pb

Direction = Literal["in", "out"]
Key = tuple[str, Direction]  # (trunk, direction)
DIRECTIONS: tuple[Direction, ...] = ("in", "out")

# Teams' NER (after ITU-T E.425): the calls the network delivered, whatever the called party
# then did, over all attempts. Besides answered calls it counts user busy, ring-no-answer
# (including the caller giving up while it rang) and terminal rejects of the number itself.
USER_BUSY = frozenset({486, 600})
RING_NO_ANSWER = frozenset({480, 487})
TERMINAL_REJECT = frozenset({404, 410, 484, 485, 603, 604})
NETWORK_EFFECTIVE = USER_BUSY | RING_NO_ANSWER | TERMINAL_REJECT


@dataclass
class Figures:
    """The counts of one trunk in one direction; ratios are derived in `summary`."""

    attempts: int = 0
    answered: int = 0
    effective: int = 0  # NER numerator: answered, busy, ring-no-answer, terminal reject
    active: int = 0
    completed: int = 0  # answered calls that have ended: the ACD denominator
    duration_s: float = 0.0
    failures: dict[int, int] = field(default_factory=dict)
    # anchored legs (their CDR's figures): RTP packets from the trunk, lost on the way, and
    # MOS and jitter of the legs that had RTCP
    media_legs: int = 0
    media_packets: int = 0
    media_lost: int = 0
    rtcp_legs: int = 0
    mos_sum: float = 0.0
    jitter_ms_sum: float = 0.0

    def add(self, other: Figures, sign: int = 1) -> None:
        for name in SUMS:
            setattr(self, name, getattr(self, name) + sign * getattr(other, name))
        for code, n in other.failures.items():
            total = self.failures.get(code, 0) + sign * n
            if total:
                self.failures[code] = total
            else:
                self.failures.pop(code, None)

    def to_json(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "answered": self.answered,
            "effective": self.effective,
            "completed": self.completed,
            "duration_s": self.duration_s,
            "failures": {str(code): n for code, n in sorted(self.failures.items())},
            "media": [
                self.media_legs,
                self.media_packets,
                self.media_lost,
                self.rtcp_legs,
                self.mos_sum,
                self.jitter_ms_sum,
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figures:
        return cls(
            attempts=int(data["attempts"]),
            answered=int(data["answered"]),
            effective=int(data["effective"]),
            completed=int(data["completed"]),
            duration_s=float(data["duration_s"]),
            failures={int(code): int(n) for code, n in data["failures"].items()},
            **_media_from_json(data.get("media") or [0, 0, 0, 0, 0.0, 0.0]),  # older: none
        )

    def summary(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "answered": self.answered,
            "asr": ratio(self.answered, self.attempts),
            "ner": ratio(self.effective, self.attempts),
            "acd_s": round(self.duration_s / self.completed, 3) if self.completed else None,
            "failures": {str(code): n for code, n in sorted(self.failures.items())},
            "media": self.media_summary(),
        }

    def media_summary(self) -> dict[str, Any] | None:
        """The RTP of its anchored legs: packets, loss, average MOS and jitter."""
        if not self.media_legs:
            return None
        sent = self.media_packets + self.media_lost
        rtcp = self.rtcp_legs
        return {
            "anchored_legs": self.media_legs,
            "packets": self.media_packets,
            "packets_lost": self.media_lost,
            "loss_percent": round(100 * self.media_lost / sent, 3) if sent else 0.0,
            "mos": round(self.mos_sum / rtcp, 2) if rtcp else None,
            "jitter_ms": round(self.jitter_ms_sum / rtcp, 2) if rtcp else None,
        }


SUMS = tuple(f.name for f in fields(Figures) if f.name != "failures")  # the plain counts


def _media_from_json(values: list[Any]) -> dict[str, Any]:
    legs, packets, lost, rtcp, mos, jitter = values
    return {
        "media_legs": int(legs),
        "media_packets": int(packets),
        "media_lost": int(lost),
        "rtcp_legs": int(rtcp),
        "mos_sum": float(mos),
        "jitter_ms_sum": float(jitter),
    }


def _media(figures: Figures, quality: pb.MediaQuality) -> None:
    figures.media_legs = 1
    figures.media_packets = quality.packets_from
    figures.media_lost = quality.packets_lost
    if quality.mos:
        figures.rtcp_legs, figures.mos_sum, figures.jitter_ms_sum = (
            1,
            quality.mos,
            quality.jitter_ms,
        )


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _outcome(status: int, answered: bool) -> Figures:
    figures = Figures(attempts=1)
    if answered:
        figures.answered = figures.effective = 1
    elif status in NETWORK_EFFECTIVE:
        figures.effective = 1
    if not answered and status >= 300:
        figures.failures[status] = 1
    return figures


def contribution(call: pb.ActiveCall | pb.Cdr) -> Iterator[tuple[Key, Figures]]:
    """What one call adds: one inbound attempt on its ingress trunk, one outbound per leg.

    An active record counts what has happened so far (its attempts, answers, failed legs and
    the calls and legs still up); a CDR counts the finished call, with its duration.
    """
    finished = isinstance(call, pb.Cdr)
    answered = call.answer_unix_ms > 0
    final = call.final_status if isinstance(call, pb.Cdr) else 0
    duration = call.duration_s if isinstance(call, pb.Cdr) else 0.0
    inbound = _outcome(final, answered)
    inbound.active = 0 if finished else 1
    if finished and answered:
        inbound.completed, inbound.duration_s = 1, duration
    if isinstance(call, pb.Cdr) and call.HasField("ingress_media"):
        _media(inbound, call.ingress_media)
    yield (call.ingress_trunk, "in"), inbound
    for leg in call.attempts:
        leg_answered = leg.answer_unix_ms > 0
        outbound = _outcome(leg.status, leg_answered)
        if not finished and not leg.end_unix_ms:
            outbound.active = 1
        if finished and leg_answered:
            outbound.completed, outbound.duration_s = 1, duration
        if finished and leg.HasField("media"):
            _media(outbound, leg.media)
        yield (leg.trunk, "out"), outbound


class Ledger:
    """Figures by (trunk, direction), added to and subtracted from by whole calls."""

    def __init__(self) -> None:
        self.figures: defaultdict[Key, Figures] = defaultdict(Figures)

    def add(self, call: pb.ActiveCall | pb.Cdr, sign: int = 1) -> set[str]:
        """Add (or with sign -1 remove) a call's contribution; returns the trunks touched."""
        touched = set()
        for key, figures in contribution(call):
            self.figures[key].add(figures, sign)
            touched.add(key[0])
        return touched

    def trunks(self) -> set[str]:
        return {trunk for trunk, _ in self.figures}

    def get(self, trunk: str, direction: Direction) -> Figures:
        return self.figures.get((trunk, direction)) or Figures()

    def to_json(self) -> dict[str, Any]:
        return {f"{t}|{d}": f.to_json() for (t, d), f in sorted(self.figures.items())}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        ledger = cls()
        for key, value in data.items():
            trunk, _, direction = key.rpartition("|")
            for known in DIRECTIONS:
                if direction == known:
                    ledger.figures[(trunk, known)] = Figures.from_json(value)
        return ledger


def combined(*parts: Iterable[Figures]) -> Figures:
    total = Figures()
    for group in parts:
        for figures in group:
            total.add(figures)
    return total
