"""The route decision: usages in order, priority, spreads, skips, limits, down trunks, caller ID."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.pb import tandem_pb2 as pb
from tandem.policy import Policy
from tandem.policy.patterns import literal_prefixes
from tandem.router.table import (
    Conditions,
    RoutingTable,
    Spreader,
    decision_dict,
    index_prefixes,
)

from .policies import redmond, route, trunk

ROUTED, NO_ROUTE, NO_TRUNK = (
    pb.RouteDecision.ROUTED,
    pb.RouteDecision.NO_ROUTE,
    pb.RouteDecision.NO_TRUNK,
)


def table(trunks: list[dict[str, Any]], routes: list[dict[str, Any]], **extra: Any) -> RoutingTable:
    return RoutingTable(Policy.model_validate({"trunks": trunks, "routes": routes, **extra}))


def targets(decision: pb.RouteDecision) -> list[str]:
    return [t.trunk for t in decision.targets]


# ---- the published Lync example -------------------------------------------------------


def test_a_redmond_number_takes_redmond_local() -> None:
    decision = RoutingTable(redmond()).decide("pbx", "+14255551212")
    assert decision.result == ROUTED
    assert (decision.usage, decision.route) == ("Local", "Redmond-Local")
    # the Universal route of the next usage is the backup
    assert [(t.trunk, t.usage) for t in decision.targets] == [
        ("gw-redmond", "Local"),
        ("gw-global", "GlobalPSTNHopoff"),
    ]
    assert decision.targets[0].called == "14255551212"  # the gateway's outbound translation
    assert decision.targets[1].called == "+14255551212"


def test_an_international_number_takes_universal() -> None:
    decision = RoutingTable(redmond()).decide("pbx", "+441235551010", explain=True)
    assert (decision.result, decision.usage, decision.route) == (
        ROUTED,
        "GlobalPSTNHopoff",
        "Universal",
    )
    assert targets(decision) == ["gw-global"]
    assert "usage Local: no voice route matches +441235551010" in decision.explain


def test_a_trunk_whose_only_usage_has_no_route_gets_403() -> None:
    decision = RoutingTable(redmond()).decide("branch", "+19725550100")
    assert decision.result == NO_ROUTE
    assert decision.status == 403
    assert "12004" in decision.reason and "+19725550100" in decision.reason
    assert not decision.targets


def test_a_decision_for_a_call_carries_no_prose() -> None:
    """The bus has no reader for `explain`: only route tests build it."""
    decision = RoutingTable(redmond()).decide("pbx", "+441235551010")
    assert decision.result == ROUTED and list(decision.explain) == []


def test_the_called_number_is_normalized_by_the_ingress_trunk() -> None:
    decision = RoutingTable(redmond()).decide("pbx", "0100", explain=True)
    assert decision.normalized_called == "+14255550100"
    assert decision.route == "Redmond-Local"
    assert any("inbound_rules[0]" in line for line in decision.explain)


def test_an_unknown_ingress_trunk_gets_403() -> None:
    decision = RoutingTable(redmond()).decide("nobody", "+14255551212")
    assert (decision.result, decision.status) == (NO_ROUTE, 403)


def test_a_disabled_ingress_trunk_takes_no_new_call() -> None:
    t = table([trunk("in", ["U"], enabled=False), trunk("out")], [route("r", "^1", ["U"], ["out"])])
    decision = t.decide("in", "123")
    assert (decision.result, decision.status) == (NO_TRUNK, 503)


# ---- priority and usages ---------------------------------------------------------------


def test_routes_of_a_usage_go_by_priority_then_id() -> None:
    t = table(
        [trunk("in", ["U"]), trunk("a"), trunk("b"), trunk("c")],
        [
            route("z-low", r"^\+1", ["U"], ["c"], priority=5),
            route("y-high", r"^\+1425", ["U"], ["a"], priority=1),
            route("x-high", r"^\+14", ["U"], ["b"], priority=1),
        ],
    )
    decision = t.decide("in", "+14255550100")
    assert targets(decision) == ["b", "a", "c"]
    assert decision.route == "x-high"


def test_a_later_usage_is_the_backup_even_when_the_first_has_no_usable_trunk() -> None:
    t = table(
        [trunk("in", ["First", "Second"]), trunk("off", enabled=False), trunk("gw")],
        [route("r1", r"^\+1", ["First"], ["off"]), route("r2", r"^\+1", ["Second"], ["gw"])],
    )
    decision = t.decide("in", "+12065550100", explain=True)
    assert decision.result == ROUTED
    assert targets(decision) == ["gw"]
    assert (decision.usage, decision.route) == ("Second", "r2")
    assert "route r1: trunk off skipped: it is disabled" in decision.explain


def test_a_trunk_is_tried_once_even_when_several_routes_name_it() -> None:
    t = table(
        [trunk("in", ["A", "B"]), trunk("gw")],
        [route("r1", r"^\+1", ["A"], ["gw"]), route("r2", r"^\+", ["B"], ["gw"])],
    )
    assert targets(t.decide("in", "+12065550100")) == ["gw"]


# ---- skips, limits and down trunks -----------------------------------------------------


def skip_policy() -> RoutingTable:
    return table(
        [
            trunk("in", ["U"]),
            trunk("off", enabled=False),
            trunk("busy", max_concurrent_calls=2),
            trunk("ok"),
            trunk("flaky"),
        ],
        [route("r", r"^\+", ["U"], ["in", "off", "busy", "flaky", "ok"], spread="ordered")],
    )


def test_disabled_busy_and_ingress_trunks_are_skipped_and_down_ones_go_last() -> None:
    conditions = Conditions(down={"flaky"}, active_calls={"busy": 2})
    decision = skip_policy().decide("in", "+1", conditions=conditions, explain=True)
    assert targets(decision) == ["ok", "flaky"]
    assert [t.trunk_down for t in decision.targets] == [False, True]
    explain = "\n".join(decision.explain)
    assert "trunk in skipped: it is the ingress trunk" in explain
    assert "trunk off skipped: it is disabled" in explain
    assert "trunk busy skipped: it is at its limit (2 of 2 calls)" in explain


def test_a_trunk_below_its_limit_is_used() -> None:
    decision = skip_policy().decide("in", "+1", conditions=Conditions(active_calls={"busy": 1}))
    assert targets(decision) == ["busy", "flaky", "ok"]


def test_down_trunks_go_after_every_up_trunk_including_backups() -> None:
    t = table(
        [trunk("in", ["A", "B"]), trunk("a1"), trunk("a2"), trunk("b1")],
        [
            route("ra", r"^\+", ["A"], ["a1", "a2"], spread="ordered"),
            route("rb", r"^\+", ["B"], ["b1"]),
        ],
    )
    decision = t.decide("in", "+1", conditions=Conditions(down={"a1"}))
    assert targets(decision) == ["a2", "b1", "a1"]
    assert (decision.usage, decision.route) == ("A", "ra")


def test_only_down_trunks_still_route() -> None:
    decision = skip_policy().decide("in", "+1", conditions=Conditions(down={"ok", "flaky", "busy"}))
    assert decision.result == ROUTED
    assert all(t.trunk_down for t in decision.targets)


def test_routes_without_a_usable_trunk_get_503() -> None:
    t = table(
        [trunk("in", ["U"]), trunk("busy", max_concurrent_calls=1)],
        [route("r", r"^\+", ["U"], ["in", "busy"])],
    )
    decision = t.decide("in", "+1", conditions=Conditions(active_calls={"busy": 1}))
    assert (decision.result, decision.status) == (NO_TRUNK, 503)
    assert "12000" in decision.reason
    assert decision.route == "r"


# ---- spreads ---------------------------------------------------------------------------


def spread_table(spread: str, **fields: Any) -> RoutingTable:
    return table(
        [trunk("in", ["U"]), trunk("g1"), trunk("g2"), trunk("g3")],
        [route("r", r"^\+", ["U"], ["g1", "g2", "g3"], spread=spread, **fields)],
    )


def test_round_robin_starts_each_call_on_the_next_trunk() -> None:
    t, spreader = spread_table("round_robin"), Spreader()
    firsts = [targets(t.decide("in", "+1", spreader=spreader)) for _ in range(4)]
    assert firsts == [
        ["g1", "g2", "g3"],
        ["g2", "g3", "g1"],
        ["g3", "g1", "g2"],
        ["g1", "g2", "g3"],
    ]


def test_round_robin_turns_over_the_usable_trunks_only() -> None:
    t, spreader = spread_table("round_robin"), Spreader()
    busy = Conditions(down={"g2"})
    orders = [targets(t.decide("in", "+1", conditions=busy, spreader=spreader)) for _ in range(2)]
    assert orders == [["g1", "g3", "g2"], ["g3", "g1", "g2"]]


def test_random_spreads_over_every_order() -> None:
    t, spreader = spread_table("random"), Spreader(random.Random(7))
    firsts = Counter(targets(t.decide("in", "+1", spreader=spreader))[0] for _ in range(300))
    assert set(firsts) == {"g1", "g2", "g3"}
    assert min(firsts.values()) > 60


def test_weighted_follows_the_weights() -> None:
    t = spread_table("weighted", weights={"g1": 8, "g2": 1, "g3": 1})
    spreader = Spreader(random.Random(11))
    decisions = [targets(t.decide("in", "+1", spreader=spreader)) for _ in range(2000)]
    firsts = Counter(d[0] for d in decisions)
    assert 0.75 < firsts["g1"] / 2000 < 0.85
    assert all(sorted(d) == ["g1", "g2", "g3"] for d in decisions)


def test_ordered_keeps_the_route_order() -> None:
    t, spreader = spread_table("ordered"), Spreader()
    assert {tuple(targets(t.decide("in", "+1", spreader=spreader))) for _ in range(5)} == {
        ("g1", "g2", "g3")
    }


# ---- translations and caller ID --------------------------------------------------------


def test_outbound_translation_and_caller_id_suppression() -> None:
    t = table(
        [
            trunk(
                "in",
                ["U"],
                inbound_calling_rules=[{"pattern": r"^(\d{4})$", "translation": "+1425555$1"}],
            ),
            trunk(
                "gw",
                outbound_called_rules=[{"pattern": r"^\+1(\d{10})$", "translation": "1$1"}],
                outbound_calling_rules=[{"pattern": r"^\+1(\d{10})$", "translation": "$1"}],
                failover_timer_s=4,
                failover_response_codes=[503],
                forward_pai=True,
            ),
            trunk("gw2"),
        ],
        [
            route(
                "hidden",
                r"^\+1206",
                ["U"],
                ["gw"],
                suppress_caller_id=True,
                alternate_caller_id="+14255550000",
            ),
            route("open", r"^\+1425", ["U"], ["gw"]),
            route("open2", r"^\+1972", ["U"], ["gw2"]),
        ],
    )
    hidden = t.decide("in", "+12065550100", "1234").targets[0]
    assert (hidden.called, hidden.calling, hidden.suppress_caller_id) == (
        "12065550100",
        "4255550000",
        True,
    )
    assert (hidden.edge, hidden.failover_timer_s, list(hidden.failover_response_codes)) == (
        "edge-1",
        4,
        [503],
    )
    assert hidden.forward_pai and not hidden.forward_call_history
    shown = t.decide("in", "+14255550100", "1234")
    assert shown.normalized_calling == "+14255551234"
    assert (shown.targets[0].calling, shown.targets[0].suppress_caller_id) == ("4255551234", False)
    untouched = t.decide("in", "+19725550100", "1234").targets[0]
    assert (untouched.called, untouched.calling) == ("+19725550100", "+14255551234")


def test_the_route_test_answer_has_the_documented_shape() -> None:
    data = decision_dict(RoutingTable(redmond()).decide("pbx", "0100", "5555"))
    assert data["result"] == "routed" and data["status"] is None
    assert set(data) >= {"normalized_called", "usage", "route", "targets", "explain"}
    assert set(data["targets"][0]) >= {"trunk", "called", "calling", "usage", "route"}
    refused = decision_dict(RoutingTable(redmond()).decide("branch", "+19725550100"))
    assert (refused["result"], refused["status"], refused["targets"]) == ("no_route", 403, [])


# ---- the prefix index decides as testing every route would -----------------------------

PATTERNS = [r"^\+1425\d{7}$", r"^\+1(425|206)\d{7}$", r"^\+14\d+", r"^\+1\d{10}$", r"^\+44\d*$",
            r"^\+?(\d*)$", r"555", r"^\+1(?!425)\d+$", r"^(\+1|\+44)2", r"^\+4[45]", r"^1?\d{4}$"]  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(PATTERNS), st.integers(0, 3)), min_size=1, max_size=12),
    st.lists(
        st.sampled_from(["+14255550100", "+12065551234", "+441234567", "+4455", "1234", "+1555"]),
        max_size=4,
    ),
)
def test_the_index_decides_as_a_full_scan(
    routes: list[tuple[str, int]], numbers: list[str]
) -> None:
    t = table(
        [trunk("in", ["U"]), trunk("gw")],
        [route(f"r{i}", p, ["U"], ["gw"], priority=prio) for i, (p, prio) in enumerate(routes)],
    )
    for number in numbers:
        expected = sorted(
            ((prio, f"r{i}") for i, (p, prio) in enumerate(routes) if _search(p, number)),
        )
        found = [r.rank for r in t.index.matching(number)]
        assert found == expected


def _search(pattern: str, number: str) -> bool:
    import regex

    return regex.search(pattern, number) is not None


# ---- a table built from the previous one decides as one built afresh -------------------


def test_a_table_evolved_from_the_last_one_equals_a_fresh_build() -> None:
    base = [
        route(f"r{n}", rf"^\+1{n:02d}\d{{8}}$", ["U"], ["gw"], priority=n % 3) for n in range(40)
    ]
    base.append(route("catch-all", r"^\+?(\d*)$", ["U"], ["gw"], priority=9))
    before = Policy.model_validate(
        {"trunks": [trunk("in", ["U"]), trunk("gw"), trunk("gw2")], "routes": base}
    )
    old = RoutingTable(before)
    kept = [r for r in before.routes if r.id not in {"r1", "r2", "r3", "catch-all"}]
    changed = [r.model_copy(update={"trunks": ["gw2"], "priority": -1}) for r in before.routes[1:3]]
    added = Policy.model_validate(
        {
            "pstn_usages": ["U"],
            "trunks": [trunk("gw3")],
            "routes": [route("new", r"^\+1031", ["U"], ["gw3"])],
        }
    ).routes
    after = Policy.model_construct(
        pstn_usages=[],
        trunks=[*before.trunks, trunk_model("gw3")],
        routes=[*kept, *changed, *added],
    ).checked()

    evolved, fresh = RoutingTable(after, old), RoutingTable(after)
    assert (
        evolved.index is not old.index and evolved.routes["r5"] is old.routes["r5"]
    )  # evolved, not rebuilt

    def filed(t: RoutingTable) -> dict[str, list[str]]:
        return {p: sorted(r.config.id for r in rs) for p, rs in t.index.by_prefix.items()}

    assert filed(evolved) == filed(fresh)
    assert "catch-all" not in evolved.routes and "r3" not in evolved.routes
    for number in ["+10112345678", "+10212345678", "+10312345678", "+13912345678", "+1"]:
        assert decision_dict(evolved.decide("in", number)) == decision_dict(
            fresh.decide("in", number)
        )
    assert [t.trunk for t in evolved.decide("in", "+10112345678").targets] == ["gw2"]
    # and the old table still decides by the old policy
    assert [t.trunk for t in old.decide("in", "+10112345678").targets] == ["gw"]


def trunk_model(trunk_id: str) -> Any:
    return Policy.model_validate({"trunks": [trunk(trunk_id)]}).trunks[0]


@pytest.mark.parametrize(
    "pattern",
    [
        r"^\+14255550\d{3}$",
        r"^\+44\d{7,9}$",
        r"^\+33\d{9,}$",
        r"^\+1(425|206)\d{7}$",
        r"^\+1(?!(425|206))(\d{10})$",
        r"^\+4420(\d{8})(;ext=\d+)?$",
        r"\+1\d{10}",
        r"^\+?(\d*)$",
    ],
)
def test_the_index_files_a_route_under_its_literal_prefixes(pattern: str) -> None:
    assert index_prefixes(pattern) == literal_prefixes(pattern)
