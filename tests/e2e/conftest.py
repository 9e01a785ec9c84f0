"""The whole system with real user agents on its trunks: `tandem up` between simulated PBXs
and PSTN gateways (pjsua2), each trunk on its own loopback address.

The example deployment's policy, with a second gateway: PBX hq (extensions 0100-0101,
+1 425 555 01xx) and PBX branch (0150-0151, +1 206 555 01xx) on edge-pbx; gateways gw1
and gw2 on edge-pstn. Local numbers (+1 425/206) go out through gw1, then gw2; gw1 fails
(503) numbers ending 0503, so those calls fail over to gw2.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tandem.sim.client import SimClient, SimProcess
from tandem.sim.config import Kind, load_sims
from tests.conftest import NatsServer, free_port
from tests.support import TandemUp, system_config

HOSTS = {"hq": "127.0.0.2", "gw1": "127.0.0.3", "branch": "127.0.0.4", "gw2": "127.0.0.5"}


def rtp_ports() -> list[int]:
    first = random.randrange(20000, 60000, 2)  # pjsua skips ports in use within the range
    return [first, first + 198]


def sim_address(name: str) -> str:
    return f"{HOSTS[name]}:{free_port(HOSTS[name], socket.SOCK_DGRAM)}"


def sims_config(
    edge_pbx: str, edge_pstn: str, sips: dict[str, str], tweaks: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    def sim(name: str, trunk: str, **more: Any) -> dict[str, Any]:
        return {
            "id": name,
            "sip": sips[name],
            "trunk": trunk,
            "control": f"127.0.0.1:{free_port()}",
            "rtp_ports": rtp_ports(),
            "answer_after_s": 0.2,
            **more,
            **tweaks.get(name, {}),
        }

    return {
        "pbxs": [
            sim("hq", edge_pbx, number_prefix="+1425555", extensions=["0100", "0101"]),
            sim("branch", edge_pbx, number_prefix="+1206555", extensions=["0150", "0151"]),
        ],
        "gateways": [
            sim("gw1", edge_pstn, rules=[{"pattern": "0503$", "reply": 503}]),
            sim("gw2", edge_pstn),
        ],
    }


def tandem_config(
    nats_url: str, sips: dict[str, str], tweaks: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    config = system_config(nats_url)
    first = random.randrange(30000, 60000, 100)  # a local rtpengine's ports, if one runs
    config["media"] = {
        "rtpengine": [f"127.0.0.1:{free_port(kind=socket.SOCK_DGRAM)}"],
        "port_min": first,
        "port_max": first + 99,
    }
    trunks = {t["id"]: t for t in config["trunks"]}
    for trunk_id, name in (("pbx-hq", "hq"), ("pbx-branch", "branch"), ("pstn-gw1", "gw1")):
        trunks[trunk_id].update(peer=sips[name], sources=[HOSTS[name]])
    gw2 = dict(trunks["pstn-gw1"], id="pstn-gw2", peer=sips["gw2"], sources=[HOSTS["gw2"]])
    config["trunks"].append(gw2)
    for trunk in config["trunks"]:
        trunk.update(tweaks.get(trunk["id"], {}))
    for route in config["routes"]:
        if "pstn-gw1" in route["trunks"]:
            route.update(trunks=["pstn-gw1", "pstn-gw2"], spread="ordered")
    return config


@dataclass
class World:
    hq: SimClient
    branch: SimClient
    gw1: SimClient
    gw2: SimClient
    tandem: TandemUp
    processes: dict[str, SimProcess] = field(default_factory=dict)


@contextlib.contextmanager
def running_world(
    folder: Path,
    sims: dict[str, dict[str, Any]] | None = None,
    trunks: dict[str, dict[str, Any]] | None = None,
    edges: dict[str, dict[str, Any]] | None = None,
    settings: dict[str, Any] | None = None,
) -> Iterator[World]:
    """tandem and the four sims; `sims`, `trunks` and `edges` change their settings by name,
    `settings` tandem's top-level ones (dns)."""
    nats = NatsServer(folder / "nats")
    nats.start()
    sips = {name: sim_address(name) for name in HOSTS}
    config = tandem_config(nats.url, sips, trunks or {}) | (settings or {})
    for edge in config["edges"]:
        edge.update((edges or {}).get(edge["id"], {}))
    edges = {e["id"]: e["sip"] for e in config["edges"]}
    sims_path = folder / "sim.yaml"
    settings = sims_config(edges["edge-pbx"], edges["edge-pstn"], sips, sims or {})
    sims_path.write_text(yaml.safe_dump(settings))
    loaded = load_sims(sims_path)
    kinds: dict[str, Kind] = {"hq": "pbx", "branch": "pbx", "gw1": "gateway", "gw2": "gateway"}
    processes = {
        name: SimProcess(kind, loaded.pick(kind, name), sims_path, folder / f"{name}.log", 4)
        for name, kind in kinds.items()
    }
    tandem = TandemUp(config, folder)
    try:
        for process in processes.values():
            process.launch()
        for process in processes.values():
            process.wait_ready()
        tandem.start()
        yield World(
            processes["hq"].client,
            processes["branch"].client,
            processes["gw1"].client,
            processes["gw2"].client,
            tandem,
            processes,
        )
    finally:
        if tandem.proc is not None:
            tandem.stop()
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.stop()
        nats.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("e2e")) as running:
        yield running
