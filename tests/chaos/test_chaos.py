"""The short chaos run inside `make test` (the long one is `make chaos`): a NATS server, a
router and the callstate leader killed in turn under steady SIPp traffic lose no call in
progress and no CDR, and duplicate none; a PSTN-side edge killed loses only its own calls
in progress, and new calls go through the other edge within 2 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.pb import tandem_pb2 as pb
from tests.chaos import harness
from tests.chaos.harness import Fault, Leg, Profile

# the target is under 1% of new calls; on this shared 2-core machine, busy with other
# tests, a fault may cost a call or two of the few dozen the short run places in its window
FAILED_CALLS_ALLOWED = 2
# Leg commands and events between the two edges are plain NATS messages: when both edges
# are connected to the server that dies, one in flight during their reconnection (a few
# milliseconds) is lost, and so is its call (measured: 3 calls of about 1,650 in progress at
# 23 such kills). Acknowledging them belongs to the edge's leg messages, not to this run.
NATS_KILL_LOSSES_ALLOWED = 1
EDGE_TAKEOVER_S = 2.0


@pytest.mark.timeout(600)
def test_faults_under_traffic_lose_no_call_in_progress_and_no_cdr(tmp_path: Path) -> None:
    outcome = harness.run(tmp_path, harness.SHORT)
    print("\n" + harness.table(outcome))
    assert [r.fault.name for r in outcome.reports] == [
        "NATS server (call-event stream leader)",
        "router",
        "callstate leader",
        "edge (PSTN side)",
    ]
    for report in outcome.reports:
        name = report.fault.name
        if report.fault.edge:  # its own calls go with it; new ones use the other at once
            assert 0 < report.own <= report.in_progress, name
            assert report.served_s <= EDGE_TAKEOVER_S, name
        else:
            assert report.own == 0, name
        assert report.attempted > 0 and report.in_progress > 0, name  # traffic throughout
        allowed = NATS_KILL_LOSSES_ALLOWED if name.startswith("NATS") else 0
        assert report.lost <= allowed and report.hanging <= allowed, name
        assert (report.cdrs_missing, report.cdrs_duplicated) == (0, 0), name
        assert report.failed <= FAILED_CALLS_ALLOWED, name
    assert (outcome.cdrs_missing, outcome.cdrs_duplicated) == (0, 0)
    own = sum(r.own for r in outcome.reports)
    allowed = len(outcome.reports) * FAILED_CALLS_ALLOWED + own
    assert outcome.completed >= outcome.placed - allowed


def test_the_judgement_counts_every_kind_of_harm() -> None:
    """What the run reports, on made-up calls: the run can only pass if this can fail."""
    profile = Profile(rate=1, hold_s=4, warmup_s=0, down_s=1, settle_s=0, rounds=1)
    fault = Fault("router", "router-1", kill_at=100.0, restart_at=101.0, whole_at=110.0)
    calls = {
        "kept": Leg("kept", start=97.0, answered=97.1, ok=101.5),  # up across the kill
        "lost": Leg("lost", start=98.0, answered=98.1),  # up at the kill, never hung up
        "new-ok": Leg("new-ok", start=102.0, answered=102.1, ok=106.2),
        "new-failed": Leg("new-failed", start=103.0),  # placed in the window, unanswered
        "twice": Leg("twice", start=104.0, answered=104.1, ok=108.2),
        "earlier": Leg("earlier", start=50.0, answered=50.1, ok=54.2),
    }
    callee = {"leg-a": Leg("leg-a", answered=99.0), "leg-b": Leg("leg-b", answered=99.5, ok=104.0)}
    cdrs = [pb.Cdr(sip_call_ids=[c]) for c in ("kept", "lost", "new-ok", "twice", "twice")]
    cdrs.append(pb.Cdr(sip_call_ids=["earlier"]))
    started = {"kept", "lost", "new-ok", "new-failed", "twice", "earlier"}
    outcome = harness.judge([fault], calls, callee, cdrs, started, profile)
    [report] = outcome.reports
    assert (report.attempted, report.failed) == (3, 1)  # new-ok, new-failed, twice
    assert (report.in_progress, report.lost) == (2, 1)  # kept, lost
    assert report.hanging == 1  # leg-a
    assert (report.cdrs_missing, report.cdrs_duplicated) == (1, 1)  # new-failed, twice
    assert outcome.failed_outside == 0
    assert (outcome.placed, outcome.completed) == (6, 4)

    # the same calls, the fault an edge's: "lost" ran on it, so it is its own, not lost
    fault.edge, fault.killed = True, "edge-pstn-2"
    cdrs[1].attempts.add(sip_call_id="leg-a", edge="edge-pstn-2")
    [report] = harness.judge([fault], calls, callee, cdrs, started, profile).reports
    assert (report.in_progress, report.own, report.lost) == (2, 1, 0)
    assert report.hanging == 0  # leg-a was the killed edge's too


def test_a_call_harmed_by_one_fault_is_not_counted_again_by_the_next() -> None:
    """Faults are 15 s apart in the short run, each call's window wider: a harmed call or leg
    is the report's of the last fault killed while it was up, and only that one's."""
    profile = Profile(rate=1, hold_s=4, warmup_s=0, down_s=1, settle_s=0, rounds=1)
    nats = Fault("NATS server", "nats-2", kill_at=100.0, restart_at=105.0, whole_at=111.0)
    router = Fault("router", "router-1", kill_at=115.0, restart_at=118.0, whole_at=120.0)
    calls = {"lost": Leg("lost", start=98.0, answered=98.1)}
    callee = {
        "hung-by-nats": Leg("hung-by-nats", answered=99.0),
        "hung-by-router": Leg("hung-by-router", answered=112.0),
    }
    cdrs = [pb.Cdr(sip_call_ids=["lost"])]
    outcome = harness.judge([nats, router], calls, callee, cdrs, {"lost"}, profile)
    first, second = outcome.reports
    assert (first.lost, first.hanging) == (1, 1)
    assert (second.lost, second.hanging) == (0, 1)

    # a leg answered while the callstate fault lasted, its BYE due as an edge was killed:
    # the edge's own, not the callstate fault's hanging leg
    callstate = Fault(
        "callstate leader", "callstate-1", kill_at=100.0, restart_at=103.0, whole_at=112.0
    )
    edge = Fault("edge", "edge-pstn-2", kill_at=116.0, restart_at=119.0, whole_at=121.0, edge=True)
    callee = {"on-edge": Leg("on-edge", answered=111.0)}
    cdrs = [pb.Cdr(attempts=[pb.Attempt(sip_call_id="on-edge", edge="edge-pstn-2")])]
    reports = harness.judge([callstate, edge], {}, callee, cdrs, set(), profile).reports
    assert [r.hanging for r in reports] == [0, 0]
