"""Two simulated trunks wired straight to each other (no tandem): a PBX and a PSTN gateway."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
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


def rtp_ports() -> list[int]:
    # pjsua skips ports in use inside the range, so a random range only has to be roomy
    first = random.randrange(20000, 60000, 2)
    return [first, first + 198]


def direct_config() -> dict[str, Any]:
    pbx_sip = f"{PBX_HOST}:{free_port(PBX_HOST, socket.SOCK_DGRAM)}"
    gateway_sip = f"{GATEWAY_HOST}:{free_port(GATEWAY_HOST, socket.SOCK_DGRAM)}"
    return {
        "pbxs": [
            {
                "id": "hq",
                "sip": pbx_sip,
                "trunk": gateway_sip,
                "control": f"127.0.0.1:{free_port()}",
                "rtp_ports": rtp_ports(),
                "number_prefix": "+1425555",
                "extensions": ["0100", "0101"],
                "answer_after_s": 0.2,
            }
        ],
        "gateways": [
            {
                "id": "gw",
                "sip": gateway_sip,
                "trunk": pbx_sip,
                "control": f"127.0.0.1:{free_port()}",
                "rtp_ports": rtp_ports(),
                "answer_after_s": 0.2,
                "rules": [
                    {"pattern": "0486$", "reply": 486},
                    {"pattern": "0503$", "reply": 503},
                    {"pattern": "0000$", "reply": 180},
                ],
            }
        ],
    }


@dataclass
class Direct:
    pbx: SimClient
    gateway: SimClient


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Direct]:
    """One PBX and one gateway for the module's tests; each test places its own calls."""
    folder: Path = tmp_path_factory.mktemp("sims")
    path = folder / "sim.yaml"
    path.write_text(yaml.safe_dump(direct_config()))
    sims = load_sims(path)
    pbx = SimProcess("pbx", sims.pick("pbx", "hq"), path, folder / "pbx.log", 4)
    gateway = SimProcess("gateway", sims.pick("gateway", "gw"), path, folder / "gw.log", 4)
    try:
        for sim in (pbx.launch(), gateway.launch()):
            sim.wait_ready()
        yield Direct(pbx.client, gateway.client)
    finally:
        pbx.terminate()
        gateway.terminate()
        pbx.stop()
        gateway.stop()
