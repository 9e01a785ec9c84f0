"""What the machines ask the edge to do, as small frozen dataclasses: the edge's executor
turns each into a SIP send, a NATS message or a timer, and feeds what comes back as events."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.b2bua.events import Hop, Txn
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, Response

# ---- SIP, to this machine's far end --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer a request through its server transaction."""

    txn: Txn
    response: Response


@dataclass(frozen=True, slots=True)
class SendInvite:
    """The leg's INVITE, as a client transaction; its responses come back as InviteResponse.
    `to` is the target it goes to (None: the leg's peer); requests in the dialog follow it."""

    request: Request
    to: Hop | None = None


@dataclass(frozen=True, slots=True)
class Resolve:
    """Find where the trunk's peer is (RFC 3263: NAPTR, SRV, A/AAAA); the answer comes back
    as Resolved."""

    name: str  # the peer as configured: an FQDN, with a port or not
    transport: str


@dataclass(frozen=True, slots=True)
class CancelInvite:
    """CANCEL the INVITE: now if a provisional came, else as soon as one does (RFC 3261 9.1)."""


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A request in our dialog; its final answer comes back as InDialogResponse when
    `request_id` is set (a BYE's is not wanted). `target` is the dialog's next hop (a URI;
    the edge sends there only if it is an address of the same trunk)."""

    request: Request
    request_id: str = ""
    target: str = ""


@dataclass(frozen=True, slots=True)
class SendAck:
    """The ACK of a 2xx (or its repeat): no transaction of its own."""

    request: Request
    target: str = ""


# ---- the bus -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AskRoute:
    """Ask the router; the answer comes back as RouteDecided or RouteFailed."""

    request: pb.RouteRequest


@dataclass(frozen=True, slots=True)
class CreateLeg:
    """Create an egress leg on the edge that serves its trunk; its events come to this call
    from now on, and the edge's reply comes back as LegCreateAnswered."""

    edge: str
    command: pb.LegCommand


@dataclass(frozen=True, slots=True)
class CommandLeg:
    """Cancel, ACK, BYE, or relay in-dialog to a leg, on the edge that runs it."""

    edge: str
    command: pb.LegCommand


@dataclass(frozen=True, slots=True)
class DropLeg:
    """No more events are wanted from this leg."""

    leg_id: str


@dataclass(frozen=True, slots=True)
class FindDialog:
    """Look up the dialog a Replaces names (RFC 3891), as the referrer's side names it; the
    answer comes back as DialogFound."""

    call_id: str
    our_tag: str
    their_tag: str


@dataclass(frozen=True, slots=True)
class CallIds:
    """The call records this machine carries now (a transfer starts a second one)."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Publish:
    """A call event (durable, on TANDEM_CALLS) or a leg event (to the call's owner)."""

    message: pb.CallEvent | pb.LegEvent


# ---- anchored media (rtpengine's NG protocol) --------------------------------------------


@dataclass(frozen=True, slots=True)
class Towards:
    """What the party an SDP is sent to speaks, by its trunk: SRTP and ICE."""

    srtp: str = "off"  # off, sdes, dtls, optional
    ice: str = "remove"  # remove, force


@dataclass(frozen=True, slots=True)
class MediaOffer:
    """Have rtpengine rewrite an offer from `from_tag`'s party for `to_tag`'s ("" before that
    party is known to it); the rewrite comes back as MediaRewritten, or MediaRefused."""

    session: str  # the NG call-id: the call's, for its whole life
    sdp: bytes
    from_tag: str
    to_tag: str
    towards: Towards


@dataclass(frozen=True, slots=True)
class MediaAnswer:
    """Have rtpengine rewrite `to_tag`'s answer to the offer `from_tag` made (NG names the
    offerer from-tag); towards the offerer. Comes back as MediaRewritten or MediaRefused."""

    session: str
    sdp: bytes
    from_tag: str
    to_tag: str
    towards: Towards


@dataclass(frozen=True, slots=True)
class MediaQuery:
    """Ask rtpengine for the call's figures; they come back as MediaReported."""

    session: str


@dataclass(frozen=True, slots=True)
class MediaDelete:
    """End the call's rtpengine session (`from_tag`: a party it knows, as NG wants one); its
    last figures come back as MediaReported(final)."""

    session: str
    from_tag: str


# ---- time and life -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Fire TimerFired(name) after `delay_s`; a timer of the same name is replaced."""

    name: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class StopTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Failover:
    """The call gives up this attempt for its next target (counted by reason)."""

    failure: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The call, or the attempt, is over with this outcome (what its span and metrics show).
    A cancelled attempt is not a failure of the trunk."""

    status: int
    reason: str
    failure: str = ""
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """Nothing more will come through this machine's dialog: forget it (its timers too)."""


Action = (
    Respond
    | SendInvite
    | Resolve
    | CancelInvite
    | SendRequest
    | SendAck
    | AskRoute
    | CreateLeg
    | CommandLeg
    | DropLeg
    | FindDialog
    | CallIds
    | Publish
    | MediaOffer
    | MediaAnswer
    | MediaQuery
    | MediaDelete
    | StartTimer
    | StopTimer
    | Failover
    | Finished
    | Release
)
