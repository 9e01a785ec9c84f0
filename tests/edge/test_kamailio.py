"""A real carrier SBC in front of the callee: Kamailio with its `tls` and `auth` modules
(Debian kamailio-tls-modules) takes calls over mutual TLS only and challenges every
INVITE; tandem reaches it by its FQDN, answers the challenge and completes the call to a
SIPp callee behind it, the ACK and BYE following its Record-Route over the same TLS
connection. A wrong password gets one retry, then the call fails over with the reason."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.edge.certs import Ca
from tests.edge.conftest import LOCAL, MakeSystem, System
from tests.edge.dnsmasq import Dnsmasq
from tests.edge.phones import SDP
from tests.edge.test_dns import dns, leg_failures
from tests.system.sipp import Sipp, udp_bound

KAMAILIO = "/usr/sbin/kamailio"
TLS_MODULE = "/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so"
CONFIG = REPO / "tests" / "edge" / "kamailio-carrier.cfg"
SBC_IP, CALLEE_IP = "127.0.0.6", "127.0.0.7"
SBC_NAME = "sbc.carrier.test"
PASSWORD = "k4mailio-carrier-pw"
START_S = 15.0


def tcp_listening(ip: str, port: int) -> bool:
    """Whether a socket listens on ip:port (read from /proc, without connecting to it)."""
    wanted = "{:08X}:{:04X}".format(int.from_bytes(bytes(map(int, ip.split("."))), "little"), port)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            return True
    return False


@dataclass
class Carrier:
    tls_port: int
    log: Path
    callee: Sipp
    edge_tls: dict[str, str]  # what the edge presents, from the CA the carrier trusts

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def carrier(tmp_path: Path) -> Iterator[Carrier]:
    for path, package in ((KAMAILIO, "kamailio"), (TLS_MODULE, "kamailio-tls-modules")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: install the Debian package {package}")
    ca = Ca(tmp_path / "pki")
    sbc, edge = ca.issue("sbc", [SBC_NAME]), ca.issue("edge", ["edge.tandem.test"])
    tls_cfg = tmp_path / "tls.cfg"
    tls_cfg.write_text(
        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = yes\n"
        f"require_certificate = yes\nprivate_key = {sbc.key}\ncertificate = {sbc.cert}\n"
        f"ca_list = {ca.bundle}\n\n[client:default]\nmethod = TLSv1.2+\nverify_certificate = no\n"
    )
    callee = Sipp(
        "uas_answer.xml", tmp_path, ip=CALLEE_IP, extra=("-default_behaviors", "all,-abortunexp")
    ).start()
    tls_port, udp_port = free_port(SBC_IP), free_port(SBC_IP, socket.SOCK_DGRAM)
    rundir = tmp_path / "kamailio"
    rundir.mkdir()
    log = tmp_path / "kamailio.log"
    argv = [
        shutil.which("kamailio") or KAMAILIO, "-f", str(CONFIG), "-DD", "-E",
        "-l", f"tls:{SBC_IP}:{tls_port}", "-l", f"udp:{SBC_IP}:{udp_port}",
        "-A", f'CALLEE="sip:{CALLEE_IP}:{callee.port}"', "-A", f'PASSWORD="{PASSWORD}"',
        "-A", f'TLS_CFG="{tls_cfg}"', "-Y", str(rundir), "-P", str(rundir / "kamailio.pid"),
        "-m", "64", "-M", "8",
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_S
    while not (tcp_listening(SBC_IP, tls_port) and udp_bound(SBC_IP, udp_port)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"kamailio did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    edge_tls = {"cert": str(edge.cert), "key": str(edge.key), "ca": str(ca.bundle)}
    try:
        yield Carrier(tls_port, log, callee, edge_tls)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        Sipp.stop_all()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq([f"--host-record={SBC_NAME},{SBC_IP}"], tmp_path / "dnsmasq.log")
    server.start()
    yield server
    server.stop()


async def through_carrier(
    make_system: MakeSystem,
    carrier: Carrier,
    dnsmasq: Dnsmasq,
    monkeypatch: pytest.MonkeyPatch,
    password: str,
) -> System:
    """gw1 is the carrier, at its FQDN over TLS, with `password` for its challenges."""
    monkeypatch.setenv("TANDEM_TEST_CARRIER_PASSWORD", password)
    return await make_system(
        dns(dnsmasq.address),
        edges={"edge-b": {"tls": carrier.edge_tls}},
        gw1={
            "peer": f"{SBC_NAME}:{carrier.tls_port}",
            "transport": "tls",
            "sources": [SBC_IP],
            "auth": {"username": "tandem", "password_env": "TANDEM_TEST_CARRIER_PASSWORD"},
        },
    )


async def test_a_call_through_a_carrier_that_requires_tls_and_challenges_every_invite(
    make_system: MakeSystem, carrier: Carrier, dnsmasq: Dnsmasq, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = await through_carrier(make_system, carrier, dnsmasq, monkeypatch, PASSWORD)
    pbx = system.pbx
    invite = pbx.invite(system.a, LOCAL)
    answer = await pbx.response(200, within=10)
    assert answer.body.startswith(b"v=0") and b"callee" in answer.body
    pbx.in_dialog(invite, answer, "ACK", system.a)
    pbx.in_dialog(invite, answer, "BYE", system.a)
    assert (await pbx.final("BYE")).status == 200
    result = await asyncio.to_thread(carrier.callee.wait)
    assert result.returncode == 0, result.describe()
    [relayed] = result.received("INVITE")
    assert "Proxy-Authorization" not in relayed  # the carrier consumed our credentials
    assert len(result.received("ACK")) == 1 and len(result.received("BYE")) == 1
    log = carrier.text()
    assert "challenging INVITE" in log
    assert "authenticated INVITE from tandem at 127.0.0.1 over tls" in log
    events = await system.call_events()
    assert leg_failures(events) == []
    assert PASSWORD not in log.replace(f'PASSWORD="{PASSWORD}"', "")


async def test_a_wrong_password_for_the_carrier_fails_over_with_the_reason(
    make_system: MakeSystem,
    carrier: Carrier,
    dnsmasq: Dnsmasq,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tandem")
    system = await through_carrier(make_system, carrier, dnsmasq, monkeypatch, "not-the-password")
    pbx, gw2 = system.pbx, system.gw2
    pbx.invite(system.a, LOCAL)
    out, addr = await gw2.request("INVITE", within=10)
    gw2.answer(out, 200, addr, body=SDP)
    assert (await pbx.final()).status == 200
    [failed] = leg_failures(await system.call_events(last="answered"))
    assert (failed.trunk, failed.failure, failed.received_status) == ("gw1", "auth", 407)
    assert "credentials refused" in failed.reason
    assert carrier.text().count("challenging INVITE") == 2  # one retry, no loop
    assert "not-the-password" not in caplog.text
