"""What the sims' tests wait for and check on calls: answered, RTP flowing, SIP that arrived."""

from __future__ import annotations

from collections.abc import Callable

from tandem.sim.client import SimClient
from tandem.sim.views import CallView, SipMessage


def connected(c: CallView) -> bool:
    return c.state == "confirmed" and c.media == "active"


def flowing(before: CallView | None = None) -> Callable[[CallView], bool]:
    """RTP both ways, and more of it than `before` counted."""
    sent = before.rtp.tx_packets if before else 0
    got = before.rtp.rx_packets if before else 0
    return lambda c: c.rtp.tx_packets > sent and c.rtp.rx_packets > got


def call_up(caller: SimClient, callee: SimClient, calling: str, called: str) -> tuple[str, str]:
    """Place a call and wait until both ends talk; returns (caller's id, callee's id)."""
    out = caller.place_call(calling, called)
    caller.wait_call(out.id, connected, "answer")
    inbound = callee.wait_inbound(lambda c: c.sip_call_id == out.sip_call_id)
    callee.wait_call(inbound.id, connected, "answer")
    return out.id, inbound.id


def hang_up(side: SimClient, call_id: str, other: SimClient, other_id: str) -> None:
    side.hangup(call_id)
    side.wait_call(call_id, lambda c: c.ended, "end")
    other.wait_call(other_id, lambda c: c.ended, "end")


def talking(a: SimClient, a_id: str, b: SimClient, b_id: str) -> None:
    """Both ends of one call answered, with fresh RTP both ways at each."""
    for side, call_id in ((a, a_id), (b, b_id)):
        now = side.wait_call(call_id, connected, "answer")
        side.wait_call(call_id, flowing(now), "RTP both ways")


def first(messages: list[SipMessage], direction: str, method: str, status: int = 0) -> SipMessage:
    """The first message of that kind (a request when status is 0); later ones can only be
    retransmissions. An AssertionError if there is none."""
    found = [
        m
        for m in messages
        if m.direction == direction and m.method == method and m.status == status
    ]
    assert found, f"no {direction} {method} {status}: {[m.start_line for m in messages]}"
    return found[0]
