"""The routing policy shared by the router, the edges, `tandem up` and the config loader:
its objects (trunks, routes, rules), number patterns, and its store in TANDEM_CONFIG."""

from tandem.policy.model import Policy, Route, Rule, Source, Trunk, Usage

__all__ = ["Policy", "Route", "Rule", "Source", "Trunk", "Usage"]
