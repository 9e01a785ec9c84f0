"""Policies the router tests share, written as an administrator would write them."""

from __future__ import annotations

from typing import Any

from tandem.policy import Policy


def trunk(trunk_id: str, usages: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    host = f"127.0.1.{abs(hash(trunk_id)) % 250 + 1}"
    return {
        "id": trunk_id,
        "edge": fields.pop("edge", "edge-1"),
        "peer": f"{host}:5060",
        "sources": [host],
        "pstn_usages": usages or [],
        **fields,
    }


def route(
    route_id: str, pattern: str, usages: list[str], trunks: list[str], **fields: Any
) -> dict[str, Any]:
    return {
        "id": route_id,
        "number_pattern": pattern,
        "pstn_usages": usages,
        "trunks": trunks,
        **fields,
    }


def redmond() -> Policy:
    """The Lync documentation's example: usages Local then GlobalPSTNHopoff."""
    return Policy.model_validate(
        {
            "pstn_usages": ["RedmondLocal"],
            "trunks": [
                trunk("pbx", ["Local", "GlobalPSTNHopoff"], inbound_rules=[
                    {"pattern": r"^(\d{4})$", "translation": "+1425555$1"}]),
                trunk("branch", ["RedmondLocal"]),
                trunk("gw-redmond", outbound_called_rules=[
                    {"pattern": r"^\+1(\d{10})$", "translation": "1$1"}]),
                trunk("gw-global"),
            ],
            "routes": [
                route("Redmond Local".replace(" ", "-"), r"^\+1(425|206|253)(\d{7})$", ["Local"],
                      ["gw-redmond"]),
                route("Universal", r"^\+?(\d*)$", ["GlobalPSTNHopoff"], ["gw-global"]),
            ],
        }
    )  # fmt: skip
