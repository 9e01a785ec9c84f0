"""`make demo` as a user runs it: tandem demo starts the system, places a real call, prints
the CDR and the trace, stops what it started, and exits 0; a failure exits non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.e2e.conftest import HOSTS, sim_address, sims_config, tandem_config

pytestmark = pytest.mark.e2e


def write_configs(folder: Path) -> tuple[Path, Path]:
    sips = {name: sim_address(name) for name in HOSTS}
    config = tandem_config(f"nats://127.0.0.1:{free_port()}", sips, {})
    edges = {e["id"]: e["sip"] for e in config["edges"]}
    config_path, sims_path = folder / "tandem.yaml", folder / "sim.yaml"
    config_path.write_text(yaml.safe_dump(config))
    sims = sims_config(edges["edge-pbx"], edges["edge-pstn"], sips, {})
    sims_path.write_text(yaml.safe_dump(sims))
    return config_path, sims_path


def demo(folder: Path, config: Path, sims: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "tandem.cli",
        "demo",
        "--config",
        str(config),
        "--sims",
        str(sims),
        "--data-dir",
        str(folder / "data"),
        "--talk",
        "1",
    ]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240)


def test_demo_places_a_call_and_prints_its_cdr_and_trace(tmp_path: Path) -> None:
    config, sims = write_configs(tmp_path)
    result = demo(tmp_path, config, sims)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "-- starting tandem (tandem up)" in out
    assert "   final_status       200" in out
    assert "   calling_sent       +14255550100" in out  # the PBX trunk's calling-number rule
    assert "attempt 1: trunk pstn-gw1 14255551212 -> 200 OK" in out
    tree = out.split("-- the call's trace", 1)[1].splitlines()[1:]
    assert tree[0].startswith("call [tandem-edge edge-pbx]")
    assert any("route.decide [tandem-router]" in line for line in tree)
    assert any(
        "egress leg [tandem-edge edge-pstn]" in line and "status=200" in line for line in tree
    )
    assert out.rstrip().endswith("-- demo passed")
    assert "tandem is up" in (tmp_path / "data" / "demo-up.log").read_text()


def test_demo_exits_non_zero_when_the_call_fails(tmp_path: Path) -> None:
    config, sims = write_configs(tmp_path)
    data = yaml.safe_load(sims.read_text())
    data["gateways"][0]["default_reply"] = 486  # the gateway is busy for every number
    sims.write_text(yaml.safe_dump(data))
    result = demo(tmp_path, config, sims)
    assert result.returncode == 1
    assert "DEMO FAILED" in result.stderr
    assert "-- stopping the tandem this demo started" in result.stdout
