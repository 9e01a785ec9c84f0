"""One running tandem for a module of system tests, with every trunk on its own loopback
address: the PBXs hq (127.0.0.2) and branch (127.0.0.4) on edge-pbx, the PSTN gateways
gw1 (127.0.0.3) and gw2 (127.0.0.5) on edge-pstn, tried in that order.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, sip_port
from tests.support import TandemUp, system_config
from tests.system.sipp import Sipp

HQ, GW1, BRANCH, GW2 = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
STRANGER = "127.0.0.9"  # no trunk admits it
FAILOVER_TIMER_S = 2.0
CDR_WAIT_S = 10.0

E164_IN = [{"pattern": r"^1?(\d{10})$", "translation": "+1$1"}]
E164_OUT = [{"pattern": r"^\+1(\d{10})$", "translation": "1$1"}]


def gateway(trunk_id: str, peer: str, **overrides: Any) -> dict[str, Any]:
    return {
        "id": trunk_id,
        "edge": "edge-pstn",
        "peer": peer,
        "sources": [peer.split(":")[0]],
        "pstn_usages": ["Internal"],
        "inbound_rules": E164_IN,
        "outbound_called_rules": E164_OUT,
        "failover_timer_s": FAILOVER_TIMER_S,
        "options_interval_s": 0,  # SIPp trunks would take a probe for a new call
        **overrides,
    }


def policy(peers: dict[str, str], **gateway_overrides: Any) -> dict[str, Any]:
    """The example's policy with a second gateway behind the first on every PSTN route."""
    pbx = {"edge": "edge-pbx", "options_interval_s": 0}
    return {
        "trunks": [
            {
                "id": "pbx-hq",
                "peer": peers[HQ],
                "sources": [HQ],
                "pstn_usages": ["Internal", "Local", "LongDistance"],
                "inbound_rules": [{"pattern": r"^(\d{4})$", "translation": "+1425555$1"}],
                **pbx,
            },
            {
                "id": "pbx-branch",
                "peer": peers[BRANCH],
                "sources": [BRANCH],
                "pstn_usages": ["Internal", "Local"],
                "inbound_rules": [{"pattern": r"^(01\d{2})$", "translation": "+1206555$1"}],
                **pbx,
            },
            gateway("pstn-gw1", peers[GW1], **gateway_overrides),
            gateway("pstn-gw2", peers[GW2], **gateway_overrides),
        ],
        "routes": [
            {
                "id": "to-hq",
                "number_pattern": r"^\+14255550\d{3}$",
                "pstn_usages": ["Internal"],
                "trunks": ["pbx-hq"],
                "priority": 1,
            },
            {
                "id": "to-branch",
                "number_pattern": r"^\+120655501\d{2}$",
                "pstn_usages": ["Internal"],
                "trunks": ["pbx-branch"],
                "priority": 1,
            },
            {
                "id": "redmond-local",
                "number_pattern": r"^\+1(425|206)\d{7}$",
                "pstn_usages": ["Local"],
                "trunks": ["pstn-gw1", "pstn-gw2"],
                "spread": "ordered",
                "priority": 1,
            },
        ],
    }


@dataclass
class System:
    up: TandemUp
    config: dict[str, Any]
    workdir: Path
    peers: dict[str, str]  # trunk address -> the ip:port the trunk's SIPp answers on

    def peer_port(self, ip: str) -> int:
        return int(self.peers[ip].split(":")[1])

    def edge_sip(self, edge_id: str) -> str:
        return next(e["sip"] for e in self.config["edges"] if e["id"] == edge_id)

    def edge_api(self, edge_id: str) -> str:
        return "http://" + next(e["api"] for e in self.config["edges"] if e["id"] == edge_id)

    @property
    def pbx_edge(self) -> str:
        return self.edge_sip("edge-pbx")

    @property
    def pstn_edge(self) -> str:
        return self.edge_sip("edge-pstn")

    @property
    def callstate_api(self) -> str:
        return "http://" + self.config["callstate"]["api"]

    def cdr(self, sip_call_id: str, within_s: float = CDR_WAIT_S) -> dict[str, Any]:
        """The CDR callstate wrote for the call that had this SIP Call-ID on one of its legs."""
        return self.cdrs(sip_call_id, 1, within_s)[0]

    def cdrs(
        self, sip_call_id: str, count: int, within_s: float = CDR_WAIT_S
    ) -> list[dict[str, Any]]:
        """The `count` CDRs of calls with this SIP Call-ID (a caller may use one Call-ID for
        a second INVITE, after a 422), oldest first."""
        deadline = time.monotonic() + within_s
        while True:
            cdrs = httpx.get(f"{self.callstate_api}/v1/cdrs", params={"limit": 500}).json()
            found = [dict(c) for c in cdrs["cdrs"] if sip_call_id in c["sip_call_ids"]]
            if len(found) >= count:
                return sorted(found, key=lambda c: int(c["invite_unix_ms"]))
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} CDRs for {sip_call_id}: {cdrs}")
            time.sleep(0.2)


def trunk(system: System, ip: str, scenario: str, workdir: Path, **kwargs: Any) -> Sipp:
    """A trunk's SIPp, started where the config's peer says the trunk answers."""
    return Sipp(scenario, workdir, ip=ip, port=system.peer_port(ip), **kwargs).start()


def trunk_peers(*ips: str) -> dict[str, str]:
    """Where each trunk address's SIPp answers: a free port, not 5060, so that nothing else
    on the machine reaches them."""
    return {ip: f"{ip}:{free_port(ip, socket.SOCK_DGRAM)}" for ip in ips}


def run_system(workdir: Path, peers: dict[str, str], config: dict[str, Any]) -> System:
    """tandem up with this config, each edge on a port free for both UDP and TCP."""
    for edge in config["edges"]:
        edge["sip"] = f"127.0.0.1:{sip_port()}"
    up = TandemUp(config, workdir)
    up.start()
    return System(up, config, workdir, peers)


def start_system(
    workdir: Path, extra_trunks: tuple[str, ...] = (), **gateway_overrides: Any
) -> System:
    """tandem up with the policy above; each of `extra_trunks` (addresses) gets an edge and
    a trunk of its own, with no route to it."""
    peers = trunk_peers(HQ, GW1, BRANCH, GW2, *extra_trunks)
    config = system_config(f"nats://127.0.0.1:{free_port()}", **policy(peers, **gateway_overrides))
    for n, ip in enumerate(extra_trunks, start=1):
        config["edges"].append({"id": f"edge-x{n}", "api": f"127.0.0.1:{free_port()}"})
        config["trunks"].append(
            {"id": f"trunk-x{n}", "edge": f"edge-x{n}", "peer": peers[ip], "sources": [ip]}
            | {"pstn_usages": ["Internal"], "options_interval_s": 0}
        )
    return run_system(workdir, peers, config)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("tandem")
    running = start_system(workdir)
    yield running
    running.up.stop()


@pytest.fixture
def sipp_dir(tmp_path: Path) -> Iterator[Path]:
    """Where a test's SIPp traces go; SIPp processes a failed test left running are killed."""
    yield tmp_path
    Sipp.stop_all()
