"""The shedding decision: smoothed lag, the socket's queue and the routing backlog, never a
single hiccup."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tandem.edge.overload import LAG_S, PROBE_LOST_S, QUEUE_S, ROUTING_S, Overload
from tandem.edge.transport import Transports
from tests.conftest import free_port


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


def test_the_socket_queue_sheds_while_a_probe_waits_in_it() -> None:
    load = Overload()
    assert load.probe_due(10.0)
    assert not load.probe_due(10.1)  # one out at a time
    load.probe_arrived(10.05)
    assert load.queue == pytest.approx(0.05) and not load.refuses(0.0)
    assert load.probe_due(11.0)
    assert not load.probe_due(11.0 + QUEUE_S * 2)  # still out: the wait is at least its age
    assert load.refuses(0.0) and load.figures(0.0)["queue_ms"] == QUEUE_S * 2000
    load.probe_arrived(11.0 + QUEUE_S * 3)
    assert load.refuses(0.0)
    assert load.probe_due(12.0)
    load.probe_arrived(12.001)
    assert not load.refuses(0.0)  # drained: calls are taken again


def test_a_probe_dropped_by_a_full_socket_counts_as_its_whole_wait() -> None:
    load = Overload()
    assert load.probe_due(0.0)
    assert load.probe_due(PROBE_LOST_S)  # never came back: another goes
    assert load.queue == PROBE_LOST_S and load.refuses(0.0)


async def test_the_probe_waits_behind_what_the_kernel_holds_for_the_edge() -> None:
    """A real socket: while the loop is busy the probe waits in the kernel, and that wait
    is what the edge measures; it never reaches the SIP layer."""
    loop = asyncio.get_running_loop()
    load = Overload()
    got: list[bytes] = []
    transports = Transports(
        "127.0.0.1",
        free_port(kind=socket.SOCK_DGRAM),
        lambda data, peer: got.append(data),
        lambda peer: None,
        probed=lambda: load.probe_arrived(loop.time()),
    )
    await transports.start()
    try:
        assert load.probe_due(loop.time())
        transports.probe()
        loop.call_soon(time.sleep, 0.3)  # the loop is busy meanwhile: the datagram waits
        await asyncio.sleep(0.45)
        assert 0.3 <= load.queue < 0.45 and load.refuses(0.0)
        assert got == []
    finally:
        await transports.stop()
