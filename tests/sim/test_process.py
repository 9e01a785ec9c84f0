"""A sim as a process: SIGTERM hangs up its calls and exits cleanly."""

from __future__ import annotations

from pathlib import Path

import yaml

from tandem.sim.client import SimProcess
from tandem.sim.config import load_sims
from tests.sim.conftest import direct_config


def test_sigterm_hangs_up_calls_in_progress_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(direct_config()))
    sims = load_sims(path)
    with SimProcess("gateway", sims.pick("gateway", "gw"), path, tmp_path / "gw.log") as gw:
        pbx = SimProcess("pbx", sims.pick("pbx", "hq"), path, tmp_path / "pbx.log").start()
        try:
            out = pbx.client.place_call("0100", "+14255551234")
            pbx.client.wait_call(out.id, lambda c: c.state == "confirmed", "answer")
            inbound = gw.client.wait_inbound(lambda c: c.sip_call_id == out.sip_call_id)
        finally:
            code = pbx.stop()
        assert code == 0, pbx.output()
        ended = gw.client.wait_call(inbound.id, lambda c: c.ended, "BYE from the stopping PBX")
        assert ended.reason == "Normal call clearing"
        assert "Assertion" not in pbx.output()
