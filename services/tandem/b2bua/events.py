"""What happens to a call or a leg: the events the edge feeds the machines, as small frozen
dataclasses. A machine's table names which of them each of its states takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, Response

Hop = tuple[str, str, int]  # where a request goes: transport, IP address, port


class Txn(Protocol):
    """The server transaction of a request we must answer; the edge holds it."""

    @property
    def request(self) -> Request: ...


# ---- both machines: their own dialog ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class InDialogRequest:
    """A request from this machine's far end in its dialog (BYE, re-INVITE, UPDATE, INFO)."""

    request: Request
    txn: Txn


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The far end's ACK of a 2xx we sent (the transaction layer absorbs the others)."""

    request: Request


@dataclass(frozen=True, slots=True)
class InDialogResponse:
    """The answer to a request we sent in our dialog for the other leg (None: it timed out)."""

    request_id: str
    response: Response | None


@dataclass(frozen=True, slots=True)
class TimerFired:
    name: str


# ---- the call (ingress) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InviteReceived:
    """The caller's INVITE, admitted: the call's first event."""

    request: Request
    txn: Txn


@dataclass(frozen=True, slots=True)
class RouteDecided:
    decision: pb.RouteDecision


@dataclass(frozen=True, slots=True)
class RouteFailed:
    """No router answered."""

    error: str


@dataclass(frozen=True, slots=True)
class AtLimit:
    """The caller's trunk has no place left under its max_concurrent_calls (every edge's
    calls counted): the call is refused before it is routed."""

    reason: str


@dataclass(frozen=True, slots=True)
class LegCreateAnswered:
    """The serving edge's reply to a leg's create command ("" error: created), and the leg
    failure a refusal is ("trunk_limit"; "" for transport_error)."""

    leg_id: str
    error: str
    failure: str = ""


@dataclass(frozen=True, slots=True)
class CallerCancelled:
    """CANCEL for the INVITE (the transaction layer has answered it 200)."""


@dataclass(frozen=True, slots=True)
class AckTimedOut:
    """The caller never ACKed our 2xx (RFC 6026 timer L)."""


@dataclass(frozen=True, slots=True)
class HangupRequested:
    """End the call from outside SIP: the API, the edge stopping, the other edge lost
    (`why` is the CDR's end reason)."""

    ended_by: str
    reason: str
    why: str = "hangup"


@dataclass(frozen=True, slots=True)
class LegProgress:
    leg_id: str
    status: int
    reason: str
    body: pb.SipBody
    edge: str = ""  # the edge that runs the leg (so do LegAnswered's and LegFailed's)


@dataclass(frozen=True, slots=True)
class LegAnswered:
    leg_id: str
    status: int
    reason: str
    body: pb.SipBody
    local_tag: str = ""  # the tags of the leg's dialog: what a Replaces would name
    remote_tag: str = ""
    edge: str = ""


@dataclass(frozen=True, slots=True)
class LegFailed:
    """A final failure: a response, a transport error, a timeout (`failure` says which).
    `status` is as the trunk's response map gives it, `received` as the trunk sent it;
    `contacts` are a 3xx's."""

    leg_id: str
    status: int
    reason: str
    failure: str
    received: int = 0
    contacts: tuple[str, ...] = ()
    edge: str = ""


@dataclass(frozen=True, slots=True)
class LegEnded:
    """The callee's dialog ended: its BYE, or `why` (session_expired ...)."""

    leg_id: str
    reason: str
    why: str = ""


@dataclass(frozen=True, slots=True)
class LegRequested:
    """The callee sent a request in its dialog, to cross to the caller's."""

    leg_id: str
    request: pb.LegRequest


@dataclass(frozen=True, slots=True)
class LegResponded:
    """The answer to a request of the caller's that crossed to the leg."""

    leg_id: str
    response: pb.LegResponse


@dataclass(frozen=True, slots=True)
class DialogFound:
    """Where the dialog a Replaces names leads (None: not on this edge)."""

    target: pb.RouteTarget | None
    replaces: str = ""  # the Replaces header for the INVITE that takes its place


@dataclass(frozen=True, slots=True)
class LegTransferRequested:
    """The callee asked to be transferred (a REFER the leg answered 202). With Replaces, the
    leg's edge has looked up the dialog it names: `found` says where it leads."""

    leg_id: str
    refer_to: str
    event_id: str  # the REFER's CSeq number
    found: DialogFound | None = None


@dataclass(frozen=True, slots=True)
class LegRetrying:
    """The leg sends its INVITE to another target of its trunk (RFC 3263): the targets left
    may take `wait_s` before the call gives up on the trunk."""

    leg_id: str
    wait_s: float
    reason: str = ""


LegEvent = (
    LegProgress
    | LegRetrying
    | LegAnswered
    | LegFailed
    | LegEnded
    | LegRequested
    | LegResponded
    | LegTransferRequested
)

_FROM_LEG: dict[int, Callable[[pb.LegEvent], LegEvent]] = {
    pb.LegEvent.PROGRESS: lambda e: LegProgress(e.leg_id, e.status, e.reason, e.body, e.edge),
    pb.LegEvent.ANSWERED: lambda e: LegAnswered(
        e.leg_id, e.status, e.reason, e.body, e.local_tag, e.remote_tag, e.edge
    ),
    pb.LegEvent.FAILED: lambda e: LegFailed(
        e.leg_id,
        e.status,
        e.reason,
        e.failure or "response",
        e.received_status or e.status,
        tuple(h.value for h in e.headers if h.name.lower() == "contact"),
        e.edge,
    ),
    pb.LegEvent.ENDED: lambda e: LegEnded(e.leg_id, e.reason, e.failure),
    pb.LegEvent.REQUEST: lambda e: LegRequested(e.leg_id, e.request),
    pb.LegEvent.RESPONSE: lambda e: LegResponded(e.leg_id, e.response),
    pb.LegEvent.RETRYING: lambda e: LegRetrying(e.leg_id, e.wait_s, e.reason),
    pb.LegEvent.TRANSFER: lambda e: LegTransferRequested(
        e.leg_id,
        next((h.value for h in e.request.headers if h.name.lower() == "refer-to"), ""),
        e.request.request_id,
        DialogFound(e.transfer_target if e.HasField("transfer_target") else None, e.replaces),
    ),
}


def from_leg_event(event: pb.LegEvent) -> LegEvent | None:
    """The call machine's event for a leg event off the bus (None: a kind we do not know)."""
    convert = _FROM_LEG.get(event.kind)
    return None if convert is None else convert(event)


# ---- the call's anchored media (rtpengine) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaRewritten:
    """rtpengine's rewrite of the offer or answer the call asked it for (MediaOffer or
    MediaAnswer), by the instance that holds the call's session."""

    sdp: bytes
    rtpengine: str


@dataclass(frozen=True, slots=True)
class MediaRefused:
    """rtpengine did not rewrite it: it refused the SDP (`reason` is its error), or no
    instance answered in time (`unreachable`)."""

    reason: str
    unreachable: bool = False


@dataclass(frozen=True, slots=True)
class MediaReported:
    """rtpengine's figures of the call, one per party its session knows (`leg_id` is the
    party's tag): a query's, or the delete's that ended the session (`final`). `lost`: it no
    longer knows the call (it restarted); `unreachable`: it did not answer."""

    quality: tuple[pb.MediaQuality, ...] = ()
    final: bool = False
    lost: bool = False
    unreachable: bool = False


MediaEvent = MediaRewritten | MediaRefused | MediaReported


# ---- the leg (egress) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """The leg was created: send the INVITE."""


@dataclass(frozen=True, slots=True)
class InviteResponse:
    """A response to our INVITE (every 2xx, forks included); None: `failure` (timeout or
    transport_error), with the transport's `reason` if it has one. `cseq` is the CSeq
    number of the INVITE it answers (0: the latest)."""

    response: Response | None
    failure: str = ""
    cseq: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where the trunk's peer is, in the order to try (RFC 3263), or why it is nowhere."""

    targets: tuple[Hop, ...]
    error: str = ""


@dataclass(frozen=True, slots=True)
class CancelRequested:
    reason: str


@dataclass(frozen=True, slots=True)
class AckRequested:
    body: pb.SipBody


@dataclass(frozen=True, slots=True)
class ByeRequested:
    reason: str


@dataclass(frozen=True, slots=True)
class RelayRequested:
    """Send this request (from the caller) in the leg's dialog."""

    request: pb.LegRequest


@dataclass(frozen=True, slots=True)
class RelayAnswered:
    """The caller's answer to a request the callee sent."""

    response: pb.LegResponse


LegCommandEvent = CancelRequested | AckRequested | ByeRequested | RelayRequested | RelayAnswered

_FROM_COMMAND: dict[str, Callable[[pb.LegCommand], LegCommandEvent]] = {
    "cancel": lambda c: CancelRequested(c.cancel.reason),
    "ack": lambda c: AckRequested(c.ack.body),
    "bye": lambda c: ByeRequested(c.bye.reason),
    "request": lambda c: RelayRequested(c.request),
    "response": lambda c: RelayAnswered(c.response),
}


def from_leg_command(command: pb.LegCommand) -> LegCommandEvent | None:
    """The leg machine's event for a command off the bus (None: create, or none set)."""
    which = command.WhichOneof("command")
    convert = _FROM_COMMAND.get(which or "")
    return None if convert is None else convert(command)


Event = (
    InDialogRequest
    | AckReceived
    | InDialogResponse
    | TimerFired
    | InviteReceived
    | RouteDecided
    | RouteFailed
    | AtLimit
    | LegCreateAnswered
    | DialogFound
    | CallerCancelled
    | AckTimedOut
    | HangupRequested
    | LegEvent
    | MediaEvent
    | Start
    | InviteResponse
    | Resolved
    | LegCommandEvent
)
