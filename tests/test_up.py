"""`tandem up`: the whole system from one config, every API healthy, nothing left behind."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tandem import bus
from tests.conftest import REPO, free_port, free_port_block
from tests.rtpengine import ng_ping
from tests.support import TandemUp, system_config


def urls(config: dict) -> list[str]:  # type: ignore[type-arg]
    apis = [config["router"]["api"], config["callstate"]["api"]]
    apis += [edge["api"] for edge in config["edges"]]
    return [f"http://{api}/healthz" for api in apis]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_up_starts_everything_and_stops_cleanly(tmp_path: Path, sig: int) -> None:
    config = system_config(f"nats://127.0.0.1:{free_port()}")  # nothing answers: started here
    up = TandemUp(config, tmp_path)
    up.start()
    try:
        out = up.output()
        for edge in config["edges"]:
            assert f"sip:{edge['sip']}" in out
        assert f"traces     http://{config['telemetry']['collector']}" in out
        for url in urls(config):
            reply = httpx.get(url, timeout=5)
            assert reply.status_code == 200, url
            assert reply.json()["status"] == "ok"
        assert len(up.descendants()) == 5  # nats-server, router, callstate, two edges
    finally:
        code = up.stop(sig)
    assert code == 0, up.output()
    time.sleep(0.2)
    assert up.descendants() == [], up.output()
    assert "everything stopped" in up.output()


def test_up_starts_a_local_cluster_of_three_servers(tmp_path: Path) -> None:
    first = free_port_block(6)  # three client ports, then their three route ports
    config = system_config(f"nats://127.0.0.1:{first}") | {"nats_cluster": 3}
    up = TandemUp(config, tmp_path)
    up.start()
    try:
        out = up.output()
        assert "a cluster of 3 started here, streams and buckets with 3 replicas" in out
        for n in range(3):
            assert (
                f"nats-{n + 1}     nats://127.0.0.1:{first + n} (routes on {first + 3 + n}" in out
            )
            assert (tmp_path / "data" / f"nats-{n + 1}" / "jetstream").is_dir()  # its own
        assert len(up.descendants()) == 7  # three servers, router, callstate, two edges
        urls = ",".join(f"nats://127.0.0.1:{first + n}" for n in range(3))
        assert asyncio.run(stream_replicas(urls)) == {3}
    finally:
        code = up.stop()
    assert code == 0, up.output()
    time.sleep(0.2)
    assert up.descendants() == [], up.output()


async def stream_replicas(url: str) -> set[int]:
    nc = await bus.connect(url, "test")
    try:
        js = nc.jetstream()
        names = [bus.CALLS_STREAM, bus.CDR_STREAM, *(f"KV_{b.bucket}" for b in bus.BUCKETS)]
        return {(await js.stream_info(name)).config.num_replicas or 1 for name in names}
    finally:
        await nc.close()


def test_up_stops_everything_when_a_child_dies(tmp_path: Path) -> None:
    config = system_config(f"nats://127.0.0.1:{free_port()}")
    up = TandemUp(config, tmp_path)
    up.start()
    try:
        router = next(  # the process whose command is `router` (not a path that says it)
            p
            for p in up.descendants()
            if b"router" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        )
        subprocess.run(["kill", "-KILL", str(router)], check=True)
        assert up.proc is not None
        code = up.proc.wait(60)
    finally:
        up.stop()
    assert code == 1
    assert "router killed by SIGKILL: stopping the rest" in up.output()
    time.sleep(0.2)
    assert up.descendants() == []


def test_a_bad_config_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trunks: [{id: t, edge: e, peer: '1.2.3.4:99999', sources: []}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "up", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert "trunks.0.peer: bad port '99999'" in result.stderr
    assert "trunks.0.sources: List should have at least 1 item" in result.stderr


def rtpengines_listening_on(ng: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"--listen-ng={ng}".encode() in argv:
                found.append(int(entry.name))
    return found


def test_up_runs_a_local_rtpengine_when_a_trunk_anchors(tmp_path: Path) -> None:
    config = system_config(f"nats://127.0.0.1:{free_port()}")
    config["trunks"][2]["media"] = "anchor"  # pstn-gw1
    port = free_port(kind=socket.SOCK_DGRAM)
    ng = f"127.0.0.1:{port}"
    config["media"] = {"rtpengine": [ng], "port_min": 40000, "port_max": 40099}
    up = TandemUp(config, tmp_path)
    up.start()
    try:
        assert f"rtpengine  ng udp:{ng}, media on 127.0.0.1 (started here" in up.output()
        assert ng_ping(port)
        (pid,) = rtpengines_listening_on(ng)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--table=-1" in argv and b"--foreground" in argv  # user space, our child
    finally:
        code = up.stop()
    assert code == 0, up.output()
    time.sleep(0.2)
    assert rtpengines_listening_on(ng) == [] and not ng_ping(port)
