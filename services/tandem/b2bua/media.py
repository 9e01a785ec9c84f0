"""Anchored media: what a call keeps of its rtpengine session while SDP crosses it.

A call's media is anchored when either trunk of the two parties an SDP crosses between says
`media: anchor`, or when either party already talks to rtpengine. The call machine sends
every session description that crosses it through one method (`Call._cross`); for an
anchored crossing that is a MediaOffer or MediaAnswer action, and the machine goes on with
rtpengine's rewrite when it comes back. One rewrite is in flight at a time: what would
cross behind it (the next 18x, the 2xx, a re-INVITE, an ACK) is held here and replayed in
order, so the parties see their messages in the order they were sent.

Parties are the caller (`CALLER`) and the legs (by id); their NG tags are the same names,
so rtpengine's figures come back per party. The session is the call's first id, kept
across transfers. Figures are read by a query every few seconds once answered (a party
whose RTP stops for its trunk's `media_timeout_s` ends the call) and by the delete at the
end, which the call waits for: its ENDED event carries them into the CDR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tandem.b2bua.actions import Towards
from tandem.b2bua.events import Event, MediaRefused
from tandem.b2bua.transfer import CALLER
from tandem.pb import tandem_pb2 as pb
from tandem.sip.sdp import SessionDescription

SDP = "application/sdp"
SENDING = frozenset(("sendrecv", "sendonly"))
RECEIVING = frozenset(("sendrecv", "recvonly"))
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
CHECK_MIN_S = 0.5  # how often an answered call's figures are read: a quarter of its shortest
CHECK_MAX_S = 5.0  # media timeout, within these bounds
ANCHORED = "anchored"
FALLBACK = "fallback"  # rtpengine was unreachable: the call went on bypassed


def is_sdp(body: pb.SipBody) -> bool:
    """Only session descriptions are rewritten; any other body crosses as it is."""
    return bool(body.body) and body.content_type.partition(";")[0].strip().lower() in ("", SDP)


def direction(sdp: bytes) -> str:
    """Which way the first audio stream of an SDP goes, as its sender says (RFC 3264 6.1):
    its a= direction, the session's, sendrecv by default; port 0 or c=0.0.0.0 is inactive."""
    description = SessionDescription.parse(sdp)
    media = next((m for m in description.media if m.lines[0][0].startswith("m=audio")), None)
    if media is None:
        return "inactive"
    try:
        connection = description.connection_for(media)
        if media.port == 0 or (connection is not None and connection.address == "0.0.0.0"):
            return "inactive"
    except ValueError:
        return "inactive"
    for section in (media, description.session):
        for name in DIRECTIONS:
            if section.attribute(name) is not None:
                return name
    return "sendrecv"


@dataclass(frozen=True, slots=True)
class TrunkMedia:
    """The media settings of one party's trunk, as the call machine needs them."""

    media: str = "bypass"
    srtp: str = "off"
    ice: str = "remove"
    timeout_s: float = 60.0
    fallback: str = "reject"

    @property
    def anchors(self) -> bool:
        return self.media == "anchor"

    @property
    def towards(self) -> Towards:
        return Towards(self.srtp, self.ice)

    @classmethod
    def of(cls, target: pb.RouteTarget) -> TrunkMedia:
        return cls(
            target.media or "bypass",
            target.srtp or "off",
            target.ice or "remove",
            target.media_timeout_s,
            target.media_fallback or "reject",
        )


@dataclass(slots=True)
class Crossing:
    """A rewrite in flight: what to do with rtpengine's SDP, or with its refusal."""

    sender: str
    receiver: str
    content_type: str
    then: Callable[[pb.SipBody], None]
    refused: Callable[[MediaRefused], None]


@dataclass(slots=True)
class Silence:
    """How long a party's RTP has not moved: its packet count, and when it last changed."""

    packets: int
    since: float


@dataclass(slots=True)
class Anchor:
    """One call's rtpengine session: what is in flight, who talks to rtpengine, the figures."""

    session: str
    pending: Crossing | None = None
    # a list, not a deque: it is short when used, and every call has one (a deque is 760 B)
    held: list[Event | Callable[[], None]] = field(default_factory=list)
    parties: set[str] = field(default_factory=set)  # got rtpengine's SDP: they send to it
    known: set[str] = field(default_factory=set)  # tags rtpengine has seen
    opened: bool = False  # rtpengine holds a session (an offer succeeded)
    fallback: bool = False
    rtpengine: str = ""  # the instance that holds the session
    directions: dict[str, str] = field(default_factory=dict)  # by party: its SDP's direction
    offers: dict[str, bool] = field(default_factory=dict)  # relayed request id: it offered SDP
    quality: dict[str, pb.MediaQuality] = field(default_factory=dict)  # by party, the latest
    silence: dict[str, Silence] = field(default_factory=dict)
    lost: bool = False  # rtpengine forgot the session mid-call (a restart)
    deleting: bool = False

    @property
    def busy(self) -> bool:
        return self.pending is not None

    def mode(self, parties: set[str]) -> str:
        """What the call's media is between these parties, for its record."""
        if self.parties & parties:
            return ANCHORED
        return FALLBACK if self.fallback else ""

    def sends(self, party: str, other: str) -> bool:
        """Whether `party` is expected to send RTP to `other`, by their last SDPs."""
        return (
            self.directions.get(party, "sendrecv") in SENDING
            and self.directions.get(other, "sendrecv") in RECEIVING
        )

    def heard(self, now: float) -> None:
        """A fresh offer/answer (or the answer of the call): every party starts afresh."""
        for silence in self.silence.values():
            silence.since = now

    def report(self, figures: tuple[pb.MediaQuality, ...], now: float) -> None:
        """A query's figures: note whose packet count moved since the last one."""
        for quality in figures:
            party = quality.leg_id or CALLER
            stored = pb.MediaQuality()
            stored.CopyFrom(quality)
            stored.leg_id = "" if party == CALLER else party
            self.quality[party] = stored
            silence = self.silence.get(party)
            if silence is None or quality.packets_from != silence.packets:
                self.silence[party] = Silence(quality.packets_from, now)

    def silent(self, pair: tuple[str, str], sides: dict[str, TrunkMedia], now: float) -> str | None:
        """The party of the two that should send and has sent nothing for its trunk's
        media_timeout_s, if any."""
        first, second = pair
        for party, other in ((first, second), (second, first)):
            timeout = sides[party].timeout_s
            if not timeout or not self.sends(party, other):
                continue
            silence = self.silence.setdefault(party, Silence(-1, now))
            if now - silence.since >= timeout:
                return party
        return None

    @staticmethod
    def check_every(timeouts: list[float]) -> float:
        live = [t for t in timeouts if t > 0]
        return min(CHECK_MAX_S, max(CHECK_MIN_S, min(live) / 4)) if live else CHECK_MAX_S

    def figures(
        self, parties: set[str], final: tuple[pb.MediaQuality, ...]
    ) -> list[pb.MediaQuality]:
        """The figures of these parties for the record: the final ones when rtpengine gave
        them, else the latest a query read (marked lost when rtpengine forgot the call)."""
        if final:
            self.report(final, 0.0)
        out = []
        for party in sorted(parties, key=lambda p: (p != CALLER, p)):
            quality = self.quality.get(party)
            if quality is None:
                continue
            quality.rtpengine = quality.rtpengine or self.rtpengine
            quality.lost = self.lost
            out.append(quality)
        return out
