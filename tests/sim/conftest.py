"""Simulated trunks wired straight to each other (no tandem): PBXs and PSTN gateways."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tandem.sim.client import SimClient, SimProcess
from tandem.sim.config import load_sims
from tests.conftest import free_port

PBX_HOST = "127.0.0.2"
GATEWAY_HOST = "127.0.0.3"
BRANCH_HOST = "127.0.0.4"


def rtp_ports() -> list[int]:
    # pjsua skips ports in use inside the range, so a random range only has to be roomy
    first = random.randrange(20000, 60000, 2)
    return [first, first + 198]


def sip_address(host: str) -> str:
    return f"{host}:{free_port(host, socket.SOCK_DGRAM)}"


def sim(sim_id: str, sip: str, trunk: str, **more: Any) -> dict[str, Any]:
    return {
        "id": sim_id,
        "sip": sip,
        "trunk": trunk,
        "control": f"127.0.0.1:{free_port()}",
        "rtp_ports": rtp_ports(),
        "answer_after_s": 0.2,
        **more,
    }


def hq(sip: str, trunk: str, **more: Any) -> dict[str, Any]:
    return sim("hq", sip, trunk, number_prefix="+1425555", extensions=["0100", "0101"], **more)


def direct_config() -> dict[str, Any]:
    pbx_sip, gateway_sip = sip_address(PBX_HOST), sip_address(GATEWAY_HOST)
    rules = [
        {"pattern": "0486$", "reply": 486},
        {"pattern": "0503$", "reply": 503},
        {"pattern": "0000$", "reply": 180},
    ]
    return {
        "pbxs": [hq(pbx_sip, gateway_sip)],
        "gateways": [sim("gw", gateway_sip, pbx_sip, rules=rules)],
    }


@contextmanager
def running(folder: Path, config: dict[str, Any]) -> Iterator[dict[str, SimClient]]:
    """Every sim in `config` as a process (pjsip log level 4 in folder/<id>.log)."""
    path = folder / "sim.yaml"
    path.write_text(yaml.safe_dump(config))
    sims = load_sims(path)
    processes = [
        SimProcess(kind, s, path, folder / f"{s.id}.log", 4)
        for kind, group in (("pbx", sims.pbxs), ("gateway", sims.gateways))
        for s in group
    ]
    try:
        for process in processes:
            process.launch()
        for process in processes:
            process.wait_ready()
        yield {p.sim.id: p.client for p in processes}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.stop()


@dataclass
class Direct:
    pbx: SimClient
    gateway: SimClient


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Direct]:
    """One PBX and one gateway for the module's tests; each test places its own calls."""
    with running(tmp_path_factory.mktemp("sims"), direct_config()) as sims:
        yield Direct(sims["hq"], sims["gw"])


def branch(sip: str, trunk: str, **more: Any) -> dict[str, Any]:
    return sim("branch", sip, trunk, number_prefix="+1206555", extensions=["0150", "0151"], **more)


def trio_config() -> dict[str, Any]:
    """Three trunks in a line, each with different 100rel and session timer settings."""
    hq_sip, gw_sip, branch_sip = (sip_address(h) for h in (PBX_HOST, GATEWAY_HOST, BRANCH_HOST))
    early_media = {"pattern": "0183$", "reply": 183}  # until a test answers it
    return {
        "pbxs": [
            hq(hq_sip, gw_sip, prack="mandatory", session_timer="optional", session_expires_s=120),
            branch(branch_sip, gw_sip),  # pjsua's defaults: no timers, 100rel only if required
        ],
        "gateways": [
            sim(
                "gw",
                gw_sip,
                branch_sip,
                prack="optional",
                progress=183,
                session_timer="optional",
                rules=[early_media],
            )
        ],
    }


@dataclass
class Trio:
    """hq's phones call out through gw; gw's calls (and transfers) go to branch."""

    hq: SimClient
    gw: SimClient
    branch: SimClient
    sip: dict[str, str]  # each sim's SIP host:port, by id


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    config = trio_config()
    sip = {s["id"]: s["sip"] for s in [*config["pbxs"], *config["gateways"]]}
    with running(tmp_path_factory.mktemp("sims"), config) as sims:
        yield Trio(sims["hq"], sims["gw"], sims["branch"], sip)
