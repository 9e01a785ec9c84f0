"""The transition tables: every (state, event) pair a table does not hold raises, and leaves
the machine as it was; any sequence of what the network and the bus can do leaves no call
stuck and answers the caller's INVITE exactly once."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.b2bua import Call, CallState, Leg, LegState, Machine, ProtocolError
from tandem.b2bua import events as e
from tandem.b2bua.local import Local
from tandem.b2bua.profile import Profile
from tandem.pb import tandem_pb2 as pb
from tests.b2bua.world import ANSWER_SDP, World, caller_invite, target

INVITE = caller_invite()
TXN = e.InDialogRequest(INVITE, typing.cast(e.Txn, object())).txn
SAMPLES: dict[type, e.Event] = {
    e.InDialogRequest: e.InDialogRequest(INVITE, TXN),
    e.AckReceived: e.AckReceived(INVITE),
    e.InDialogResponse: e.InDialogResponse("r1", None),
    e.TimerFired: e.TimerFired("failover"),
    e.InviteReceived: e.InviteReceived(INVITE, TXN),
    e.RouteDecided: e.RouteDecided(pb.RouteDecision()),
    e.RouteFailed: e.RouteFailed("timeout"),
    e.AtLimit: e.AtLimit("trunk pbx-hq is at its limit of 1 calls"),
    e.LegCreateAnswered: e.LegCreateAnswered("leg", ""),
    e.CallerCancelled: e.CallerCancelled(),
    e.AckTimedOut: e.AckTimedOut(),
    e.HangupRequested: e.HangupRequested("api", "test"),
    e.LegProgress: e.LegProgress("leg", 180, "Ringing", pb.SipBody()),
    e.LegAnswered: e.LegAnswered("leg", 200, "OK", pb.SipBody()),
    e.LegFailed: e.LegFailed("leg", 503, "Unavailable", "response"),
    e.LegEnded: e.LegEnded("leg", "bye"),
    e.LegRetrying: e.LegRetrying("leg", 4.0),
    e.LegRequested: e.LegRequested("leg", pb.LegRequest(method="INFO")),
    e.LegResponded: e.LegResponded("leg", pb.LegResponse(request_id="r1", status=200)),
    e.LegTransferRequested: e.LegTransferRequested("leg", "<sip:+14255550199@x>", "2"),
    e.DialogFound: e.DialogFound(None),
    e.Start: e.Start(),
    e.InviteResponse: e.InviteResponse(None, "timeout"),
    e.Resolved: e.Resolved((("udp", "10.2.0.2", 5060),)),
    e.CancelRequested: e.CancelRequested("test"),
    e.AckRequested: e.AckRequested(pb.SipBody()),
    e.ByeRequested: e.ByeRequested("test"),
    e.RelayRequested: e.RelayRequested(pb.LegRequest(method="INFO")),
    e.RelayAnswered: e.RelayAnswered(pb.LegResponse(request_id="r1", status=200)),
    e.MediaRewritten: e.MediaRewritten(b"v=0\r\n", "127.0.0.1:2223"),
    e.MediaRefused: e.MediaRefused("Failed to parse SDP"),
    e.MediaReported: e.MediaReported(),
}


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(typing.get_args(e.Event))


def new_call() -> Call:
    return Call("edge-a", Profile(trunk="pbx"), Local("10.0.0.1", 5060, "udp"))


def new_leg() -> Leg:
    create = pb.LegCreate(target=target("gw1"), owner_edge="edge-a", max_forwards=69)
    command = pb.LegCommand(leg_id="leg", call_id="call", create=create)
    return Leg("edge-b", command, ("10.2.0.2", 5060), Local("10.0.0.2", 5060, "udp"))


MACHINES: list[tuple[typing.Callable[[], Machine], list[typing.Any]]] = [
    (new_call, list(CallState)),
    (new_leg, list(LegState)),
]
PAIRS = [
    (make, state, kind)
    for make, states in MACHINES
    for state in states
    for kind in SAMPLES
    if not make().accepts(state, kind)
]


@pytest.mark.parametrize(
    ("make", "state", "kind"),
    PAIRS,
    ids=[f"{make().KIND}-{state.name}-{kind.__name__}" for make, state, kind in PAIRS],
)
def test_a_pair_not_in_the_table_raises_and_changes_nothing(
    make: typing.Callable[[], Machine], state: typing.Any, kind: type
) -> None:
    machine = make()
    machine.state = state
    before = dict(vars(machine))
    with pytest.raises(ProtocolError) as raised:
        machine.handle(SAMPLES[kind], 1.0)
    assert raised.value.state is state
    assert vars(machine) == before


def test_the_tables_name_only_their_own_states() -> None:
    assert {s for s, _ in Call.TRANSITIONS} == set(CallState)
    assert {s for s, _ in Leg.TRANSITIONS} <= set(LegState)
    assert all(kind in SAMPLES for _, kind in [*Call.TRANSITIONS, *Leg.TRANSITIONS])


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("leg"), st.sampled_from([100, 180, 183, 200, 486, 503]), st.booleans()),
        st.tuples(st.just("time"), st.floats(0.1, 5.0), st.just(False)),
        st.tuples(
            st.just("caller"), st.sampled_from(["ACK", "BYE", "INFO", "INVITE"]), st.just(False)
        ),
        st.tuples(st.just("cancel"), st.just(0), st.just(False)),
        st.tuples(st.just("callee"), st.sampled_from(["BYE", "INFO"]), st.just(False)),
        st.tuples(st.just("hangup"), st.just(0), st.just(False)),
        st.tuples(st.just("refer"), st.just(0), st.booleans()),
        st.tuples(st.just("route"), st.sampled_from([True, False]), st.just(False)),
    ),
    max_size=14,
)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS)
def test_no_sequence_leaves_a_call_stuck(steps: list[tuple[str, typing.Any, bool]]) -> None:
    run_to_the_end(World(target("gw1", timer_s=1), target("gw2", timer_s=1)), steps)


@settings(max_examples=200, deadline=None)
@given(steps=STEPS)
def test_no_sequence_leaves_a_call_stuck_while_its_leg_walks_targets(
    steps: list[tuple[str, typing.Any, bool]],
) -> None:
    w = World(target("gw1", timer_s=1), target("gw2", timer_s=1))
    w.hops["gw1"] = [("udp", "10.2.0.11", 5060), ("udp", "10.2.0.12", 5060)]  # RFC 3263
    run_to_the_end(w, steps)


def run_to_the_end(w: World, steps: list[tuple[str, typing.Any, bool]]) -> None:
    w.start()
    for step, arg, other_fork in steps:
        try:
            if step == "leg" and w.legs:
                tag = "fork2" if other_fork else "callee"
                w.respond_leg(len(w.legs), arg, tag=tag, body=ANSWER_SDP if arg == 200 else b"")
            elif step == "time":
                w.advance(arg)
            elif step == "caller" and w.call.dialog is not None and id(w.call) not in w.released:
                w.caller_request(arg)
            elif step == "cancel" and w.caller_statuses[-1] < 200:
                w.feed(w.call, e.CallerCancelled())
                w.settle()
            elif step == "callee" and w.legs and w.legs[-1].dialog is not None:
                if id(w.legs[-1]) not in w.released:
                    w.callee_request(len(w.legs), arg)
            elif step == "hangup" and id(w.call) not in w.released:
                w.feed(w.call, e.HangupRequested("api", "test"))
                w.settle()
            elif step == "refer" and w.call.dialog is not None and id(w.call) not in w.released:
                refer_to = [("Refer-To", "<sip:+14255550199@x>")]
                if other_fork and w.legs and w.legs[0].dialog is not None:
                    w.callee_request(1, "REFER", extra=refer_to)
                else:
                    w.caller_request("REFER", extra=refer_to)
            elif step == "route" and id(w.call) not in w.released:
                targets = [target("gw3", called="+14255550199")] if arg else []
                result = pb.RouteDecision.ROUTED if arg else pb.RouteDecision.NO_ROUTE
                w.feed(w.call, e.RouteDecided(pb.RouteDecision(result=result, targets=targets)))
                w.settle()
        except ProtocolError:
            pass  # the edge logs and counts it; the machine is unchanged
    w.end_everything()
    assert id(w.call) in w.released
    assert w.caller_statuses[-1] >= 200  # answered once: World asserts no second final
    assert all(id(leg) in w.released for leg in w.legs)
    assert w.call_events[-1].kind == pb.CallEvent.ENDED
