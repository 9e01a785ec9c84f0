"""Chaos runs: faults injected into a whole running tandem while SIPp places calls.

The system: a real 3-server NATS cluster (every stream and bucket with 3 replicas), two
routers, two callstate replicas, and two edges per side: the PBX trunk served by edge-pbx
and edge-pbx-2, the gateway by edge-pstn and edge-pstn-2, each a `tandem` process of its
own. SIPp places calls from the PBX trunk (to edge-pbx, its address) at a steady rate, each
held for several seconds, to a SIPp gateway that answers; the legs are spread over both
PSTN-side edges. The run kills (SIGKILL) in turn one NATS server (the one leading the
call-event stream), one router, the callstate leader and one PSTN-side edge, and restarts
each after a while. For every fault it prints: the new calls attempted and failed during
the fault window (from the kill until the system is whole again), the calls in progress at
the kill that were lost, the gateway's call legs left hanging, CDRs missing and
duplicated, the seconds until the rest had taken over (streams led again, the standby
callstate leading and caught up, the other router deciding, a new call answered through
the other edge) and until the system was whole again (restarted, caught up, every copy
current). A killed edge's own calls in progress (a leg on it) die with it: they are
counted apart ("its own"), and "lost" and "hanging" count the others only.

Each call's moments come from SIPp's own log (uac_chaos.xml, uas_chaos.xml), with the
wall clock; CDRs and call events are read from their streams at the end.

Run: .venv/bin/python -m tests.chaos.harness [--short]  (`make chaos` runs the long run;
tests/chaos/test_chaos.py runs the short one inside `make test` and asserts its targets)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats.errors
import yaml
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from tandem import bus
from tandem.callstate.lease import LEASE_KEY
from tandem.callstate.store import CONSUMER, STATE_BUCKET
from tandem.pb import tandem_pb2 as pb
from tests.conftest import REPO, NatsCluster, free_port, sip_port
from tests.system.sipp import Sipp, logged_moments

CALLER_IP, CALLEE_IP = "127.0.3.2", "127.0.3.3"  # the run's own loopback addresses
CALLED = "+14255551234"  # pbx-hq -> route redmond-local -> pstn-gw1
READY_TIMEOUT_S = 60.0
WHOLE_TIMEOUT_S = 90.0
SETUP_MAX_S = 15.0  # uac_chaos.xml gives up on an answer after this long
BYE_DELAY_S = 2.0  # a gateway leg's BYE comes this long after its hold at most
SIPP_BUFFER = str(4 * 1024 * 1024)
EVENTS_PER_CALL = 8
STREAMS = [bus.CALLS_STREAM, bus.CDR_STREAM, *(f"KV_{b.bucket}" for b in bus.BUCKETS)]

T = TypeVar("T")


@dataclass(frozen=True)
class Profile:
    rate: float  # new calls per second
    hold_s: float  # how long each call talks
    warmup_s: float  # calls before the first fault
    down_s: float  # how long a killed process stays down
    settle_s: float  # after the system is whole again, before the next fault
    rounds: int  # of the three faults


SHORT = Profile(rate=5, hold_s=4, warmup_s=6, down_s=3, settle_s=4, rounds=1)
LONG = Profile(rate=15, hold_s=8, warmup_s=20, down_s=10, settle_s=20, rounds=2)


class Proc:
    """One tandem process, killed and restarted by the run."""

    def __init__(self, name: str, argv: list[str], api: str, workdir: Path) -> None:
        self.name, self.argv, self.api = name, argv, api
        self.log = workdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def ready(self) -> bool:
        if self.popen is None or self.popen.poll() is not None:
            return False
        try:
            return httpx.get(f"http://{self.api}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class Fault:
    name: str
    killed: str
    kill_at: float  # wall clock, as SIPp logs it
    edge: bool = False  # an edge: the calls with a leg on it are its own
    served_at: float = 0.0  # the rest took over: what the killed process did is done again
    restart_at: float = 0.0
    whole_at: float = 0.0  # restarted, caught up, every copy current


@dataclass
class Leg:
    """One call as a SIPp saw it: when it started, was answered, ended cleanly."""

    call_id: str
    start: float = 0.0
    answered: float = 0.0
    ok: float = 0.0  # caller: hung up cleanly; callee: got its BYE


@dataclass
class Report:
    fault: Fault
    attempted: int
    failed: int
    in_progress: int
    lost: int  # of the calls in progress not the killed edge's own
    hanging: int
    cdrs_missing: int
    cdrs_duplicated: int
    own: int = 0  # an edge's fault: its own calls in progress, lost with it

    @property
    def whole_s(self) -> float:
        return self.fault.whole_at - self.fault.kill_at

    @property
    def served_s(self) -> float:
        return self.fault.served_at - self.fault.kill_at

    @property
    def failed_share(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0


@dataclass
class Outcome:
    reports: list[Report]
    placed: int
    completed: int
    cdrs: int
    cdrs_missing: int
    cdrs_duplicated: int
    failed_outside: int  # calls failed with no fault about: the machine's own noise
    notes: list[str] = field(default_factory=list)  # the calls lost, failed or without a CDR


class System:
    """The whole system as separate processes on a real 3-server cluster."""

    def __init__(self, workdir: Path, profile: Profile) -> None:
        self.workdir, self.profile = workdir, profile
        (workdir / "nats").mkdir(parents=True)
        self.cluster = NatsCluster(workdir / "nats")
        self.caller_port = free_port(CALLER_IP, socket.SOCK_DGRAM)
        self.callee_port = free_port(CALLEE_IP, socket.SOCK_DGRAM)
        self.config = self._config()
        self.config_path = workdir / "tandem.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.routers = [self._proc(f"router-{n}", ["router"]) for n in (1, 2)]
        self.callstates = [self._proc(f"callstate-{n}", ["callstate"]) for n in (1, 2)]
        self.edges = [
            self._proc(e["id"], ["edge", "--id", e["id"]], e["api"]) for e in self.config["edges"]
        ]
        self.procs = [*self.routers, *self.callstates, *self.edges]
        self.live_url = ""  # while a server is down: the others (a connection would try it)

    def _config(self) -> dict[str, Any]:
        quiet = {"options_interval_s": 0}  # a probe would be an unexpected call to SIPp
        return {
            "nats": {"url": self.cluster.url, "replicas": 3},
            "callstate": {"edge_lost_s": 10},
            "edges": [
                {"id": e, "sip": f"127.0.0.1:{sip_port()}", "api": f"127.0.0.1:{free_port()}"}
                for e in ("edge-pbx", "edge-pbx-2", "edge-pstn", "edge-pstn-2")
            ],
            "trunks": [
                {
                    "id": "pbx-hq",
                    "edge": ["edge-pbx", "edge-pbx-2"],
                    "peer": f"{CALLER_IP}:{self.caller_port}",
                    "sources": [CALLER_IP],
                    "pstn_usages": ["Local"],
                    **quiet,
                },
                {
                    "id": "pstn-gw1",
                    "edge": ["edge-pstn", "edge-pstn-2"],
                    "peer": f"{CALLEE_IP}:{self.callee_port}",
                    "sources": [CALLEE_IP],
                    "pstn_usages": ["Internal"],
                    **quiet,
                },
            ],
            "routes": [
                {
                    "id": "redmond-local",
                    "number_pattern": r"^\+1(425|206)\d{7}$",
                    "pstn_usages": ["Local"],
                    "trunks": ["pstn-gw1"],
                }
            ],
        }

    def _proc(self, name: str, command: list[str], api: str | None = None) -> Proc:
        api = api or f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "tandem.cli", *command, "--config", str(self.config_path)]
        if command[0] != "edge":
            argv += ["--api", api]
        return Proc(name, argv, api, self.workdir)

    @property
    def pbx_edge(self) -> str:
        return str(self.config["edges"][0]["sip"])

    # ---- life ---------------------------------------------------------------------------

    def start(self) -> None:
        self.cluster.start()
        command = ["config", "import", "--config", str(self.config_path)]
        subprocess.run(
            [sys.executable, "-m", "tandem.cli", *command],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=READY_TIMEOUT_S,
        )
        for proc in self.procs:
            proc.start()
        self.wait_ready(self.procs)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.cluster.stop()

    def wait_ready(self, procs: list[Proc], timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            while not proc.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.name} not ready: see {proc.log}")
                time.sleep(0.1)

    # ---- asking the bus ------------------------------------------------------------------

    def ask(self, question: Callable[[JetStreamContext], Awaitable[T]]) -> T:
        async def asked() -> T:
            nc = await bus.connect(self.live_url or self.cluster.url, "chaos")
            try:
                return await question(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(asked())

    def ask_until(self, check: Callable[[JetStreamContext], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + WHOLE_TIMEOUT_S
        while True:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                if self.ask(check):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the system did not become whole again")
            time.sleep(0.2)

    # ---- the faults ------------------------------------------------------------------------

    def kill_nats_server(self) -> Fault:
        async def leader(js: JetStreamContext) -> str:
            info = await js.stream_info(bus.CALLS_STREAM)
            return str(info.cluster.leader) if info.cluster else ""

        name = self.ask(leader)
        node = next(n for n in self.cluster.nodes if n.name == name)

        def served(js: JetStreamContext) -> Awaitable[bool]:
            return streams_led_and_applied(js, name, self.profile.rate)

        def whole() -> None:
            self.ask_until(streams_whole)
            self.wait_ready(self.procs, WHOLE_TIMEOUT_S)

        def kill() -> None:
            self.live_url = ",".join(n.url for n in self.cluster.nodes if n is not node)
            self.cluster.kill(node)

        def restart() -> None:
            self.cluster.start(node)
            self.live_url = ""

        return self._fault(
            "NATS server (call-event stream leader)", name, kill, restart, served, whole
        )

    def kill_router(self) -> Fault:
        router, other = self.routers

        async def served(js: JetStreamContext) -> bool:
            return other.ready()

        return self._fault(
            "router",
            router.name,
            router.kill,
            router.start,
            served,
            lambda: self.wait_ready([router]),
        )

    def kill_callstate_leader(self) -> Fault:
        async def holder(js: JetStreamContext) -> str:
            kv = await js.key_value(STATE_BUCKET)
            return str(json.loads((await kv.get(LEASE_KEY)).value or b"{}").get("holder", ""))

        held = self.ask(holder)  # "<host>-<pid>-<id>"
        leader = next(p for p in self.callstates if p.pid == leader_pid(held))

        async def served(js: JetStreamContext) -> bool:  # the standby leads and keeps up
            return leader_pid(await holder(js)) != leader.pid and await callstate_caught_up(
                js, self.profile.rate
            )

        def whole() -> None:
            self.wait_ready(self.callstates)
            self.ask_until(lambda js: callstate_caught_up(js, self.profile.rate))

        return self._fault(
            "callstate leader", leader.name, leader.kill, leader.start, served, whole
        )

    def kill_edge(self) -> Fault:
        """A PSTN-side edge: the legs on it die; new ones go to edge-pstn-2's sibling."""
        edge = next(p for p in self.edges if p.name == "edge-pstn-2")
        kill_ms = int(time.time() * 1000)

        async def served(js: JetStreamContext) -> bool:  # a new leg answered elsewhere
            return await leg_answered_since(js, kill_ms, "edge-pstn")

        fault = self._fault(
            "edge (PSTN side)",
            edge.name,
            edge.kill,
            edge.start,
            served,
            lambda: self.wait_ready([edge]),
        )
        fault.edge = True
        return fault

    def _fault(
        self,
        what: str,
        killed: str,
        kill: Callable[[], None],
        restart: Callable[[], None],
        served: Callable[[JetStreamContext], Awaitable[bool]],
        whole: Callable[[], None],
    ) -> Fault:
        """Kill; note when the rest has taken over; restart after down_s; wait until whole."""
        fault = Fault(what, killed, time.time())
        kill()
        restart_at = time.monotonic() + self.profile.down_s
        while not fault.served_at and time.monotonic() < restart_at:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                if self.ask(served):
                    fault.served_at = time.time()
            time.sleep(0.1)
        time.sleep(max(0.0, restart_at - time.monotonic()))
        fault.restart_at = time.time()
        restart()
        whole()
        fault.whole_at = time.time()
        fault.served_at = fault.served_at or fault.whole_at  # only whole again did it serve
        return fault


def leader_pid(holder: str) -> int:
    """The process id in a callstate lease holder's name, `<host>-<pid>-<id>`."""
    parts = holder.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0


async def streams_led_and_applied(js: JetStreamContext, dead: str, rate: float) -> bool:
    """Every stream and bucket is led again (by a server alive), and callstate keeps up."""
    for name in STREAMS:
        info = await js.stream_info(name)
        if info.cluster is None or info.cluster.leader in (None, "", dead):
            return False
    return await callstate_caught_up(js, rate)


async def streams_whole(js: JetStreamContext) -> bool:
    """Every stream and bucket has a leader and two current copies."""
    for name in STREAMS:
        info = await js.stream_info(name)
        peers = info.cluster.replicas or [] if info.cluster else []
        if info.cluster is None or not info.cluster.leader or len(peers) != 2:
            return False
        if not all(peer.current for peer in peers):
            return False
    return True


async def leg_answered_since(js: JetStreamContext, since_ms: int, edge: str) -> bool:
    """Whether a leg was answered through `edge` after `since_ms` (its call event)."""
    sub = await js.subscribe(
        bus.call_event("*", pb.CallEvent.LEG_ANSWERED),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_TIME,
        config=ConsumerConfig(opt_start_time=datetime.fromtimestamp(since_ms / 1000, UTC)),
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return False
            event = pb.CallEvent.FromString(msg.data)
            if event.leg_edge == edge and event.time_unix_ms >= since_ms:
                return True
    finally:
        await sub.unsubscribe()


async def callstate_caught_up(js: JetStreamContext, rate: float) -> bool:
    """A leader holds the lease and keeps up: less than a second of events waits for it."""
    kv = await js.key_value(STATE_BUCKET)
    lease = json.loads((await kv.get(LEASE_KEY)).value or b"{}")
    if lease.get("expires_unix_ms", 0) < time.time() * 1000:
        return False
    info = await js.consumer_info(bus.CALLS_STREAM, CONSUMER)
    return int(info.num_pending or 0) <= rate * EVENTS_PER_CALL


# ---- the traffic -----------------------------------------------------------------------


def sipp_log(path: Path) -> dict[str, Leg]:
    """Each call's moments from a chaos scenario's log."""
    return {
        call_id: Leg(
            call_id,
            start=seen.get("start", 0.0),
            answered=seen.get("answered", 0.0),
            ok=seen.get("ok", seen.get("bye", 0.0)),
        )
        for call_id, seen in logged_moments(path).items()
    }


class Traffic:
    """The SIPp caller (trunk pbx-hq) and the SIPp gateway (pstn-gw1)."""

    def __init__(self, system: System, workdir: Path) -> None:
        profile = system.profile
        common = {"trace": False, "timeout_s": 3600, "calls": 10**7}
        self.caller_log, self.callee_log = workdir / "caller.log", workdir / "callee.log"
        self.callee = Sipp(
            "uas_chaos.xml",
            workdir,
            ip=CALLEE_IP,
            port=system.callee_port,
            pause_ms=1000,  # linger to answer a retransmitted BYE
            extra=(
                *("-buff_size", SIPP_BUFFER, "-trace_logs", "-log_file", str(self.callee_log)),
                *("-default_behaviors", "all,-abortunexp"),
            ),
            **common,
        )
        self.caller = Sipp(
            "uac_chaos.xml",
            workdir,
            ip=CALLER_IP,
            port=system.caller_port,
            remote=system.pbx_edge,
            called=CALLED,
            rate=profile.rate,
            pause_ms=int(profile.hold_s * 1000),
            extra=(
                *("-buff_size", SIPP_BUFFER, "-trace_logs", "-log_file", str(self.caller_log)),
                *("-l", str(int(profile.rate * (profile.hold_s + SETUP_MAX_S) * 2))),
            ),
            **common,
        )

    def start(self) -> None:
        self.callee.start()
        self.caller.start()

    def stop(self, hold_s: float) -> None:
        """No new calls (SIGUSR1: SIPp's soft stop); the calls up finish, then the gateway."""
        assert self.caller.proc is not None and self.callee.proc is not None
        self.caller.proc.send_signal(signal.SIGUSR1)
        try:
            self.caller.proc.wait(hold_s + SETUP_MAX_S + 20)
        except subprocess.TimeoutExpired:
            self.caller.proc.kill()
        time.sleep(2.0)  # the last BYEs reach the gateway
        self.callee.stop()


# ---- what happened ---------------------------------------------------------------------


async def read_cdrs(js: JetStreamContext) -> list[pb.Cdr]:
    return [pb.Cdr.FromString(data) for data in await _read(js, bus.cdr("*"))]


async def read_started(js: JetStreamContext) -> set[str]:
    """The SIP Call-IDs of the calls the ingress edge recorded as started."""
    started = await _read(js, bus.call_event("*", pb.CallEvent.STARTED))
    return {pb.CallEvent.FromString(data).sip_call_id for data in started}


async def _read(js: JetStreamContext, subject: str) -> list[bytes]:
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    out = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                return out
            out.append(msg.data)
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


def judge(
    faults: list[Fault],
    calls: dict[str, Leg],
    callee: dict[str, Leg],
    cdrs: list[pb.Cdr],
    started: set[str],
    profile: Profile,
) -> Outcome:
    per_call = Counter(sip for cdr in cdrs for sip in cdr.sip_call_ids if sip in calls)
    # the edges each call and each gateway leg ran on, by SIP Call-ID (their CDRs say)
    edges_of: dict[str, set[str]] = {}
    for cdr in cdrs:
        edges = {cdr.edge, *(a.edge for a in cdr.attempts)}
        for sip in cdr.sip_call_ids:
            edges_of.setdefault(sip, set()).update(edges)
        for a in cdr.attempts:
            edges_of.setdefault(a.sip_call_id, set()).add(a.edge)

    def own(fault: Fault, call_id: str) -> bool:
        return fault.edge and fault.killed in edges_of.get(call_id, set())

    def cdr_faults(legs: list[Leg]) -> tuple[int, int]:
        # a call tandem knew of (it answered, or recorded a start) has exactly one CDR
        known = [c for c in legs if c.answered or c.call_id in started]
        return sum(per_call[c.call_id] == 0 for c in known), sum(
            per_call[c.call_id] > 1 for c in known
        )

    def culprit(c: Leg) -> Fault | None:
        """The fault that harmed a call or gateway leg not ended cleanly: of those disturbing
        the system (kill to whole again) while it was up, the last killed."""
        up_from = c.answered or c.start
        up_to = c.answered + profile.hold_s + BYE_DELAY_S if c.answered else c.start + SETUP_MAX_S
        return max(
            (f for f in faults if f.kill_at <= up_to and f.whole_at >= up_from),
            key=lambda f: f.kill_at,
            default=None,
        )

    reports = []
    for fault in faults:
        window = [c for c in calls.values() if fault.kill_at <= c.start <= fault.whole_at]
        up_at_kill = [
            c
            for c in calls.values()
            if c.start < fault.kill_at <= (c.ok or c.start + profile.hold_s + SETUP_MAX_S)
        ]
        touched = [
            c
            for c in calls.values()
            if fault.kill_at - profile.hold_s - SETUP_MAX_S <= c.start <= fault.whole_at
        ]
        its_own = [c for c in up_at_kill if own(fault, c.call_id)]
        lost = [c for c in up_at_kill if not c.ok and c not in its_own and culprit(c) is fault]
        hanging = [
            c
            for c in callee.values()
            if c.answered and not c.ok and culprit(c) is fault and not own(fault, c.call_id)
        ]
        missing, duplicated = cdr_faults(touched)
        reports.append(
            Report(
                fault,
                attempted=len(window),
                failed=sum(not c.ok for c in window),
                in_progress=len(up_at_kill),
                lost=len(lost),
                hanging=len(hanging),
                cdrs_missing=missing,
                cdrs_duplicated=duplicated,
                own=len(its_own),
            )
        )
    margin = profile.hold_s + SETUP_MAX_S
    outside = [
        c
        for c in calls.values()
        if not c.ok
        and not any(f.kill_at - margin <= c.start <= f.whole_at for f in faults)
        and c.start  # (a call SIPp was still placing when stopped has no start)
    ]
    missing, duplicated = cdr_faults(list(calls.values()))
    notes = [
        f"{c.call_id}: started {c.start:.3f}, answered {c.answered or '-'}, not ended cleanly"
        for c in calls.values()
        if c.start and not c.ok
    ]
    notes += [
        f"gateway leg {c.call_id}: answered {c.answered:.3f}, never ended"
        for c in callee.values()
        if c.answered and not c.ok
    ]
    notes += [
        f"{c.call_id}: {per_call[c.call_id]} CDRs"
        for c in calls.values()
        if (c.answered or c.call_id in started) and per_call[c.call_id] != 1
    ]
    return Outcome(
        reports,
        placed=len(calls),
        completed=sum(bool(c.ok) for c in calls.values()),
        cdrs=len(cdrs),
        cdrs_missing=missing,
        cdrs_duplicated=duplicated,
        failed_outside=len(outside),
        notes=notes,
    )


def table(outcome: Outcome) -> str:
    header = (
        f"{'fault':<40} {'killed':<12} {'new calls':>9} {'failed':>7} {'in progress':>11} "
        f"{'its own':>7} {'lost':>5} {'hanging':>7} {'CDRs missing':>12} {'CDRs dup':>8} "
        f"{'taken over s':>12} {'whole again s':>13}"
    )
    lines = [header, "-" * len(header)]
    for r in outcome.reports:
        lines.append(
            f"{r.fault.name:<40} {r.fault.killed:<12} {r.attempted:>9} "
            f"{f'{r.failed} ({r.failed_share:.1%})':>7} {r.in_progress:>11} {r.own:>7} {r.lost:>5} "
            f"{r.hanging:>7} {r.cdrs_missing:>12} {r.cdrs_duplicated:>8} {r.served_s:>12.1f} "
            f"{r.whole_s:>13.1f}"
        )
    lines.append(
        f"calls placed {outcome.placed}, completed {outcome.completed}, failed outside any "
        f"fault {outcome.failed_outside}; CDRs {outcome.cdrs}, missing {outcome.cdrs_missing}, "
        f"duplicated {outcome.cdrs_duplicated}; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs"
    )
    lines += [f"  {note}" for note in outcome.notes]
    return "\n".join(lines)


@contextlib.contextmanager
def running(workdir: Path, profile: Profile) -> Iterator[System]:
    system = System(workdir, profile)
    try:
        system.start()
        yield system
    finally:
        system.stop()
        Sipp.stop_all()


FAULTS = ("nats", "router", "callstate", "edge")


def run(
    workdir: Path,
    profile: Profile,
    say: Callable[[str], None] = print,
    kinds: tuple[str, ...] = FAULTS,
) -> Outcome:
    """One chaos run: the system up, traffic, each fault in turn, then the judgement."""
    with running(workdir, profile) as system:
        traffic = Traffic(system, workdir)
        traffic.start()
        time.sleep(profile.warmup_s)
        injections = {
            "nats": system.kill_nats_server,
            "router": system.kill_router,
            "callstate": system.kill_callstate_leader,
            "edge": system.kill_edge,
        }
        faults = []
        for _ in range(profile.rounds):
            for kind in kinds:
                fault = injections[kind]()
                say(
                    f"  {fault.name} ({fault.killed}) killed, taken over after "
                    f"{fault.served_at - fault.kill_at:.1f} s, restarted after "
                    f"{fault.restart_at - fault.kill_at:.1f} s, whole again after "
                    f"{fault.whole_at - fault.kill_at:.1f} s"
                )
                faults.append(fault)
                time.sleep(profile.settle_s)
        traffic.stop(profile.hold_s)
        time.sleep(3.0)  # the last CDRs are written
        system.ask_until(lambda js: callstate_caught_up(js, 0))
        cdrs = system.ask(read_cdrs)
        started = system.ask(read_started)
    calls = sipp_log(traffic.caller_log)
    callee = sipp_log(traffic.callee_log)
    return judge(faults, calls, callee, cdrs, started, profile)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="the short run of `make test`")
    parser.add_argument("--workdir", help="keep the run's logs here (default: a temp folder)")
    parser.add_argument("--faults", default=",".join(FAULTS), help="which, in this order")
    parser.add_argument("--rounds", type=int, help="of the faults (default: the profile's)")
    args = parser.parse_args()
    profile = SHORT if args.short else LONG
    if args.rounds:
        profile = dataclasses.replace(profile, rounds=args.rounds)
    kinds = tuple(args.faults.split(","))
    print(
        f"chaos run: {profile.rate:g} calls/s held {profile.hold_s:g} s, each fault down "
        f"{profile.down_s:g} s, {profile.rounds} round(s)",
        flush=True,
    )
    import tempfile

    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        outcome = run(workdir, profile, lambda line: print(line, flush=True), kinds)
    print(table(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
