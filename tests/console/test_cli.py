"""`tandem calls`, `cdrs`, `trunks`, `hangup` and `ladder` against a running tandem."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO
from tests.system.conftest import GW1, HQ, System
from tests.system.sipp import Sipp

LOCAL = "+14255551234"


def tandem(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args, "--config", str(system.up.path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_calls_hangup_cdrs_ladder_and_trunks(system: System, sipp_dir: Path) -> None:
    gw1 = Sipp("uas_answer.xml", sipp_dir, ip=GW1, port=system.peer_port(GW1)).start()
    caller = Sipp("uac_callee_hangs_up.xml", sipp_dir, ip=HQ, remote=system.pbx_edge, called=LOCAL)
    caller.start()
    deadline = time.monotonic() + 10
    while True:
        calls = json.loads(tandem(system, "calls", "--json").stdout)
        if calls["count"] == 1 and calls["calls"][0]["state"] == "answered":
            break
        assert time.monotonic() < deadline, calls
        time.sleep(0.2)
    call_id = calls["calls"][0]["call_id"]
    listed = tandem(system, "calls", "--trunk", "pstn-gw1")
    assert call_id in listed.stdout and "1 call(s) in progress" in listed.stdout

    hangup = tandem(system, "hangup", call_id)
    assert hangup.returncode == 0 and f"hang-up of call {call_id} requested" in hangup.stdout
    assert caller.wait().returncode == 0 and gw1.wait().returncode == 0

    deadline = time.monotonic() + 10
    while True:
        cdrs = json.loads(
            tandem(system, "cdrs", "--since", "1h", "--trunk", "pstn-gw1", "--json").stdout
        )
        if any(c["call_id"] == call_id for c in cdrs["cdrs"]):
            break
        assert time.monotonic() < deadline, cdrs
        time.sleep(0.2)
    [cdr] = [c for c in cdrs["cdrs"] if c["call_id"] == call_id]
    assert cdr["ended_by"] == "api" and cdr["egress_trunk"] == "pstn-gw1"
    text = tandem(system, "cdrs", "--since", "30m").stdout
    assert call_id in text and "pstn-gw1:200" in text
    assert call_id not in tandem(system, "cdrs", "--since", "1h", "--trunk", "pbx-branch").stdout

    ladder = tandem(system, "ladder", call_id)
    assert ladder.returncode == 0, ladder.stderr
    lines = ladder.stdout.splitlines()
    assert lines[0].split() == ["pbx-hq", "edge-pbx", "edge-pstn", "pstn-gw1"]
    flows = [line[13:].replace("│", " ").strip() for line in lines[3:]]
    labels = [f.strip("<>─ ").replace("─", "").strip("<> ") for f in flows]
    assert labels[:2] == ["INVITE (SDP)", "100 Trying"]
    assert labels.count("BYE") == 2 and labels.count("ACK") == 2
    first = lines[3]
    assert first.index(">") > first.index("INVITE")  # the caller's INVITE goes right, to the edge
    full = tandem(system, "ladder", call_id, "--messages").stdout
    assert "Call-ID: " in full and "INVITE sip:" in full
    as_json = json.loads(tandem(system, "ladder", call_id, "--json").stdout)
    assert {m["edge"] for m in as_json["messages"]} == {"edge-pbx", "edge-pstn"}
    none = tandem(system, "ladder", "no-such-call")
    assert none.returncode == 0 and "no SIP message kept" in none.stdout

    trunks = tandem(system, "trunks")
    assert trunks.returncode == 0
    [row] = [line for line in trunks.stdout.splitlines() if line.startswith("pstn-gw1 ")]
    assert "edge-pstn" in row and "100%" in row
    data = json.loads(tandem(system, "trunks", "--json").stdout)
    assert {t["trunk"] for t in data["trunks"]} >= {"pbx-hq", "pstn-gw1", "pstn-gw2"}


def test_a_wrong_address_says_so(system: System) -> None:
    gone = tandem(system, "calls", "--api", "http://127.0.0.1:9")
    assert gone.returncode == 1 and "callstate does not answer at http://127.0.0.1:9" in gone.stderr
