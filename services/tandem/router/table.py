"""The route decision: a policy compiled into a prefix index of its routes, and Lync's walk.

Normalize the called and calling numbers with the ingress trunk's rules; walk the trunk's
PSTN usages in order; in each usage take the matching voice routes by priority, expand each
route's trunks by its spread, skip disabled trunks, trunks at their call limit and the
ingress trunk; translate for each target trunk and apply the route's caller-ID policy. The
first usage with a matching route gives the primary targets, later usages the backups, and
trunks that are down go after every trunk believed up (a down trunk would most likely cost
a failover timer). No matching route: 403 (Lync's ms-diagnostics 12004); matching routes
but no usable trunk: 503 (12000).
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from tandem.pb import tandem_pb2 as pb
from tandem.policy import Policy, Route, Trunk
from tandem.policy.patterns import (
    CompiledRule,
    Pattern,
    apply_rules,
    compile_pattern,
    compile_rules,
    literal_prefixes,
)

NO_ROUTE_STATUS = 403
NO_TRUNK_STATUS = 503
NO_ROUTE_DIAGNOSTIC = 12004
NO_TRUNK_DIAGNOSTIC = 12000
RESULT_NAMES = {pb.RouteDecision.ROUTED: "routed", pb.RouteDecision.NO_ROUTE: "no_route"}
RESULT_NAMES[pb.RouteDecision.NO_TRUNK] = "no_trunk"


@dataclass(frozen=True, eq=False)
class CompiledTrunk:
    config: Trunk
    inbound_rules: tuple[CompiledRule, ...]
    inbound_calling_rules: tuple[CompiledRule, ...]
    outbound_called_rules: tuple[CompiledRule, ...]
    outbound_calling_rules: tuple[CompiledRule, ...]
    target: pb.RouteTarget  # what every target on this trunk carries, whatever the call

    @classmethod
    def build(cls, trunk: Trunk) -> CompiledTrunk:
        return cls(
            trunk,
            compile_rules(trunk.inbound_rules),
            compile_rules(trunk.inbound_calling_rules),
            compile_rules(trunk.outbound_called_rules),
            compile_rules(trunk.outbound_calling_rules),
            pb.RouteTarget(
                trunk=trunk.id,
                edge=trunk.edges[0],
                edges=trunk.edges,
                failover_timer_s=trunk.failover_timer_s,
                failover_response_codes=trunk.failover_response_codes,
                forward_pai=trunk.trusted,
                forward_call_history=trunk.forward_call_history,
                max_ring_s=trunk.max_ring_s,
                max_call_s=trunk.max_call_s,
                redirect=trunk.redirect,
                media=trunk.media,
                srtp=trunk.srtp,
                ice=trunk.ice,
                media_timeout_s=trunk.media_timeout_s,
                media_fallback=trunk.media_fallback,
            ),
        )


class CompiledRoute:
    """A voice route as the index files it: slotted, as a table holds 100,000 of them."""

    __slots__ = ("_pattern", "config", "prefixes")

    def __init__(self, config: Route, prefixes: tuple[str, ...] | None) -> None:
        self.config = config
        self.prefixes = prefixes  # what the index files it under (None: every number)
        self._pattern: Pattern | None = None

    @property
    def pattern(self) -> Pattern:
        # compiled when first needed: a cold router indexes 100,000 routes without compiling
        # one (their prefixes are read from the text); the router warms them up afterwards
        if self._pattern is None:
            self._pattern = compile_pattern(self.config.number_pattern)
        return self._pattern

    @property
    def rank(self) -> tuple[int, str]:
        """Lower first; ids break ties the same on every replica."""
        return self.config.priority, self.config.id

    @property
    def label(self) -> str:
        return f"{self.config.id} (priority {self.config.priority})"

    @classmethod
    def build(cls, route: Route) -> CompiledRoute:
        return cls(route, index_prefixes(route.number_pattern))


# '^\+1425\d{7}$': most routes; their prefix needs no scan (a third of a cold router's index)
_PLAIN_E164 = re.compile(r"\^\\\+([0-9]+)\\d\{[0-9]+(?:,[0-9]*)?\}\$")


def index_prefixes(pattern: str) -> tuple[str, ...] | None:
    """The literal prefixes a route is indexed under (None: it may match any number)."""
    plain = _PLAIN_E164.fullmatch(pattern)
    return (sys.intern("+" + plain.group(1)),) if plain else literal_prefixes(pattern)


@dataclass
class PrefixIndex:
    """Voice routes by the literal prefix their pattern needs ('' when it needs none).

    Tuples (lists while a table is built): a copy shares them with its original, so a new
    policy can be indexed from the last one while that one keeps deciding.
    """

    by_prefix: dict[str, tuple[CompiledRoute, ...]] = field(default_factory=dict)
    longest: int = 0

    def copy(self) -> PrefixIndex:
        return PrefixIndex(dict(self.by_prefix), self.longest)

    def add(self, route: CompiledRoute) -> None:
        for prefix in route.prefixes or ("",):
            self.by_prefix[prefix] = (*self.by_prefix.get(prefix, ()), route)
            self.longest = max(self.longest, len(prefix))

    def remove(self, route: CompiledRoute) -> None:
        for prefix in route.prefixes or ("",):
            kept = tuple(r for r in self.by_prefix.get(prefix, ()) if r is not route)
            if kept:
                self.by_prefix[prefix] = kept
            else:
                self.by_prefix.pop(prefix, None)

    def matching(self, number: str) -> list[CompiledRoute]:
        """The routes whose pattern matches the number, by priority."""
        found: dict[int, CompiledRoute] = {}
        by_prefix = self.by_prefix
        for length in range(min(len(number), self.longest) + 1):
            for route in by_prefix.get(number[:length], ()):
                if id(route) not in found and route.pattern.matches(number):
                    found[id(route)] = route
        return sorted(found.values(), key=lambda r: r.rank)


class Spreader:
    """How a route spreads calls over its trunks; round-robin turns are per replica."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.turns: dict[str, int] = {}

    def order(self, route: Route, trunks: list[str]) -> list[str]:
        if len(trunks) < 2 or route.spread == "ordered":
            return trunks
        if route.spread == "round_robin":  # Lync
            turn = self.turns.get(route.id, 0)
            self.turns[route.id] = turn + 1
            turn %= len(trunks)
            return trunks[turn:] + trunks[:turn]
        if route.spread == "random":  # Teams
            shuffled = list(trunks)
            self.rng.shuffle(shuffled)
            return shuffled
        # weighted: each trunk comes first with probability weight / total (Efraimidis-Spirakis)
        weights = route.weights
        return sorted(trunks, key=lambda t: self.rng.random() ** (1.0 / weights[t]), reverse=True)


@dataclass(frozen=True)
class Conditions:
    """What the bus says about trunks at decision time: down by health, active calls."""

    down: Collection[str] = frozenset()
    active_calls: Mapping[str, int] = field(default_factory=dict)


class RoutingTable:
    """A policy compiled for deciding, built whole or from the table of the previous policy."""

    REBUILD_SHARE = 0.25  # beyond this share of routes changed, indexing afresh is quicker

    def __init__(self, policy: Policy, previous: RoutingTable | None = None) -> None:
        self.policy = policy
        self.trunks = {t.id: CompiledTrunk.build(t) for t in policy.trunks}
        if previous is not None and self._evolve(previous):
            return
        self.routes = {r.id: CompiledRoute.build(r) for r in policy.routes}
        by_prefix: dict[str, list[CompiledRoute]] = {}
        longest = 0
        for compiled in self.routes.values():  # appending in place: nothing shares these yet
            for prefix in compiled.prefixes or ("",):
                by_prefix.setdefault(prefix, []).append(compiled)
                longest = max(longest, len(prefix))
        # one for every usage (a number is looked up once); a tuple is 40 bytes less a prefix
        self.index = PrefixIndex({p: tuple(routes) for p, routes in by_prefix.items()}, longest)

    def _evolve(self, previous: RoutingTable) -> bool:
        """Index only the routes that changed since the previous table (a live edit of one
        route among 100,000 applies in milliseconds); False when a full build is better."""
        routes = {r.id: r for r in self.policy.routes}
        # unchanged objects are the very same ones (PolicyState parses only changed keys)
        gone = [c for rid, c in previous.routes.items() if routes.get(rid) is not c.config]
        added = len(routes) - (len(previous.routes) - len(gone))
        if len(gone) + added > self.REBUILD_SHARE * len(routes):
            return False
        self.routes = dict(previous.routes)
        self.index = previous.index.copy()
        for compiled in gone:
            del self.routes[compiled.config.id]
            self.index.remove(compiled)
        for rid, route in routes.items():
            if rid not in self.routes:
                self.routes[rid] = compiled = CompiledRoute.build(route)
                self.index.add(compiled)
        return True

    def decide(
        self,
        ingress: str,
        called: str,
        calling: str = "",
        conditions: Conditions | None = None,
        spreader: Spreader | None = None,
        explain: bool = False,
    ) -> pb.RouteDecision:
        """The decision for a call; `explain` adds its reasons in prose (for route tests:
        a call's decision on the bus has no reader for them)."""
        conditions = conditions or Conditions()
        spreader = spreader or Spreader()
        decision = pb.RouteDecision()
        notes: list[str] | None = [] if explain else None
        self._decide(decision, ingress, called, calling, conditions, spreader, notes)
        if notes is not None:
            if decision.result != pb.RouteDecision.ROUTED:
                notes.append(f"{decision.status}: {decision.reason}")
            decision.explain.extend(notes)
        return decision

    def _decide(
        self,
        decision: pb.RouteDecision,
        ingress: str,
        called: str,
        calling: str,
        conditions: Conditions,
        spreader: Spreader,
        explain: list[str] | None,
    ) -> pb.RouteDecision:
        trunk = self.trunks.get(ingress)
        if trunk is None:
            if explain is not None:
                explain.append(f"ingress trunk {ingress!r} is not in the policy")
            return _refuse(decision, NO_ROUTE_STATUS, f"unknown ingress trunk {ingress}")
        if not trunk.config.enabled:
            if explain is not None:
                explain.append(f"ingress trunk {ingress} is disabled (draining): no new calls")
            return _refuse(decision, NO_TRUNK_STATUS, f"trunk {ingress} is disabled")

        called = _normalize(trunk.inbound_rules, called, "called", "inbound_rules", explain)
        if calling:
            calling = _normalize(
                trunk.inbound_calling_rules, calling, "calling", "inbound_calling_rules", explain
            )
        decision.normalized_called = called
        decision.normalized_calling = calling

        usages = trunk.config.pstn_usages
        if not usages and explain is not None:
            explain.append(f"trunk {ingress} has no PSTN usages: it may not route calls")
        up: list[tuple[str, Route, str]] = []  # (trunk, route, usage), in the order to try
        down: list[tuple[str, Route, str]] = []
        taken: set[str] = set()
        matching = self.index.matching(called) if usages else []
        for usage in usages:
            routes = [r for r in matching if usage in r.config.pstn_usages]
            if not routes:
                if explain is not None:
                    explain.append(f"usage {usage}: no voice route matches {called}")
                continue
            if explain is not None:
                names = ", ".join(r.label for r in routes)
                explain.append(f"usage {usage}: {names} match {called}")
            if not decision.usage:
                decision.usage, decision.route = usage, routes[0].config.id
            for route in routes:
                usable = self._usable(route.config, ingress, conditions, taken, explain)
                for trunk_id in spreader.order(route.config, usable):
                    taken.add(trunk_id)
                    pick = (trunk_id, route.config, usage)
                    (down if trunk_id in conditions.down else up).append(pick)

        if not decision.usage:
            return _refuse(
                decision,
                NO_ROUTE_STATUS,
                f"no voice route for {called} in usages [{', '.join(usages)}] "
                f"(ms-diagnostics {NO_ROUTE_DIAGNOSTIC})",
            )
        if not up and not down:
            return _refuse(
                decision,
                NO_TRUNK_STATUS,
                f"no usable trunk on the routes for {called} "
                f"(ms-diagnostics {NO_TRUNK_DIAGNOSTIC})",
            )
        if down and explain is not None:
            explain.append(f"down trunks go last: {', '.join(pick[0] for pick in down)}")
        for trunk_id, config, usage in up:
            self._target(decision.targets.add(), trunk_id, config, usage, called, calling)
        for trunk_id, config, usage in down:
            target = decision.targets.add()
            self._target(target, trunk_id, config, usage, called, calling)
            target.trunk_down = True
        first = decision.targets[0]
        decision.usage, decision.route = first.usage, first.route
        decision.result = pb.RouteDecision.ROUTED
        if explain is not None:
            explain.append(
                "targets in order: " + ", ".join(f"{t.trunk} ({t.route})" for t in decision.targets)
            )
        return decision

    def _usable(
        self,
        route: Route,
        ingress: str,
        conditions: Conditions,
        taken: set[str],
        explain: list[str] | None,
    ) -> list[str]:
        usable = []
        for trunk_id in route.trunks:
            trunk = self.trunks[trunk_id].config
            active = conditions.active_calls.get(trunk_id, 0)
            if trunk_id == ingress:
                why = "it is the ingress trunk"
            elif not trunk.enabled:
                why = "it is disabled"
            elif trunk.max_concurrent_calls is not None and active >= trunk.max_concurrent_calls:
                why = f"it is at its limit ({active} of {trunk.max_concurrent_calls} calls)"
            elif trunk_id in taken:
                why = "it is already a target"
            else:
                usable.append(trunk_id)
                continue
            if explain is not None:
                explain.append(f"route {route.id}: trunk {trunk_id} skipped: {why}")
        return usable

    def _target(
        self,
        target: pb.RouteTarget,
        trunk_id: str,
        route: Route,
        usage: str,
        called: str,
        calling: str,
    ) -> None:
        trunk = self.trunks[trunk_id]
        if route.suppress_caller_id:  # the alternate number, or none at all (anonymous)
            calling = route.alternate_caller_id or ""
        called, _ = apply_rules(trunk.outbound_called_rules, called)
        if calling:
            calling, _ = apply_rules(trunk.outbound_calling_rules, calling)
        target.CopyFrom(trunk.target)
        target.called = called
        target.calling = calling
        target.usage = usage
        target.route = route.id
        target.suppress_caller_id = route.suppress_caller_id


def _normalize(
    rules: tuple[CompiledRule, ...],
    number: str,
    which: str,
    field_name: str,
    explain: list[str] | None,
) -> str:
    normalized, index = apply_rules(rules, number)
    if index is None:
        if rules and explain is not None:
            explain.append(f"{which} {number}: no rule of {field_name} matches; kept as is")
        return number
    rule = rules[index]
    if explain is not None:
        explain.append(
            f"{which} {number} -> {normalized} by {field_name}[{index}] "
            f"{rule.pattern.text} -> {rule.translation}"
        )
    return normalized


def _refuse(decision: pb.RouteDecision, status: int, reason: str) -> pb.RouteDecision:
    decision.result = (
        pb.RouteDecision.NO_ROUTE if status == NO_ROUTE_STATUS else pb.RouteDecision.NO_TRUNK
    )
    decision.status = status
    decision.reason = reason
    return decision


def decision_dict(decision: pb.RouteDecision) -> dict[str, Any]:
    """The route-test answer (Test-CsInterTrunkRouting's equivalent) as plain JSON data."""
    return {
        "result": RESULT_NAMES.get(decision.result, "unspecified"),
        "status": decision.status or None,
        "reason": decision.reason or None,
        "normalized_called": decision.normalized_called,
        "normalized_calling": decision.normalized_calling or None,
        "usage": decision.usage or None,
        "route": decision.route or None,
        "targets": [
            {
                "trunk": t.trunk,
                "edge": t.edge,
                "edges": list(t.edges),
                "called": t.called,
                "calling": t.calling or None,
                "usage": t.usage,
                "route": t.route,
                "suppress_caller_id": t.suppress_caller_id,
                "trunk_down": t.trunk_down,
            }
            for t in decision.targets
        ],
        "explain": list(decision.explain),
    }


def route_test(policy: Policy, trunk: str, called: str, calling: str, as_json: bool) -> str:
    """`tandem route-test`: the decision for one number, from a policy alone (all trunks up)."""
    decision = RoutingTable(policy).decide(trunk, called, calling, explain=True)
    if as_json:
        return json.dumps(decision_dict(decision), indent=2)
    return decision_text(decision)


def decision_text(decision: pb.RouteDecision) -> str:
    """The route-test answer for a terminal."""
    data = decision_dict(decision)
    lines = [
        f"result      {data['result']}" + (f" ({data['status']})" if data["status"] else ""),
        f"called      {data['normalized_called']}",
    ]
    if data["reason"]:
        lines.append(f"reason      {data['reason']}")
    if data["usage"]:
        lines.append(f"usage       {data['usage']}, route {data['route']}")
    for n, t in enumerate(data["targets"], 1):
        note = " (down)" if t["trunk_down"] else ""
        lines.append(
            f"target {n:<4} {t['trunk']} on {t['edge']}: called {t['called']}, "
            f"calling {t['calling'] or '-'}, usage {t['usage']}, route {t['route']}{note}"
        )
    lines += [f"  . {line}" for line in data["explain"]]
    return "\n".join(lines)
