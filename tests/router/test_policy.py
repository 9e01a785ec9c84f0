"""The policy's own checks, as `tandem check-config` and the API report them."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.config import ConfigError, parse_config

from .policies import route, trunk


def errors(**route_fields: Any) -> str:
    data = {
        "trunks": [trunk("in", ["U"]), trunk("gw")],
        "routes": [route("r", r"^\+1", ["U"], ["gw"], **route_fields)],
    }
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    return "\n".join(refused.value.errors)


def test_suppressing_the_caller_id_without_an_alternate_leaves_anonymous() -> None:
    config = parse_config(
        {
            "trunks": [trunk("in", ["U"]), trunk("gw")],
            "routes": [route("r", r"^\+1", ["U"], ["gw"], suppress_caller_id=True)],
        }
    )
    assert config.routes[0].alternate_caller_id is None


def test_forward_pai_is_read_as_trusted() -> None:
    config = parse_config({"trunks": [trunk("gw", forward_pai=True), trunk("other")]})
    assert [t.trusted for t in config.trunks] == [True, False]


@pytest.mark.parametrize("alternate", ["+0425", "abc", "+1425;ext=0", "1425;ext="])
def test_the_alternate_caller_id_has_lyncs_shape(alternate: str) -> None:
    assert "routes.0.alternate_caller_id" in errors(alternate_caller_id=alternate)


def test_good_alternates_are_accepted() -> None:
    for alternate in ("+14255550100", "14255550100", "+14255550100;ext=12"):
        parse_config(
            {
                "trunks": [trunk("in", ["U"]), trunk("gw")],
                "routes": [
                    route(
                        "r",
                        r"^\+1",
                        ["U"],
                        ["gw"],
                        suppress_caller_id=True,
                        alternate_caller_id=alternate,
                    )
                ],
            }
        )


def test_weighted_spread_needs_a_weight_for_every_trunk() -> None:
    assert "positive weight for ['gw']" in errors(spread="weighted")


def test_a_pattern_no_engine_runs_is_refused_with_its_field() -> None:
    assert "routes.0.number_pattern: invalid pattern '^(+1'" in errors(number_pattern="^(+1")


def test_a_translation_naming_a_missing_group_is_refused() -> None:
    data = {
        "trunks": [
            trunk("in", ["U"], inbound_rules=[{"pattern": r"^(\d{4})$", "translation": "+1425$2"}])
        ]
    }
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert refused.value.errors == [
        "  trunks.0.inbound_rules.0: translation '+1425$2' uses $2 but the pattern has 1 group(s)"
    ]
