"""OPTIONS health of the gateways, probed every second by edge-pstn: a gateway that answers
is up, one that stops answering is down after 3 failed probes, and up again after one good
probe. Read where operators read it: the KV bucket TANDEM_TRUNK_HEALTH and the edge's
`GET /v1/status`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tandem import bus
from tandem.pb import tandem_pb2 as pb
from tests.system.conftest import GW1, System, start_system
from tests.system.sipp import Sipp

PROBE_INTERVAL_S = 1.0
# up: the next probe; down: 3 probes, each waiting up to an interval for its answer
UP_WITHIN_S = 5 * PROBE_INTERVAL_S
DOWN_WITHIN_S = 12 * PROBE_INTERVAL_S


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("tandem"), options_interval_s=PROBE_INTERVAL_S)
    yield running
    running.up.stop()


def kv_health(system: System, trunk: str) -> pb.TrunkHealth | None:
    async def read() -> pb.TrunkHealth | None:
        nc = await bus.connect(system.config["nats"], "test-health")
        try:
            kv = await nc.jetstream().key_value(bus.TRUNK_HEALTH_BUCKET)
            try:
                entry = await kv.get(trunk)
            except Exception:  # no key yet: not probed
                return None
            return pb.TrunkHealth.FromString(entry.value or b"")
        finally:
            await nc.close()

    return asyncio.run(read())


def status_up(system: System, trunk: str) -> bool:
    return bool(edge_status(system, trunk)["up"])


def edge_status(system: System, trunk: str) -> dict[str, object]:
    """The trunk as edge-pstn's status page shows it, live: up, and the last probe's result."""
    status = httpx.get(f"{system.edge_api('edge-pstn')}/v1/status").json()
    return dict(next(t for t in status["trunks"] if t["id"] == trunk))


def wait_status(system: System, trunk: str, up: bool, health: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while (shown := edge_status(system, trunk))["up"] != up or shown["health"] != health:
        if time.monotonic() > deadline:
            raise AssertionError(f"{trunk} not {up} / {health!r} in {within_s}s: {shown}")
        time.sleep(0.2)


def wait_health(
    system: System, trunk: str, up: bool, reason: str, within_s: float
) -> pb.TrunkHealth:
    """The trunk's health in KV once it is `up` for `reason` (KV changes with the state)."""
    deadline = time.monotonic() + within_s
    while True:
        health = kv_health(system, trunk)
        if health is not None and (health.up, health.reason) == (up, reason):
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"{trunk} not {'up' if up else 'down'} in {within_s}s: {health}")
        time.sleep(0.2)


def responder(system: System, scenario: str, workdir: Path) -> Sipp:
    """gw1 answering probes: each OPTIONS is one SIPp call, bounded by -m and -timeout."""
    port = system.peer_port(GW1)
    return Sipp(scenario, workdir, ip=GW1, port=port, calls=100, timeout_s=60).start()


def test_a_gateway_goes_down_and_up(system: System, sipp_dir: Path) -> None:
    alive = responder(system, "uas_options.xml", sipp_dir)
    wait_status(system, "pstn-gw1", True, "200 OK", UP_WITHIN_S)
    # KV has the first report: up, maybe with a probe missed before the responder started
    health = kv_health(system, "pstn-gw1")
    assert health is not None and health.up and health.edge == "edge-pstn", health
    answered = alive.stop()
    assert answered.received("OPTIONS"), answered.describe()

    started = time.monotonic()
    health = wait_health(system, "pstn-gw1", False, "no answer", DOWN_WITHIN_S)
    assert health.failed_probes >= 3
    assert time.monotonic() - started >= 2 * PROBE_INTERVAL_S  # not at the first miss
    assert status_up(system, "pstn-gw1") is False

    out_of_service = responder(system, "uas_options_unavailable.xml", sipp_dir)
    time.sleep(3 * PROBE_INTERVAL_S)  # 503 is a failed probe: still down
    health = kv_health(system, "pstn-gw1")
    assert health is not None and not health.up, health
    assert status_up(system, "pstn-gw1") is False
    assert out_of_service.stop().received("OPTIONS")

    back = responder(system, "uas_options.xml", sipp_dir)
    health = wait_health(system, "pstn-gw1", True, "200 OK", UP_WITHIN_S)
    assert health.failed_probes == 0
    assert status_up(system, "pstn-gw1") is True
    back.stop()


def test_a_gateway_that_never_answers_is_down(system: System) -> None:
    wait_health(system, "pstn-gw2", False, "no answer", DOWN_WITHIN_S)
    assert status_up(system, "pstn-gw2") is False
