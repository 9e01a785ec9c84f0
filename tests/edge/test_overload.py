"""The shedding decision: smoothed lag and the routing backlog, never a single hiccup."""

from __future__ import annotations

from tandem.edge.overload import LAG_S, ROUTING_S, Overload


def test_one_late_turn_of_the_loop_sheds_nothing() -> None:
    load = Overload()
    load.sample(0.4)  # a garbage collection, once
    assert not load.refuses(0.0)
    for _ in range(3):
        load.sample(0.0)
    assert load.lag < LAG_S


def test_a_loop_that_stays_late_sheds_until_it_recovers() -> None:
    load = Overload()
    for _ in range(5):
        load.sample(0.25)
    assert load.refuses(0.0)
    for _ in range(10):
        load.sample(0.01)
    assert not load.refuses(0.0)


def test_a_routing_backlog_sheds() -> None:
    load = Overload()
    assert not load.refuses(ROUTING_S / 2)
    assert load.refuses(ROUTING_S * 2)


def test_the_figures_show_each_signal_against_its_limit() -> None:
    load = Overload()
    for _ in range(20):
        load.sample(0.05)
    figures = load.figures(0.2)
    assert (
        figures["lag_limit_ms"] == LAG_S * 1000 and figures["routing_limit_ms"] == ROUTING_S * 1000
    )
    assert 40 < figures["lag_ms"] < 50 and figures["routing_wait_ms"] == 200.0
