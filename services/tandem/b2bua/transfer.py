"""Transfers tandem handles (REFER, RFC 3515; Replaces, RFC 3891): what one is made of, the
REFER's Refer-To as a number and a dialog to replace, and the NOTIFYs that report progress.

A transfer moves one party of a call (the transferee) to a new leg towards the Refer-To
target, then ends the party that asked (the referrer). The call machine runs it; this
module holds its record and the message pieces, so the machine reads as the flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.b2bua.records import Attempt, Record
from tandem.pb import tandem_pb2 as pb
from tandem.sip.message import REASONS
from tandem.sip.uri import NameAddr, unescape

CALLER = "caller"  # a party that is the caller's dialog, not a leg
SIPFRAG = "message/sipfrag;version=2.0"


@dataclass(frozen=True, slots=True)
class Referral:
    """What a REFER asks for: the number to route, or a dialog of ours to replace."""

    number: str
    replaces: tuple[str, str, str] | None = None  # Call-ID, our tag, their tag


def referral(refer_to: str) -> Referral | None:
    """The Refer-To of a REFER, read; None when it names nothing tandem can route."""
    try:
        uri = NameAddr.parse(refer_to).uri
    except ValueError:
        return None
    replaces = None
    for name, value in uri.headers:
        if name.lower() == "replaces":
            call_id, *params = unescape(value).split(";")
            tags = dict(p.strip().partition("=")[::2] for p in params)
            # RFC 3891 3: to-tag and from-tag as the referrer's dialog names them: ours, theirs
            replaces = (call_id.strip(), tags.get("to-tag", ""), tags.get("from-tag", ""))
    number = uri.user or ""
    if uri.scheme == "tel":
        number = uri.opaque.partition(";")[0] or number
    if not number and replaces is None:
        return None
    return Referral(number, replaces)


@dataclass(slots=True)
class Transfer:
    """A transfer under way: who asked, who moves, where to, and how far it got."""

    referrer: str  # CALLER, or the id of the leg whose far end sent the REFER
    transferee: str  # CALLER, or the id of the leg that moves
    event_id: str  # the REFER's CSeq number: NOTIFY's `Event: refer;id=`
    record: Record  # the new call's
    referral: Referral
    targets: list[pb.RouteTarget] = field(default_factory=list)
    leg: Attempt | None = None
    replaces: str = ""  # the Replaces header the new leg's INVITE carries
    rang: bool = False  # the referrer heard 180 already
    last: tuple[int, str] = (503, "Service Unavailable")  # the last failure, for the NOTIFY


def sipfrag(status: int, reason: str = "") -> bytes:
    return f"SIP/2.0 {status} {reason or REASONS.get(status, '')}\r\n".encode()


def notify_headers(event_id: str, final: bool) -> list[tuple[str, str]]:
    """RFC 3515 2.4.5: the refer event, active until the final report, then terminated."""
    state = "terminated;reason=noresource" if final else "active;expires=60"
    return [("Event", f"refer;id={event_id}"), ("Subscription-State", state)]
