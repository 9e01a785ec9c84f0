"""Figures by whole-call contributions: however events arrive (and repeat), the totals are
those of the final records, and Teams' NER counts busy, ring-no-answer and terminal rejects."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.callstate import records
from tandem.callstate.stats import Figures, Ledger
from tandem.pb import tandem_pb2 as pb

CODES = [404, 408, 480, 486, 487, 503, 603]


def leg_event(kind: str, leg_id: str, trunk: str, status: int = 0, at_ms: int = 0) -> pb.CallEvent:
    return pb.CallEvent(
        kind=kind.upper(), leg_id=leg_id, trunk=trunk, status=status, time_unix_ms=at_ms
    )


@st.composite
def call_events(draw: st.DrawFn, call_id: str) -> list[pb.CallEvent]:
    """One call's events as an edge emits them: attempts that fail, maybe an answer, an end."""
    events = [pb.CallEvent(kind="STARTED", ingress_trunk="pbx", time_unix_ms=0)]
    answered = False
    for n in range(1, draw(st.integers(1, 3)) + 1):
        leg = (f"{call_id}-{n}", draw(st.sampled_from(["gw1", "gw2"])))
        events.append(leg_event("leg_attempt", *leg, at_ms=n * 10))
        outcome = draw(st.sampled_from(["fail", "answer", "ring"]))
        if outcome == "fail":
            code = draw(st.sampled_from(CODES))
            events.append(leg_event("leg_failed", *leg, status=code, at_ms=n * 10 + 5))
            continue
        events.append(leg_event("leg_progress", *leg, status=180))
        if outcome == "answer":
            events.append(leg_event("leg_answered", *leg, status=200, at_ms=100))
            events.append(leg_event("answered", *leg, at_ms=100))
            answered = True
        break
    if draw(st.booleans()):
        status = 0 if answered else draw(st.sampled_from(CODES))
        events.append(pb.CallEvent(kind="ENDED", status=status, time_unix_ms=1000))
    for seq, event in enumerate(events, start=1):
        event.call_id, event.seq = call_id, seq
    return events


def interleavings(draw: st.DrawFn, calls: list[list[pb.CallEvent]]) -> list[pb.CallEvent]:
    """The calls' events merged in a random order that keeps each call's own order."""
    queues = [list(events) for events in calls]
    merged = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        merged.append(queue.pop(0))
        if draw(st.integers(0, 9)) == 0:  # now and then, a redelivery of what came before
            merged.append(draw(st.sampled_from(merged)))
    return merged


@st.composite
def traffic(draw: st.DrawFn) -> list[pb.CallEvent]:
    count = draw(st.integers(1, 6))
    return interleavings(draw, [draw(call_events(f"c{n}")) for n in range(count)])


def same(a: Ledger, b: Ledger) -> None:
    keys = {k for k, f in a.figures.items() if f != Figures()} | {
        k for k, f in b.figures.items() if f != Figures()
    }
    for trunk, direction in keys:
        assert a.get(trunk, direction) == b.get(trunk, direction), (trunk, direction)


@settings(max_examples=60, deadline=None)
@given(traffic())
def test_totals_are_those_of_the_final_records_however_events_come(
    events: list[pb.CallEvent],
) -> None:
    calls: dict[str, pb.ActiveCall] = {}
    cdrs: list[pb.Cdr] = []
    ended: set[str] = set()
    live, finished = Ledger(), Ledger()
    for event in events:  # the service's rule: subtract, apply, add back (or finish)
        if event.call_id in ended:
            continue
        call = calls.get(event.call_id)
        if call is None:
            call = calls[event.call_id] = records.new_call(event)
        elif records.is_duplicate(call, event):
            continue
        else:
            live.add(call, -1)
        records.apply(call, event)
        if call.state == records.State.ENDED:
            del calls[event.call_id]
            ended.add(event.call_id)
            cdrs.append(records.cdr(call, event))
            finished.add(cdrs[-1])
        else:
            live.add(call)

    expected_live, expected_finished = Ledger(), Ledger()
    for call in calls.values():
        expected_live.add(call)
    for cdr in cdrs:
        expected_finished.add(cdr)
    same(live, expected_live)
    same(finished, expected_finished)
    assert len(cdrs) == len({c.call_id for c in cdrs})
    assert sum(f.active for (_, d), f in live.figures.items() if d == "in") == len(calls)


def test_ner_counts_the_network_s_successes() -> None:
    ledger = Ledger()
    for n, status in enumerate([486, 480, 404, 503, 500, 487]):
        ledger.add(pb.Cdr(call_id=f"c{n}", ingress_trunk="pbx", final_status=status))
    ledger.add(
        pb.Cdr(call_id="ok", ingress_trunk="pbx", final_status=200, answer_unix_ms=1, duration_s=30)
    )
    summary = ledger.get("pbx", "in").summary()
    # answered 1, busy 486, no answer 480 and 487, terminal reject 404: 5 of 7
    assert (summary["attempts"], summary["answered"], summary["ner"]) == (7, 1, round(5 / 7, 4))
    assert (summary["asr"], summary["acd_s"]) == (round(1 / 7, 4), 30.0)
    assert summary["failures"] == {"404": 1, "480": 1, "486": 1, "487": 1, "500": 1, "503": 1}
