"""A call and its legs wired together in memory, with an explicit clock (the aioquic way).

The bus is a FIFO that `settle()` drains, in the order NATS would deliver: a leg's create
command, then whatever was published after it. SIP is what the machines asked to send,
kept per dialog for the tests to read, and what the tests feed back as responses. Timers
fire when the test moves the clock. No sockets, no NATS, no event loop: milliseconds a test.
"""

from __future__ import annotations

import heapq
import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tandem.b2bua import Call, Leg, LegState, Machine
from tandem.b2bua import actions as a
from tandem.b2bua import events as e
from tandem.b2bua.local import Local
from tandem.b2bua.profile import Profile
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, Response, make_response

SDP = b"v=0\r\no=- 1 1 IN IP4 10.1.0.2\r\ns=-\r\nc=IN IP4 10.1.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
ANSWER_SDP = SDP.replace(b"10.1.0.2", b"10.2.0.2")
CALLER = "10.1.0.2"
RTPENGINE = "203.0.113.10"  # the fake rtpengine's media address


class Rtpengine:
    """rtpengine as the tests want it: every SDP it rewrites gets its address and a port of
    its own; it can refuse, stay silent, hold its answers, forget the call, and report the
    figures the test sets (`packets`: RTP received from each party, by tag)."""

    def __init__(self) -> None:
        self.requests: list[a.Action] = []
        self.refuse = ""  # the error-reason of its next refusals
        self.unreachable = False
        self.lost = False  # it forgot every call (a restart)
        self.holding = False  # answers wait in `held` until release()
        self.held: list[tuple[Machine, e.Event]] = []
        self.packets: dict[str, int] = {}
        self.port = 30000
        self.made = False  # it rewrote something: a session to delete at the end

    def rewrite(self, sdp: bytes) -> bytes:
        self.port += 2
        text = sdp.decode()
        for address in ("10.1.0.2", "10.2.0.2", "10.3.0.2"):
            text = text.replace(address, RTPENGINE)
        for old in ("4000", "5000", "6000"):
            text = text.replace(f"m=audio {old} ", f"m=audio {self.port} ")
        return text.encode()

    def answer(self, action: a.Action) -> e.Event:
        self.requests.append(action)
        if isinstance(action, a.MediaOffer | a.MediaAnswer):
            if self.unreachable:
                return e.MediaRefused("no rtpengine answered", unreachable=True)
            if self.refuse:
                return e.MediaRefused(self.refuse)
            self.made = True
            return e.MediaRewritten(self.rewrite(action.sdp), "127.0.0.1:2223")
        final = isinstance(action, a.MediaDelete)
        if self.unreachable:
            return e.MediaReported(final=final, unreachable=True)
        if self.lost:
            return e.MediaReported(final=final, lost=True)
        quality = tuple(
            pb.MediaQuality(leg_id=tag, packets_from=n, rtpengine="127.0.0.1:2223")
            for tag, n in sorted(self.packets.items())
        )
        return e.MediaReported(quality, final=final)

    def release(self, world: World) -> None:
        """Deliver the answers held so far (later ones are held while `holding`)."""
        world.bus.extend(self.held)
        self.held.clear()
        world.settle()

    def of(self, kind: type) -> list[typing.Any]:
        return [r for r in self.requests if isinstance(r, kind)]


def target(trunk: str, edge: str = "edge-b", timer_s: float = 2.0, **more: Any) -> pb.RouteTarget:
    fields = {"called": "+14255550123", "calling": "+14255550100", **more}
    return pb.RouteTarget(trunk=trunk, edge=edge, failover_timer_s=timer_s, **fields)


@dataclass
class Txn:
    """A server transaction: the responses given, the last one final or not."""

    request: Request
    responses: list[Response] = field(default_factory=list)

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def caller_invite(body: bytes = SDP) -> Request:
    return Request(
        "INVITE",
        "sip:+14255550123@10.0.0.1",
        [
            ("Via", f"SIP/2.0/UDP {CALLER}:5060;branch=z9hG4bKcaller1"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:+14255550100@{CALLER}>;tag=caller"),
            ("To", "<sip:+14255550123@10.0.0.1>"),
            ("Call-ID", "caller-call-id"),
            ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:100@{CALLER}:5060>"),
            ("Content-Type", "application/sdp"),
        ],
        body,
    )


class World:
    """One call owned by edge-a, its legs on the edges its targets name."""

    def __init__(
        self, *targets: pb.RouteTarget, caller: Profile | None = None, **callees: Profile
    ) -> None:
        """`caller` is the ingress trunk's profile; the keyword arguments the callee trunks'."""
        self.now = 1_700_000_000.0
        profile = caller or Profile(trunk="pbx", session_expires_s=0)
        self.call = Call("edge-a", profile, Local("10.0.0.1", 5060, "udp"), trace_id="t" * 32)
        self.profiles = callees
        self.targets = list(targets) or [target("gw1"), target("gw2")]
        self.legs: list[Leg] = []
        self.bus: deque[tuple[Machine, e.Event]] = deque()
        self.timers: list[tuple[float, int, Machine, str]] = []
        self.armed: dict[tuple[int, str], float] = {}
        self.seq = 0
        self.call_events: list[pb.CallEvent] = []
        self.leg_events: list[pb.LegEvent] = []
        self.route_requests: list[pb.RouteRequest] = []
        self.sent: dict[int, list[Request]] = {}  # by machine: requests it sent its far end
        self.answers: dict[int, list[Response]] = {}  # by machine: responses it sent
        self.cancelled: list[Leg] = []  # legs whose INVITE was CANCELled
        self.finished: dict[int, a.Finished] = {}
        self.released: set[int] = set()
        self.dropped: list[str] = []
        self.failovers: list[str] = []
        self.invite_txn = Txn(caller_invite())
        self.leg_created: dict[str, bool] = {}  # leg id -> created on its edge
        self.refuse_create: set[str] = set()  # trunks whose edge refuses the leg
        self.full: set[str] = set()  # trunks at their max_concurrent_calls
        self.call_ids: tuple[str, ...] = ()  # the records the call carries, as the edge knows
        self.dialogs: dict[tuple[str, str, str], e.DialogFound] = {}  # what FindDialog finds
        self.hops: dict[str, list[e.Hop]] = {}  # trunk -> the targets its legs are given
        self.named: dict[str, str] = {}  # trunk -> its peer's name, which its legs resolve
        self.resolves: list[tuple[Leg, a.Resolve]] = []  # what the legs asked for
        self.invite_to: dict[int, list[e.Hop | None]] = {}  # by leg: where each INVITE went
        self.rtpengine = Rtpengine()
        self.qualities: dict[str, pb.MediaQuality] = {}  # what legs were told of their RTP

    # ---- driving ------------------------------------------------------------------------

    def feed(self, machine: Machine, event: e.Event) -> None:
        for action in machine.handle(event, self.now):
            self.execute(machine, action)

    def settle(self) -> None:
        while self.bus:
            machine, event = self.bus.popleft()
            if id(machine) in self.released and not isinstance(
                event, e.LegCreateAnswered | e.InviteResponse
            ):
                continue  # forgotten by its edge: the registry drops it
            self.feed(machine, event)

    def start(self, *, route: bool = True) -> None:
        """The caller's INVITE, and (unless told otherwise) the router's answer."""
        self.feed(self.call, e.InviteReceived(self.invite_txn.request, self.invite_txn))
        if route:
            self.route()

    def route(self) -> None:
        decision = pb.RouteDecision(result=pb.RouteDecision.ROUTED, targets=self.targets)
        self.feed(self.call, e.RouteDecided(decision))
        self.settle()

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every timer that falls due on the way, in order."""
        until = self.now + seconds
        while self.timers and self.timers[0][0] <= until:
            when, _, machine, name = heapq.heappop(self.timers)
            if self.armed.get((id(machine), name)) != when:
                continue
            del self.armed[id(machine), name]
            self.now = when
            self.feed(machine, e.TimerFired(name))
            self.settle()
        self.now = until

    def leg(self, n: int = 1) -> Leg:
        return self.legs[n - 1]

    def respond_leg(
        self, n: int, status: int, tag: str = "callee", body: bytes = b"", reason: str = ""
    ) -> Response:
        """The callee answers the leg's INVITE."""
        leg = self.leg(n)
        headers = [("Contact", "<sip:gw@10.2.0.2>")]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        response = make_response(
            leg.invite, status, reason or None, to_tag=tag, headers=headers, body=body
        )
        self.feed(leg, e.InviteResponse(response))
        self.settle()
        return response

    def caller_request(
        self,
        method: str,
        body: bytes = b"",
        cseq: int = 0,
        extra: list[tuple[str, str]] | None = None,
    ) -> Txn:
        """The caller sends a request in its dialog (to our tag), by default the next CSeq."""
        dialog = self.call.dialog
        assert dialog is not None
        cseq = cseq or (dialog.remote_cseq or 1) + 1
        request = Request(
            method,
            f"sip:{CALLER}",
            [
                ("Via", f"SIP/2.0/UDP {CALLER}:5060;branch=z9hG4bK{method}{self.seq}"),
                ("From", str(dialog.remote)),
                ("To", str(dialog.local)),
                ("Call-ID", dialog.call_id),
                ("CSeq", f"{cseq} {method}"),
                ("Contact", f"<sip:100@{CALLER}:5060>"),
                *(extra or []),
            ]
            + ([("Content-Type", "application/sdp")] if body else []),
            body,
        )
        self.seq += 1
        txn = Txn(request)
        if method == "ACK":
            self.feed(self.call, e.AckReceived(request))
        else:
            self.feed(self.call, e.InDialogRequest(request, txn))
        self.settle()
        return txn

    def callee_request(
        self, n: int, method: str, body: bytes = b"", extra: list[tuple[str, str]] | None = None
    ) -> Txn:
        """The callee sends a request in the leg's dialog."""
        leg = self.leg(n)
        dialog = leg.dialog
        assert dialog is not None
        request = Request(
            method,
            "sip:10.0.0.1",
            [
                ("Via", f"SIP/2.0/UDP 10.2.0.2:5060;branch=z9hG4bKc{method}{self.seq}"),
                ("From", str(dialog.remote)),
                ("To", str(dialog.local)),
                ("Call-ID", dialog.call_id),
                ("CSeq", f"{(dialog.remote_cseq or 0) + 1} {method}"),
                ("Contact", "<sip:gw@10.2.0.2>"),
                *(extra or []),
            ]
            + ([("Content-Type", "application/sdp")] if body else []),
            body,
        )
        self.seq += 1
        txn = Txn(request)
        if method == "ACK":
            self.feed(leg, e.AckReceived(request))
        else:
            self.feed(leg, e.InDialogRequest(request, txn))
        self.settle()
        return txn

    # ---- reading ------------------------------------------------------------------------

    @property
    def caller_statuses(self) -> list[int]:
        return self.invite_txn.statuses

    @property
    def kinds(self) -> list[str]:
        return [pb.CallEvent.Kind.Name(ev.kind).lower() for ev in self.call_events]

    def methods_to(self, machine: Machine) -> list[str]:
        return [r.method for r in self.sent.get(id(machine), [])]

    def end_everything(self) -> None:
        """Whatever happened, bring the end: a hangup, every leg's final response, time."""
        if id(self.call) not in self.released:
            self.feed(self.call, e.HangupRequested("api", "end of test"))
            self.settle()
        for n, leg in enumerate(self.legs, start=1):
            if leg.state in (LegState.CALLING, LegState.EARLY, LegState.CANCELLING):
                self.respond_leg(n, 487)
        self.advance(120)

    # ---- executing actions ----------------------------------------------------------------

    def execute(self, machine: Machine, action: a.Action) -> None:
        HANDLERS[type(action)](self, machine, action)

    def _respond(self, machine: Machine, action: a.Respond) -> None:
        assert isinstance(action.txn, Txn)
        assert not action.txn.responses or action.txn.responses[-1].status < 200, "answered twice"
        action.txn.responses.append(action.response)
        self.answers.setdefault(id(machine), []).append(action.response)

    def _send(self, machine: Machine, action: a.SendInvite | a.SendRequest | a.SendAck) -> None:
        self.sent.setdefault(id(machine), []).append(action.request)
        if isinstance(action, a.SendInvite):
            self.invite_to.setdefault(id(machine), []).append(action.to)

    def _resolve(self, machine: Machine, action: a.Resolve) -> None:
        assert isinstance(machine, Leg)
        self.resolves.append((machine, action))

    def _cancel_invite(self, machine: Machine, action: a.CancelInvite) -> None:
        assert isinstance(machine, Leg)
        self.cancelled.append(machine)

    def _ask_route(self, machine: Machine, action: a.AskRoute) -> None:
        self.route_requests.append(action.request)

    def _create_leg(self, machine: Machine, action: a.CreateLeg) -> None:
        command = action.command
        trunk = command.create.target.trunk

        def create() -> None:
            if trunk in self.refuse_create:
                self.bus.append((machine, e.LegCreateAnswered(command.leg_id, "refused")))
                return
            if trunk in self.full:
                refusal = e.LegCreateAnswered(command.leg_id, "at its limit", "trunk_limit")
                self.bus.append((machine, refusal))
                return
            profile = self.profiles.get(trunk, Profile(trunk=trunk, session_expires_s=0))
            local = Local("10.0.0.2", 5060, "udp")
            name = self.named.get(trunk)
            peer = (name, 0) if name else ("10.2.0.2", 5060)
            hops = self.hops.get(trunk, ())
            leg = Leg(action.edge, command, peer, local, profile, targets=hops, resolve=bool(name))
            self.legs.append(leg)
            self.leg_created[leg.id] = True
            self.feed(leg, e.Start())
            self.bus.append((machine, e.LegCreateAnswered(command.leg_id, "")))

        self.bus.append((_Deferred(create), e.Start()))

    def _command_leg(self, machine: Machine, action: a.CommandLeg) -> None:
        command = action.command
        if command.HasField("quality"):
            self.qualities[command.leg_id] = command.quality
            return
        event = e.from_leg_command(command)
        if event is not None:
            self.bus.append((_Deferred(lambda: self._to_leg(command.leg_id, event)), e.Start()))

    def _media(self, machine: Machine, action: a.Action) -> None:
        reply = (machine, self.rtpengine.answer(action))
        (self.rtpengine.held if self.rtpengine.holding else self.bus).append(reply)

    def _to_leg(self, leg_id: str, event: e.Event) -> None:
        leg = next((g for g in self.legs if g.id == leg_id), None)
        if leg is not None and id(leg) not in self.released:  # else: "no such leg"
            self.feed(leg, event)

    def _drop_leg(self, machine: Machine, action: a.DropLeg) -> None:
        self.dropped.append(action.leg_id)

    def _publish(self, machine: Machine, action: a.Publish) -> None:
        message = action.message
        if isinstance(message, pb.CallEvent):
            self.call_events.append(message)
            return
        self.leg_events.append(message)
        if message.leg_id not in self.dropped:  # the call's subscription to it
            event = e.from_leg_event(message)
            assert event is not None
            self.bus.append((self.call, event))

    def _call_ids(self, machine: Machine, action: a.CallIds) -> None:
        self.call_ids = action.ids

    def _find_dialog(self, machine: Machine, action: a.FindDialog) -> None:
        found = self.dialogs.get((action.call_id, action.our_tag, action.their_tag))
        self.bus.append((machine, found or e.DialogFound(None)))

    def _start_timer(self, machine: Machine, action: a.StartTimer) -> None:
        when = self.now + action.delay_s
        self.armed[id(machine), action.name] = when
        self.seq += 1
        heapq.heappush(self.timers, (when, self.seq, machine, action.name))

    def _stop_timer(self, machine: Machine, action: a.StopTimer) -> None:
        self.armed.pop((id(machine), action.name), None)

    def _failover(self, machine: Machine, action: a.Failover) -> None:
        self.failovers.append(action.failure)

    def _finished(self, machine: Machine, action: a.Finished) -> None:
        assert id(machine) not in self.finished, "finished twice"
        self.finished[id(machine)] = action

    def _release(self, machine: Machine, action: a.Release) -> None:
        self.released.add(id(machine))
        for key in [k for k in self.armed if k[0] == id(machine)]:
            del self.armed[key]


class _Deferred(Machine):
    """A bus delivery that runs a function (creating a leg, a command to a leg)."""

    KIND = "delivery"

    def __init__(self, run: Callable[[], None]) -> None:
        super().__init__()
        self.run = run

    def handle(self, event: e.Event, now: float) -> list[a.Action]:
        self.run()
        return []


HANDLERS: dict[type, Callable[[World, Machine, Any], None]] = {
    a.Respond: World._respond,
    a.SendInvite: World._send,
    a.Resolve: World._resolve,
    a.SendRequest: World._send,
    a.SendAck: World._send,
    a.CancelInvite: World._cancel_invite,
    a.AskRoute: World._ask_route,
    a.CreateLeg: World._create_leg,
    a.CommandLeg: World._command_leg,
    a.DropLeg: World._drop_leg,
    a.CallIds: World._call_ids,
    a.FindDialog: World._find_dialog,
    a.Publish: World._publish,
    a.MediaOffer: World._media,
    a.MediaAnswer: World._media,
    a.MediaQuery: World._media,
    a.MediaDelete: World._media,
    a.StartTimer: World._start_timer,
    a.StopTimer: World._stop_timer,
    a.Failover: World._failover,
    a.Finished: World._finished,
    a.Release: World._release,
}
