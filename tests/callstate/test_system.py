"""Hang-up through callstate's API ends a call placed through a running tandem (SIPp trunks)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.system.conftest import GW1, HQ, start_system
from tests.system.sipp import Sipp

LOCAL = "+14255551234"  # hq dials a Redmond number: out through gw1


def answered_call(api: str, within_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        calls = httpx.get(f"{api}/v1/calls").json()["calls"]
        answered = [c for c in calls if c["state"] == "answered"]
        if answered:
            return dict(answered[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"no answered call in callstate: {calls}")
        time.sleep(0.1)


@pytest.mark.e2e
def test_hangup_through_the_api_ends_a_call_through_a_running_system(tmp_path: Path) -> None:
    system = start_system(tmp_path)
    try:
        gw1 = Sipp("uas_answer.xml", tmp_path, ip=GW1, port=system.peer_port(GW1)).start()
        caller = Sipp(
            "uac_callee_hangs_up.xml", tmp_path, ip=HQ, remote=system.pbx_edge, called=LOCAL
        ).start()
        call = answered_call(system.callstate_api)
        assert (call["ingress_trunk"], [leg["trunk"] for leg in call["legs"]]) == (
            "pbx-hq",
            ["pstn-gw1"],
        )

        response = httpx.delete(f"{system.callstate_api}/v1/calls/{call['call_id']}")
        assert response.status_code == 202, response.text
        caller_saw, callee_saw = caller.wait(), gw1.wait()
        # both trunks got a BYE from tandem and answered it: the call is over on the wire
        assert caller_saw.returncode == 0 and caller_saw.received("BYE"), caller_saw.describe()
        assert callee_saw.returncode == 0 and callee_saw.received("BYE"), callee_saw.describe()

        cdr = system.cdr(call["sip_call_id"])
        assert (cdr["call_id"], cdr["ended_by"], cdr["final_status"]) == (
            call["call_id"],
            "api",
            200,
        )
        assert httpx.get(f"{system.callstate_api}/v1/calls").json()["calls"] == []
    finally:
        system.up.stop()
