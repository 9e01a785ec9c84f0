"""What an edge is running: each call and leg machine with its far end, timers and spans,
and the indexes that route SIP messages and bus messages to them."""

from __future__ import annotations

import asyncio
from collections import Counter

from tandem.b2bua import Call, Leg, LegState
from tandem.edge.tracing import CallTrace, LegTrace
from tandem.edge.transactions import ClientTransaction, ServerTransaction
from tandem.edge.transport import Peer
from tandem.sip.transaction import TransactionKey

DialogKey = tuple[str, str]  # SIP Call-ID, our tag


class Runner:
    """One machine as the edge runs it: its far end, its timers, its spans."""

    __slots__ = (
        "call_ids",
        "dialog",
        "invite",
        "limited",
        "machine",
        "peer",
        "setup",
        "timers",
        "trace",
        "trunk",
        "txns",
    )

    def __init__(
        self,
        machine: Call | Leg,
        peer: Peer,
        trunk: str,
        trace: CallTrace | LegTrace,
        dialog: DialogKey,
    ) -> None:
        self.machine = machine
        self.peer = peer
        self.trunk = trunk
        self.trace = trace
        self.dialog = dialog
        self.timers: dict[str, asyncio.TimerHandle] = {}
        # a call: the caller's INVITE (None once it has its final response); a leg: ours
        self.invite: ServerTransaction | ClientTransaction | None = None
        self.setup = isinstance(machine, Call)  # a call not yet answered nor rejected
        self.call_ids: tuple[str, ...] = (machine.id,) if isinstance(machine, Call) else ()
        self.limited = False  # holds a place under its trunk's max_concurrent_calls
        # INVITE transactions whose callbacks lead here, cut at release: one lingers 32 s for
        # retransmissions (timers D, L, M) and must not keep the call alive that long. (An
        # in-dialog request's callback outlives the release, as a BYE may be challenged.)
        self.txns: list[TransactionKey] = []

    @property
    def headers(self) -> dict[str, str]:
        return self.trace.headers


class Registry:
    """The calls this edge owns, the legs it runs, and how messages find them."""

    def __init__(self) -> None:
        self.calls: dict[str, Runner] = {}  # by tandem call id
        self.legs: dict[str, Runner] = {}  # legs run here, by leg id
        self.owned_legs: dict[str, Runner] = {}  # the call a leg's events are for, by leg id
        self.leg_edges: dict[str, str] = {}  # the edge each leg of our calls runs on (several
        # may serve its trunk), by leg id
        self.dialogs: dict[DialogKey, Runner] = {}
        self.invites: dict[TransactionKey, Runner] = {}  # calls by INVITE, for CANCEL
        self.active_in: Counter[str] = Counter()  # calls by ingress trunk
        self.in_setup = 0
        self.routing: dict[
            Runner, float
        ] = {}  # calls waiting for a route, since when (oldest first)
        self.idle = asyncio.Event()  # set when no call is left, nor a leg but winding down

    def add_call(self, runner: Runner, invite: ServerTransaction) -> None:
        call = runner.machine
        assert isinstance(call, Call)
        runner.invite = invite
        self.calls[call.id] = runner
        self.dialogs[runner.dialog] = runner
        self.invites[invite.key] = runner
        self.active_in[runner.trunk] += 1
        self.in_setup += 1
        self.idle.clear()

    def call_ids(self, runner: Runner, ids: tuple[str, ...]) -> None:
        """A call's records now (a transfer starts a second): each finds the call."""
        for old in runner.call_ids:
            if old not in ids and self.calls.get(old) is runner:
                del self.calls[old]
        for new in ids:
            self.calls[new] = runner
        runner.call_ids = ids

    def add_leg(self, runner: Runner) -> None:
        self.legs[runner.machine.id] = runner
        self.dialogs[runner.dialog] = runner
        self.idle.clear()

    def setup_over(self, runner: Runner) -> None:
        """The call's INVITE has its final response: no CANCEL can match it any more."""
        if runner.setup:
            runner.setup = False
            self.in_setup -= 1
            if isinstance(runner.invite, ServerTransaction):
                self.invites.pop(runner.invite.key, None)

    def routing_wait(self, now: float) -> float:
        """How long the oldest call waiting for its route decision has waited."""
        for since in self.routing.values():
            return now - since
        return 0.0

    def remove(self, runner: Runner) -> None:
        machine = runner.machine
        self.setup_over(runner)
        self.routing.pop(runner, None)
        if self.dialogs.get(runner.dialog) is runner:
            del self.dialogs[runner.dialog]
        if isinstance(machine, Call):
            if any([self.calls.pop(i, None) is not None for i in runner.call_ids]):
                self.active_in[runner.trunk] -= 1
            for leg_id in machine.attempts:
                self.owned_legs.pop(leg_id, None)
                self.leg_edges.pop(leg_id, None)
        else:
            self.legs.pop(machine.id, None)
        self.check_idle()

    def check_idle(self) -> None:
        """A drain is over when no call is left and no leg but those winding down."""
        if not self.calls and all(
            r.machine.state is LegState.CANCELLING for r in self.legs.values()
        ):
            self.idle.set()
