"""The sims' YAML file: what it accepts, what it refuses, and how a sim decides its reply."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tandem.config import ConfigError, load_config
from tandem.sim.config import Gateway, Pbx, load_sims, parse_sims
from tests.conftest import REPO


def gateway(**fields: Any) -> dict[str, Any]:
    return {
        "id": "gw",
        "sip": "127.0.0.3:5060",
        "trunk": "127.0.0.1:5080",
        "control": "127.0.0.3:8200",
        "rtp_ports": [22000, 22199],
        **fields,
    }


def test_example_sims_are_the_example_deployments_trunks() -> None:
    sims = load_sims(REPO / "examples" / "sim.yaml")
    tandem = load_config(REPO / "examples" / "tandem.yaml")
    peers = {t.peer: t for t in tandem.trunks}
    edges = {e.id: e.sip for e in tandem.edges}
    for sim in [*sims.pbxs, *sims.gateways]:
        trunk = peers[sim.sip]  # tandem sends this trunk's calls to the sim
        assert sim.sip_address[0] in trunk.sources  # and admits what the sim sends
        assert sim.trunk == edges[trunk.edge]


def test_gateway_replies_by_first_matching_rule_then_default() -> None:
    gw = Gateway.model_validate(
        gateway(
            rules=[{"pattern": "0486$", "reply": 486}, {"pattern": "^1425", "reply": 180}],
            default_reply=503,
        )
    )
    assert gw.reply_for("14255550486") == 486
    assert gw.reply_for("14255551234") == 180
    assert gw.reply_for("12065551234") == 503


def test_pbx_answers_its_extensions_by_extension_or_full_number() -> None:
    pbx = Pbx.model_validate(
        gateway(id="hq", number_prefix="+1425555", extensions=["0100", "0101"])
    )
    assert pbx.extension_for("+14255550101") == "0101"
    assert pbx.extension_for("0100") == "0100"
    assert pbx.reply_for("+14255550102") == 404
    assert pbx.reply_for("+12065550100") == 404


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"control": "10.0.0.1:8200"}, "control", "loopback only"),
        ({"rules": [{"pattern": "(", "reply": 486}]}, "rules.0.pattern", "bad regex"),
        ({"rules": [{"pattern": "1", "reply": 250}]}, "rules.0.reply", "reply must be"),
        ({"default_reply": 100}, "default_reply", "reply must be"),
        ({"rtp_ports": [22000, 22001]}, "rtp_ports", "room for two calls"),
        ({"sip": "127.0.0.3"}, "sip", "missing port"),
    ],
)
def test_invalid_gateway_is_refused_with_field_and_reason(
    change: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_sims({"gateways": [gateway(**change)]})
    assert any(f"gateways.0.{field}" in e and reason in e for e in refused.value.errors)


def test_new_fields_default_to_what_sims_did_before() -> None:
    gw = Gateway.model_validate(gateway())
    assert (gw.progress, gw.prack, gw.session_timer) == (180, "not_used", "inactive")
    assert (gw.session_expires_s, gw.min_se_s) == (1800, 90)


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"progress": 200}, "progress", "Input should be 180 or 183"),
        ({"prack": "required"}, "prack", "'not_used', 'optional' or 'mandatory'"),
        ({"session_timer": "on"}, "session_timer", "'optional', 'required' or 'always'"),
        ({"min_se_s": 30}, "min_se_s", "greater than or equal to 90"),
        ({"session_expires_s": 60}, "session_expires_s", "greater than or equal to 90"),
        ({"session_expires_s": 100, "min_se_s": 120}, "", "at least min_se_s"),
    ],
)
def test_invalid_call_features_are_refused(change: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_sims({"gateways": [gateway(**change)]})
    where = f"gateways.0.{field}".rstrip(".")
    assert any(where in e and reason in e for e in refused.value.errors), refused.value.errors


def test_duplicate_addresses_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate sip"):
        parse_sims({"gateways": [gateway(), gateway(id="gw2", control="127.0.0.3:8201")]})


def test_cli_needs_an_id_when_the_file_has_several_of_a_kind() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "sim", "pbx", "--config", "examples/sim.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "say which pbx with --id (found: hq, branch)" in done.stderr
