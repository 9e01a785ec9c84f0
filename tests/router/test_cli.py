"""`tandem route-test`: the route-test answer offline, from a config file alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.cli import main

from .test_api import POLICY_YAML


def test_route_test_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tandem.yaml"
    config.write_text(POLICY_YAML)
    args = ["route-test", "--config", str(config), "--trunk", "pbx", "--called", "0100", "--json"]
    assert main(args) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["result"] == "routed"
    assert answer["normalized_called"] == "+14255550100"
    assert [(t["trunk"], t["called"], t["route"]) for t in answer["targets"]] == [
        ("gw", "+14255550100", "local")
    ]


def test_route_test_as_text_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tandem.yaml"
    config.write_text(POLICY_YAML)
    assert (
        main(["route-test", "--config", str(config), "--trunk", "pbx", "--called", "+33123456789"])
        == 0
    )
    out = capsys.readouterr().out
    assert "result      no_route (403)" in out
    assert "usage Local: no voice route matches +33123456789" in out


def test_the_example_config_routes_a_hq_extension_to_the_pstn(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "tandem.yaml"
    assert (
        main(
            [
                "route-test",
                "--config",
                str(example),
                "--trunk",
                "pbx-branch",
                "--called",
                "+14255550123",
                "--json",
            ]
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert (answer["route"], answer["targets"][0]["trunk"]) == ("to-hq", "pbx-hq")


def test_a_bad_config_is_refused_with_its_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tandem.yaml"
    config.write_text(POLICY_YAML.replace(r"'^\+1425\d{7}$'", "'^(+1'"))
    assert main(["route-test", "--config", str(config), "--trunk", "pbx", "--called", "1"]) == 2
    assert "routes.0.number_pattern" in capsys.readouterr().err


def test_the_readme_route_test_example_is_what_the_command_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    block = readme.split("$ tandem route-test ", 1)[1].split("```", 1)[0]
    command, _, expected = block.partition("\n")
    args = command.split()
    args[args.index("--config") + 1] = str(repo / args[args.index("--config") + 1])
    assert main(["route-test", *args]) == 0
    assert capsys.readouterr().out == expected
