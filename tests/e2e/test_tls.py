"""Real user agents over TLS with certificates both ways: the PBX hq (pjsua2) calls into
edge-pbx's TLS listener presenting its client certificate (the trunk admits it by the
names in it), edge-pstn reaches the gateway gw1 by its FQDN (dnsmasq) over mutual TLS,
and the call's RTP flows both ways on the bypassed media path."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import HOSTS, World, running_world
from tests.e2e.test_calls import call_up
from tests.edge.certs import Ca, Issued
from tests.edge.dnsmasq import Dnsmasq

pytestmark = pytest.mark.e2e

GW1_NAME, HQ_NAME, EDGE_NAME = "gw1.tandem.test", "hq.tandem.test", "edge.tandem.test"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("tls")
    ca = Ca(folder / "pki")
    edge = ca.issue("edge", [EDGE_NAME], ips=("127.0.0.1",))
    hq = ca.issue("hq", [HQ_NAME], ips=(HOSTS["hq"],))
    gw1 = ca.issue("gw1", [GW1_NAME])
    dnsmasq = Dnsmasq([f"--host-record={GW1_NAME},{HOSTS['gw1']}"], folder / "dnsmasq.log")
    dnsmasq.start()
    edge_tls = {"cert": str(edge.cert), "key": str(edge.key), "ca": str(ca.bundle)}
    hq_tls_port, gw1_tls_port, edge_tls_port = (
        free_port(HOSTS["hq"]),
        free_port(HOSTS["gw1"]),
        free_port(),
    )

    def sim_tls(port: int, issued: Issued) -> dict[str, object]:
        return {
            "port": port,
            "cert": str(issued.cert),
            "key": str(issued.key),
            "ca": str(ca.bundle),
        }

    try:
        with running_world(
            folder,
            sims={
                "hq": {"tls": sim_tls(hq_tls_port, hq), "trunk": f"127.0.0.1:{edge_tls_port}"},
                "gw1": {"tls": sim_tls(gw1_tls_port, gw1)},
            },
            trunks={
                "pbx-hq": {
                    "transport": "tls",
                    "peer": f"{HOSTS['hq']}:{hq_tls_port}",
                    "tls_names": [HQ_NAME],
                },
                "pstn-gw1": {"transport": "tls", "peer": f"{GW1_NAME}:{gw1_tls_port}"},
            },
            edges={
                "edge-pbx": {"sip_tls": f"127.0.0.1:{edge_tls_port}", "tls": edge_tls},
                "edge-pstn": {"tls": edge_tls},
            },
            settings={"dns": {"nameservers": [f"127.0.0.1:{dnsmasq.port}"]}},
        ) as world:
            yield world
    finally:
        dnsmasq.stop()


def test_a_call_over_tls_both_ways_carries_rtp_both_ways(secure: World) -> None:
    out, inbound = call_up(secure.hq, secure.gw1, "0100", "+14255551234")
    invite = secure.gw1.sip_messages(inbound)[0]
    assert invite.method == "INVITE" and invite.direction == "in"
    headers = {name.lower(): value for name, value in invite.headers}
    assert headers["via"].startswith("SIP/2.0/TLS ")
    assert invite.start_line.startswith(f"INVITE sip:14255551234@{GW1_NAME}:")  # E.164 out
    assert invite.start_line.split()[1].endswith(";transport=tls")
    assert headers["contact"].endswith(";transport=tls>")
    sent = secure.hq.sip_messages(out)[0]
    assert sent.direction == "out" and dict(sent.headers)["Via"].startswith("SIP/2.0/TLS ")
    secure.hq.hangup(out)
    secure.hq.wait_call(out, lambda c: c.ended, "end")
    secure.gw1.wait_call(inbound, lambda c: c.ended, "BYE over TLS through tandem")


def test_the_gateway_trunk_is_up_by_its_tls_probes(secure: World) -> None:
    edge = next(e for e in secure.tandem.config["edges"] if e["id"] == "edge-pstn")
    deadline = time.monotonic() + 20
    while True:
        status = httpx.get(f"http://{edge['api']}/v1/status", timeout=2).json()
        gw1 = next(t for t in status["trunks"] if t["id"] == "pstn-gw1")
        if gw1["health"] != "not probed yet" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (gw1["transport"], gw1["up"], gw1["health"]) == ("tls", True, "200 OK")
    assert "certificate verify failed" not in secure.tandem.output()
