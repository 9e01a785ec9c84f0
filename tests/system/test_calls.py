"""Calls across trunks through the running system, each trunk a SIPp process on its own
loopback address: what the trunks see on the wire (SIPp's exit code and message trace)
and what tandem recorded (callstate's CDR).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from tests.system.conftest import (
    BRANCH,
    FAILOVER_TIMER_S,
    GW1,
    GW2,
    HQ,
    STRANGER,
    System,
    trunk,
)
from tests.system.sipp import Sipp, call_id, header, passed, request_uri_user

LOCAL = "+14255551234"  # hq dials a Redmond number: route redmond-local, gw1 then gw2
LOCAL_SENT = "14255551234"  # as the gateways' outbound rule writes it
HQ_EXTENSION = "4255550100"  # a gateway delivers a call to an hq extension
BRANCH_EXTENSION = "+12065550142"


def test_pbx_to_pstn_with_early_media(system: System, sipp_dir: Path) -> None:
    gw1 = trunk(system, GW1, "uas_early_media.xml", sipp_dir, pause_ms=300)
    caller = Sipp("uac_call.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL).run()
    callee = gw1.wait()
    passed(caller, callee)

    # the 183's SDP reached the caller; the caller's offer reached the gateway unchanged
    early = caller.received("SIP/2.0 183")
    assert early and "m=audio" in early[0], caller.describe()
    invite = callee.received("INVITE")[0]
    assert request_uri_user(invite) == LOCAL_SENT
    assert "o=caller 53655765 2353687637 IN IP4 127.0.0.2" in invite
    # each side has its own dialog: no Call-ID or Via of the PBX reaches the gateway
    assert header(invite, "Call-ID") != call_id(caller)
    assert HQ not in header(invite, "Via")

    cdr = system.cdr(call_id(caller))
    assert (cdr["ingress_trunk"], cdr["egress_trunk"]) == ("pbx-hq", "pstn-gw1")
    assert (cdr["final_status"], cdr["called_sent"], cdr["ended_by"]) == (200, LOCAL_SENT, "caller")
    assert header(invite, "Call-ID") in cdr["sip_call_ids"]


def test_pstn_to_pbx(system: System, sipp_dir: Path) -> None:
    hq = trunk(system, HQ, "uas_ring_answer.xml", sipp_dir, pause_ms=300)
    caller = Sipp(
        "uac_call.xml", sipp_dir, ip=GW1, remote=system.pstn_edge, called=HQ_EXTENSION
    ).run()
    callee = hq.wait()
    passed(caller, callee)

    assert caller.received("SIP/2.0 180"), caller.describe()
    assert request_uri_user(callee.received("INVITE")[0]) == "+14255550100"
    cdr = system.cdr(call_id(caller))
    assert (cdr["ingress_trunk"], cdr["egress_trunk"], cdr["route"]) == (
        "pstn-gw1",
        "pbx-hq",
        "to-hq",
    )
    assert cdr["final_status"] == 200


def test_pbx_to_pbx(system: System, sipp_dir: Path) -> None:
    branch = trunk(system, BRANCH, "uas_answer.xml", sipp_dir)
    caller = Sipp(
        "uac_call.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=BRANCH_EXTENSION
    ).run()
    callee = branch.wait()
    passed(caller, callee)

    assert request_uri_user(callee.received("INVITE")[0]) == BRANCH_EXTENSION
    cdr = system.cdr(call_id(caller))
    assert (cdr["ingress_trunk"], cdr["egress_trunk"], cdr["final_status"]) == (
        "pbx-hq",
        "pbx-branch",
        200,
    )


def test_caller_cancels_while_ringing(system: System, sipp_dir: Path) -> None:
    gw1 = trunk(system, GW1, "uas_ring_cancelled.xml", sipp_dir)
    caller = Sipp(
        "uac_cancel.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL, pause_ms=500
    ).run()
    callee = gw1.wait()
    passed(caller, callee)  # both scenarios require 200 to the CANCEL, 487 and the ACK

    assert caller.final_statuses() == [487]
    assert callee.received("CANCEL"), callee.describe()
    cdr = system.cdr(call_id(caller))
    assert (cdr["final_status"], cdr["answer_unix_ms"], cdr["failover_count"]) == (487, None, 0)


def test_busy_is_relayed_without_failover(system: System, sipp_dir: Path) -> None:
    gw1 = trunk(system, GW1, "uas_busy.xml", sipp_dir)
    gw2 = trunk(system, GW2, "uas_answer.xml", sipp_dir)
    caller = Sipp("uac_rejected.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL).run()
    passed(caller, gw1.wait())

    assert caller.final_statuses() == [486]
    assert gw2.stop().received("INVITE") == []  # 486 is not a failover code
    cdr = system.cdr(call_id(caller))
    assert (cdr["final_status"], cdr["failover_count"], len(cdr["attempts"])) == (486, 0, 1)


def test_503_from_first_gateway_fails_over_to_second(system: System, sipp_dir: Path) -> None:
    gw1 = trunk(system, GW1, "uas_unavailable.xml", sipp_dir)
    gw2 = trunk(system, GW2, "uas_answer.xml", sipp_dir)
    caller = Sipp("uac_call.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL).run()
    passed(caller, gw1.wait(), gw2.wait())

    assert caller.final_statuses() == [200]
    cdr = system.cdr(call_id(caller))
    attempts = [(a["trunk"], a["status"]) for a in cdr["attempts"]]
    assert attempts == [("pstn-gw1", 503), ("pstn-gw2", 200)]
    assert (cdr["egress_trunk"], cdr["failover_count"]) == ("pstn-gw2", 1)


def test_no_failover_after_180(system: System, sipp_dir: Path) -> None:
    gw1 = trunk(system, GW1, "uas_ring_unavailable.xml", sipp_dir, pause_ms=300)
    gw2 = trunk(system, GW2, "uas_answer.xml", sipp_dir)
    caller = Sipp("uac_rejected.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL).run()
    passed(caller, gw1.wait())

    assert caller.received("SIP/2.0 180"), caller.describe()
    assert caller.final_statuses() == [503]
    assert gw2.stop().received("INVITE") == []
    cdr = system.cdr(call_id(caller))
    assert (cdr["final_status"], cdr["failover_count"]) == (503, 0)


def test_no_route_gives_403(system: System, sipp_dir: Path) -> None:
    caller = Sipp(
        "uac_rejected.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called="+442071234567"
    ).run()
    passed(caller)

    assert caller.final_statuses() == [403]
    forbidden = caller.received("SIP/2.0 403")[0]
    assert re.search(r"^(Reason|Warning)\s*:.*rout", forbidden, re.M | re.I), forbidden
    cdr = system.cdr(call_id(caller))
    assert (cdr["final_status"], cdr["attempts"], cdr["answer_unix_ms"]) == (403, [], None)


def unknown_source_rejects(system: System) -> float:
    """edge-pbx's count of requests refused for their source (its Prometheus /metrics)."""
    metrics = httpx.get(f"{system.edge_api('edge-pbx')}/metrics").text
    found = re.search(
        r'^tandem_edge_admission_rejects_total\{[^}]*reason="unknown_source"[^}]*\} (\S+)',
        metrics,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


def test_unknown_source_gives_403(system: System, sipp_dir: Path) -> None:
    rejected_before = unknown_source_rejects(system)
    gw1 = trunk(system, GW1, "uas_answer.xml", sipp_dir)
    caller = Sipp(
        "uac_rejected.xml", sipp_dir, ip=STRANGER, remote=system.pbx_edge, called=LOCAL
    ).run()
    passed(caller)

    assert caller.final_statuses() == [403]
    assert gw1.stop().received("INVITE") == []
    assert unknown_source_rejects(system) > rejected_before


def test_hold_and_resume(system: System, sipp_dir: Path) -> None:
    gw1 = trunk(system, GW1, "uas_hold.xml", sipp_dir)
    caller = Sipp("uac_hold.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL).run()
    callee = gw1.wait()
    passed(caller, callee)  # each side checked the a= direction the other sent

    dialog = call_id(callee)
    invites = [m for m in callee.received("INVITE") if header(m, "Call-ID") == dialog]
    assert len(invites) == 3
    assert "a=sendonly" in invites[1] and "a=sendrecv" in invites[2]
    assert [a["status"] for a in system.cdr(call_id(caller))["attempts"]] == [200]


def test_info_is_relayed(system: System, sipp_dir: Path) -> None:
    gw1 = trunk(system, GW1, "uas_info.xml", sipp_dir)
    caller = Sipp("uac_info.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL).run()
    callee = gw1.wait()
    passed(caller, callee)

    info = callee.received("INFO")[0]
    assert header(info, "Content-Type") == "application/dtmf-relay"


def test_callee_hangs_up(system: System, sipp_dir: Path) -> None:
    gw1 = trunk(system, GW1, "uas_hangup.xml", sipp_dir, pause_ms=300)
    caller = Sipp(
        "uac_callee_hangs_up.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL
    ).run()
    callee = gw1.wait()
    passed(caller, callee)

    assert caller.received("BYE"), caller.describe()
    cdr = system.cdr(call_id(caller))
    assert (cdr["final_status"], cdr["ended_by"]) == (200, "callee")


def test_calls_complete_with_10_percent_of_datagrams_lost(system: System, sipp_dir: Path) -> None:
    # to the branch PBX, whose failover timer is the default 10 s: a gateway's 2 s can run
    # out while an INVITE and its retransmissions are lost, and gw2 is not here to answer
    calls = 10
    lossy = ("-lost", "10")
    branch = trunk(  # lingers 2 s after each call to answer BYEs retransmitted over its lost 200
        system,
        BRANCH,
        "uas_answer.xml",
        sipp_dir,
        calls=calls,
        pause_ms=2000,
        extra=(*lossy, "-default_behaviors", "all,-abortunexp"),  # an ACK may follow the BYE
        timeout_s=60,
    )
    caller = Sipp(
        "uac_call.xml",
        sipp_dir,
        ip=HQ,
        remote=system.pbx_edge,
        called=BRANCH_EXTENSION,
        calls=calls,
        rate=5,
        extra=lossy,
        timeout_s=60,
    ).run()
    callee = branch.wait()
    passed(caller, callee)  # every call of both sides completed

    assert len(set(header(m, "Call-ID") for m in caller.sent("INVITE"))) == calls
    for sip_call_id in {header(m, "Call-ID") for m in caller.sent("INVITE")}:
        assert system.cdr(sip_call_id)["final_status"] == 200


def test_silent_gateway_fails_over_after_its_timer(system: System, sipp_dir: Path) -> None:
    # last in the module: the edge may retransmit the INVITE to gw1 until timer B (32 s),
    # which a later test's gw1 would take for a new call
    gw1 = trunk(system, GW1, "uas_silent.xml", sipp_dir)
    gw2 = trunk(system, GW2, "uas_answer.xml", sipp_dir)
    start = time.monotonic()
    caller = Sipp("uac_call.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL).run()
    elapsed = time.monotonic() - start
    passed(caller, gw2.wait())
    silent = gw1.stop()

    assert silent.received("INVITE"), silent.describe()
    assert silent.sent("SIP/2.0") == []  # silent indeed: not even 100 Trying
    assert FAILOVER_TIMER_S <= elapsed < FAILOVER_TIMER_S + 3  # the call waited the timer once
    cdr = system.cdr(call_id(caller))
    assert [a["trunk"] for a in cdr["attempts"]] == ["pstn-gw1", "pstn-gw2"]
    assert (cdr["egress_trunk"], cdr["final_status"]) == ("pstn-gw2", 200)
    gw2_tried_after_ms = cdr["attempts"][1]["start_unix_ms"] - cdr["attempts"][0]["start_unix_ms"]
    # each stamp is the wall clock truncated to the millisecond, the timer runs on the loop's
    # monotonic clock: the difference may read a millisecond short
    assert FAILOVER_TIMER_S * 1000 - 1 <= gw2_tried_after_ms < (FAILOVER_TIMER_S + 1) * 1000
