"""Fixtures shared by every test: a real nats-server with JetStream on a free port, and a
real three-server JetStream cluster whose servers a test can kill and bring back."""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from tandem import bus
from tandem.up import NatsNode, cluster_nodes, nats_server_command, node_command

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO.parent / "shared" / "conformance"


def _ephemeral_low() -> int:
    """Where the kernel's ports for outgoing connections begin."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports for a test's listeners come from below the ephemeral range: a port the kernel gave
# out (port 0) may be given again to any outgoing connection before the test's process binds
# it, as happened to an edge's SIP port while `tandem up` started.
PORTS = range(10_000, max(_ephemeral_low(), 20_000))
_PICK = random.Random()  # its own: Hypothesis seeds the module's generator in its tests


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port of `host` free right now for `kind`, outside the ephemeral range."""
    while True:
        port = _PICK.choice(PORTS)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port


def sip_port() -> int:
    """A port of 127.0.0.1 free for both UDP and TCP (an edge listens on both)."""
    while True:
        port = free_port(kind=socket.SOCK_DGRAM)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive TCP ports that are free right now."""
    while True:
        first = free_port(host)
        if first + count > 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                sockets.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return first


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.02)


class NatsServer:
    """One nats-server process with JetStream in a temp folder; can be restarted in place."""

    def __init__(self, store: Path, monitor_port: int | None = None) -> None:
        self.port = free_port()
        self.store = store
        self.monitor_port = monitor_port  # its HTTP monitoring (/varz, /connz), if given
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = nats_server_command("127.0.0.1", self.port, self.store)
        if self.monitor_port is not None:
            cmd += ["-m", str(self.monitor_port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port, self.proc, "nats-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class NatsCluster:
    """Three nats-server processes as one JetStream cluster, as `tandem up` starts it."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir = workdir
        first = free_port_block(3 * size)  # clients, routes, then monitoring
        self.nodes = cluster_nodes("127.0.0.1", first, size)
        self.monitor = {n.name: first + 2 * size + i for i, n in enumerate(self.nodes)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """Every server, as the processes are given them."""
        return ",".join(n.url for n in self.nodes)

    def store(self, node: NatsNode) -> Path:
        return self.workdir / node.name

    def start(self, node: NatsNode | None = None) -> None:
        for n in [node] if node else self.nodes:
            log = (self.workdir / f"{n.name}.log").open("ab")
            command = [*node_command(n, self.nodes, self.store(n)), "-m", str(self.monitor[n.name])]
            self.procs[n.name] = proc = subprocess.Popen(command, stdout=log, stderr=log)
            log.close()
            wait_port(n.host, n.port, proc, n.name)

    def kill(self, node: NatsNode) -> None:
        """SIGKILL: nothing is flushed or handed over."""
        proc = self.procs.pop(node.name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stored(self, node: NatsNode) -> dict[str, int]:
        """What this server holds in its own store: messages per stream (its /jsz page)."""
        url = f"http://127.0.0.1:{self.monitor[node.name]}/jsz?accounts=true&streams=true"
        with urllib.request.urlopen(url, timeout=5) as page:
            jsz = json.load(page)
        return {
            stream["name"]: stream["state"]["messages"]
            for account in jsz.get("account_details", [])
            for stream in account.get("stream_detail", [])
        }

    def wipe(self, node: NatsNode) -> None:
        """Its JetStream folder gone, as a replaced disk or a new pod volume."""
        shutil.rmtree(self.store(node), ignore_errors=True)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(10)
        self.procs.clear()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "cluster")
    cluster.workdir.mkdir()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await bus.connect(nats_server.url, "test")
    yield client
    await client.close()


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    context = nc.jetstream()
    await bus.ensure_stores(context)
    return context
