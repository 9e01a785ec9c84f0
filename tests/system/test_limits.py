"""max_concurrent_calls holds across edges: bursts of 200 SIPp calls arriving through two
edges at trunks with a limit of 50, each trunk served by two edges.

The system: the system tests' trunks, each PBX on edge-pbx and edge-pbx-2, each gateway on
edge-pstn and edge-pstn-2. pbx-hq may have 50 calls (its excess gets 503 from the edge it
arrived at); pstn-gw1 may have 50 (its excess goes to pstn-gw2, the route's next trunk).
Every call talks long enough that all the answered ones are up at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support import system_config
from tests.system.conftest import (
    BRANCH,
    GW1,
    GW2,
    HQ,
    System,
    policy,
    run_system,
    trunk,
    trunk_peers,
)
from tests.system.sipp import Sipp, SippResult, header

LIMIT = 50
BURST = 200  # calls, half through each PBX-side edge
RATE = 50  # calls/s from each caller: the burst is placed in 2 s
TALK_MS = 8000  # every answered call is still up when the last is placed
LOCAL = "+14255551234"  # route redmond-local: pstn-gw1, then pstn-gw2


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("limits")
    peers = trunk_peers(HQ, GW1, BRANCH, GW2)
    config = system_config(f"nats://127.0.0.1:{free_port()}", **policy(peers))
    config["edges"] += [
        {"id": f"{edge}-2", "api": f"127.0.0.1:{free_port()}"} for edge in ("edge-pbx", "edge-pstn")
    ]
    for t in config["trunks"]:
        t["edge"] = [t["edge"], f"{t['edge']}-2"]
        if t["id"] in ("pbx-hq", "pstn-gw1"):
            t["max_concurrent_calls"] = LIMIT
    running = run_system(workdir, peers, config)
    yield running
    running.up.stop()


def burst(system: System, workdir: Path, caller_ip: str) -> list[SippResult]:
    """BURST calls from one PBX, half through each of its edges, at once."""
    callers = [
        Sipp(
            "uac_limit.xml",
            workdir,
            ip=caller_ip,
            remote=system.edge_sip(edge),
            called=LOCAL,
            calls=BURST // 2,
            rate=RATE,
            pause_ms=TALK_MS,
            timeout_s=60,
            extra=("-l", str(BURST)),
        ).start()
        for edge in ("edge-pbx", "edge-pbx-2")
    ]
    return [c.wait() for c in callers]


def gateway(system: System, ip: str, workdir: Path) -> Sipp:
    return trunk(
        system,
        ip,
        "uas_answer.xml",
        workdir,
        calls=BURST,
        pause_ms=500,
        timeout_s=60,
        extra=("-default_behaviors", "all,-abortunexp"),
    )


def took(sipp: Sipp) -> int:
    """The calls a gateway was offered (its INVITEs, retransmissions once)."""
    return len({header(m, "Call-ID") for m in sipp.stop().received("INVITE")})


def answers(results: list[SippResult]) -> Counter[int]:
    return Counter(code for r in results for code in r.final_statuses())


def test_a_burst_through_two_edges_at_a_pbx_limited_to_50_gets_50_answers_and_503s(
    system: System, sipp_dir: Path
) -> None:
    gw1, gw2 = gateway(system, GW1, sipp_dir), gateway(system, GW2, sipp_dir)
    callers = burst(system, sipp_dir, HQ)
    offered = [took(gw1), took(gw2)]
    got = answers(callers)
    print(f"pbx-hq at {LIMIT}: {dict(got)}, gateways offered {offered}")
    assert sum(got.values()) == BURST, [c.describe() for c in callers]
    assert set(got) <= {200, 503}, got
    # never more than 50 up: every answered call was still talking when the last was placed
    assert got[200] <= LIMIT and sum(offered) == got[200], (got, offered)
    assert got[200] >= LIMIT - 5, got  # the limit, not an accident, refused the rest
    assert all(c.total("Failed call") == 0 for c in callers)
    refusals = [m for c in callers for m in c.received("SIP/2.0 503")]
    assert all("at its limit of 50 calls" in m or "trunk_limit" in m for m in refusals)


def test_a_burst_at_a_gateway_limited_to_50_overflows_to_the_next_trunk(
    system: System, sipp_dir: Path
) -> None:
    gw1, gw2 = gateway(system, GW1, sipp_dir), gateway(system, GW2, sipp_dir)
    callers = burst(system, sipp_dir, BRANCH)  # pbx-branch has no limit of its own
    took_gw1, took_gw2 = took(gw1), took(gw2)
    got = answers(callers)
    print(f"pstn-gw1 at {LIMIT}: {dict(got)}, gw1 offered {took_gw1}, gw2 {took_gw2}")
    assert got == {200: BURST}, got  # every call answered, by one gateway or the other
    assert LIMIT - 5 <= took_gw1 <= LIMIT, (took_gw1, took_gw2)
    assert took_gw1 + took_gw2 == BURST
