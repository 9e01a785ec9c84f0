"""Call-rate benchmark of the whole system, with a plain Kamailio proxy as the reference.

RFC 7502's method: at each rate, a SIPp caller places a fixed number of calls (TRIAL_S
seconds' worth) through the system under test to a SIPp callee; a trial passes only when
every call completes (INVITE, 200, ACK, BYE, 200) with zero failed calls on either side,
and the last one ends within 2 s of the trial's length (the rate was held, not
queued). The rate rises step by step until a trial fails, then the gap is bisected.

- tandem: SIPp caller (trunk pbx-hq) -> edge-pbx -> NATS -> router, callstate -> edge-pstn
  -> SIPp callee (trunk pstn-gw1), all started by `tandem up`; media bypassed.
- anchored: the same with pstn-gw1 anchoring its media: each call's offer, answer and end
  also go to the local rtpengine `tandem up` starts (NG over UDP: three requests a call).
- kamailio: the same SIPp pair through tests/bench/kamailio.cfg (tm, sl, rr), a stateful
  proxy forwarding to the callee.

Both run on this machine in the same run; the callers and callees share its cores with the
system under test, as in the DESIGN.md targets. A failed trial restarts the system, so
retransmissions left over from it cannot fail the next one. Kamailio gets shared memory
enough for its transactions (at 256 MB it answered `500 No error (2/SL)`, out of memory,
from 2,500 calls/s), and a provisional response it relays after the 200 (its workers may
reorder them) is ignored by the caller's scenario, as the INVITE transaction's.

Once the highest rate is found, two more trials per system: at half of it, the latency of
the 100 Trying and of the 200 from the caller's side (SIPp's log of each call's moments,
microseconds; the callee answers at once, so its 200 crosses the path, router included,
that a 180 would); at twice it, the goodput (calls completed per second offered) and
what the refused calls got (503 with Retry-After at once, or a timeout), which shows where
the overload threshold sits against capacity.

Run: .venv/bin/python -m tests.bench.bench_calls [--quick] [--only kamailio|tandem|anchored]
(`make bench` runs it with the other benchmarks)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.bench.bench_router import percentile
from tests.conftest import REPO, free_port
from tests.support import TandemUp, system_config
from tests.system.sipp import Sipp, logged_moments, udp_bound

# the bench's own loopback addresses: nothing else (tests, `make run`) uses them
CALLER_IP, CALLEE_IP = "127.0.1.2", "127.0.1.3"
CALLED = "+14255551234"  # pbx-hq -> route redmond-local -> pstn-gw1
TRIAL_S = 10  # seconds of calls per trial at the trial's rate
BISECT_STEPS = 2
SIPP_BUFFER = str(4 * 1024 * 1024)
KAMAILIO_RATES = [250, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 6000]
TANDEM_RATES = [25, 50, 100, 150, 200, 300, 400, 500, 700, 1000]
SLACK_S = 2.0  # calls ending later than TRIAL_S + this: the rate was queued, not held
# an ACK relayed after the BYE (RFC 3261 allows the reordering) is logged, not a failure
TOLERATE_LATE_ACK = ("-default_behaviors", "all,-abortunexp")
DRAIN_S = 10  # the callee's last calls may still be ending when the caller exits
STOP_S = 10
LOAD_SAMPLE_S = 0.25


@dataclass
class Trial:
    rate: int
    calls: int
    successful: int
    failed: int
    callee_failed: int
    duration_s: float
    refusals: Counter[str]  # what the caller's failed calls received instead of the call
    latency_ms: dict[str, tuple[float, float]]  # '100', '200': p50 and p99 from the INVITE
    load: dict[str, float]  # tandem: the caller's edge's shedding signals at their peak, ms

    @property
    def held_rate(self) -> bool:
        return self.duration_s <= TRIAL_S + SLACK_S

    @property
    def passed(self) -> bool:
        complete = self.successful == self.calls and self.failed == 0
        return complete and self.callee_failed == 0 and self.held_rate

    @property
    def goodput(self) -> float:
        """Calls completed per second, over the trial's length or longer if it took longer."""
        return self.successful / max(self.duration_s, TRIAL_S)


class Target:
    """A system under test: where the caller sends, and how to (re)start it."""

    name = ""
    address = ""
    workers = 0  # tandem's --workers N: edge-pbx is N edges on its one address

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def load(self) -> dict[str, float]:
        """Its shedding signals now, with their limits (ms), if it shows them."""
        return {}

    def restart(self) -> None:
        self.stop()
        self.start()


class Kamailio(Target):
    name = "kamailio"

    def __init__(self, workdir: Path, callee_port: int) -> None:
        self.workdir = workdir
        self.port = free_port(kind=socket.SOCK_DGRAM)
        self.address = f"127.0.0.1:{self.port}"
        self.callee = f"sip:{CALLEE_IP}:{callee_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        rundir = self.workdir / "kamailio"
        rundir.mkdir(exist_ok=True)
        argv = [
            binary, "-f", str(REPO / "tests" / "bench" / "kamailio.cfg"), "-DD", "-E",
            "-l", f"udp:{self.address}", "-A", f'CALLEE="{self.callee}"',
            "-Y", str(rundir), "-P", str(rundir / "kamailio.pid"), "-m", "1024", "-M", "16",
        ]  # fmt: skip
        with (self.workdir / "kamailio.log").open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 10
        while not udp_bound("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kamailio did not start: see {self.workdir}/kamailio.log")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM; its workers and all, killed when they linger over pending transactions."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Tandem(Target):
    name = "tandem"
    anchored = False

    def __init__(self, workdir: Path, callee_port: int) -> None:
        self.workdir = workdir
        self.callee_port = callee_port
        self.runs = 0
        self.up: TandemUp | None = None
        self.nats_url = ""  # one already running, or `tandem up` starts its own

    def start(self) -> None:
        config = system_config(self.nats_url or f"nats://127.0.0.1:{free_port()}")
        for trunk in config["trunks"]:
            trunk["options_interval_s"] = 0  # a probe would be an unexpected call to SIPp
            if trunk["id"] == "pbx-hq":
                trunk["sources"] = [CALLER_IP]
            if trunk["id"] == "pstn-gw1":
                trunk["peer"] = f"{CALLEE_IP}:{self.callee_port}"
                trunk["sources"] = [CALLEE_IP]
                if self.anchored:
                    trunk["media"] = "anchor"
        if self.workers:
            add_workers(config, "edge-pbx", self.workers)
        if self.anchored:  # a local rtpengine of its own, on ports nothing else uses here
            ng = f"127.0.0.1:{free_port(kind=socket.SOCK_DGRAM)}"
            config["media"] = {"rtpengine": [ng], "port_min": 50000, "port_max": 59999}
        self.runs += 1
        workdir = self.workdir / f"tandem-{self.runs}"
        workdir.mkdir()
        self.up = TandemUp(config, workdir)
        self.up.start()
        self.address = next(e["sip"] for e in config["edges"] if e["id"] == "edge-pbx")

    def stop(self) -> None:
        if self.up is not None:
            self.up.stop()

    def load(self) -> dict[str, float]:
        assert self.up is not None
        api = next(e["api"] for e in self.up.config["edges"] if e["id"] == "edge-pbx")
        with contextlib.suppress(httpx.HTTPError):
            return dict(httpx.get(f"http://{api}/v1/status", timeout=1).json()["load"])
        return {}


class Anchored(Tandem):
    name = "anchored"
    anchored = True


def add_workers(config: dict[str, Any], edge_id: str, workers: int) -> None:
    """The edge becomes `workers` edges on its address, each with a port of its own, and
    its trunks are served by all of them."""
    edge = next(e for e in config["edges"] if e["id"] == edge_id)
    ids = [edge_id] + [f"{edge_id}-{n}" for n in range(2, workers + 1)]
    edge["own_port"] = free_port(kind=socket.SOCK_DGRAM)
    for worker in ids[1:]:
        api = f"127.0.0.1:{free_port()}"
        config["edges"].append(
            edge | {"id": worker, "api": api, "own_port": free_port(kind=socket.SOCK_DGRAM)}
        )
    for trunk in config["trunks"]:
        if trunk["edge"] == edge_id:
            trunk["edge"] = ids


def trial(target: Target, rate: int, workdir: Path, callee_port: int, timed: bool) -> Trial:
    """`timed`: the caller logs each call's moments (for the latency; it costs SIPp CPU)."""
    calls = rate * TRIAL_S
    common = {"calls": calls, "trace": False, "timeout_s": TRIAL_S + 60}
    perf = ("-buff_size", SIPP_BUFFER)
    callee = Sipp(
        "uas_answer.xml",
        workdir,
        ip=CALLEE_IP,
        port=callee_port,
        pause_ms=1000,  # linger to answer a retransmitted BYE
        extra=(*perf, *TOLERATE_LATE_ACK),
        **common,
    ).start()
    errors, moments = workdir / f"caller-{rate}.errors.log", workdir / f"caller-{rate}.log"
    for leftover in (errors, moments):  # a bisection may run a rate twice
        leftover.unlink(missing_ok=True)
    start = time.monotonic()
    peaks: dict[str, float] = {}
    placing = threading.Event()
    sampler = threading.Thread(target=sample_load, args=(target, peaks, placing))
    sampler.start()
    caller = Sipp(
        "uac_call.xml",
        workdir,
        ip=CALLER_IP,
        remote=target.address,
        called=CALLED,
        rate=rate,
        pause_ms=0,
        extra=(
            *perf,
            *("-l", str(rate * 10)),
            *("-trace_err", "-error_file", str(errors)),
            *(("-trace_logs", "-log_file", str(moments)) if timed else ()),
            # a socket per call: each call its own flow, which the kernel gives one worker
            *(("-t", "un", "-max_socket", "10000") if target.workers else ()),
        ),
        **common,
    ).run()
    duration = time.monotonic() - start
    placing.set()
    sampler.join()
    assert callee.proc is not None
    with contextlib.suppress(subprocess.TimeoutExpired):
        callee.proc.wait(DRAIN_S)
    answered = callee.stop()
    failed, refused = caller.total("Failed call"), refusals(errors)
    if failed > refused.total():  # failed without an answer: timed out, or never sent
        refused["no answer"] = failed - refused.total()
    return Trial(
        rate,
        calls,
        caller.total("Successful call"),
        failed,
        answered.total("Failed call") + (calls - answered.total("Successful call")),
        duration,
        refused,
        latency(moments),
        peaks,
    )


def sample_load(target: Target, peaks: dict[str, float], done: threading.Event) -> None:
    """The peak of each shedding signal while the caller places calls (limits as they are)."""
    while not done.wait(LOAD_SAMPLE_S):
        for name, value in target.load().items():
            peaks[name] = max(peaks.get(name, 0.0), value)


ABORTED = "Aborting call on unexpected message"


def refusals(errors: Path) -> Counter[str]:
    """What the calls SIPp aborted received instead of their answer: '503 Retry-After',
    '408', ..."""
    text = errors.read_text(errors="replace") if errors.exists() else ""
    found: Counter[str] = Counter()
    for entry in text.split(ABORTED)[1:]:
        message = entry.partition("received '")[2].partition("\n'\n")[0]
        if not message.startswith("SIP/2.0 "):
            continue
        code = message.split(maxsplit=2)[1]
        retry = re.search(r"^Retry-After:", message, re.M | re.I) is not None
        found[f"{code} Retry-After" if retry else code] += 1
    return found


def latency(moments: Path) -> dict[str, tuple[float, float]]:
    """p50 and p99 of INVITE -> 100 and INVITE -> 200, in ms, from the caller's log."""
    calls = logged_moments(moments).values()
    figures = {}
    for kind in ("100", "200"):
        delays = sorted(
            (c[kind] - c["invite"]) * 1000 for c in calls if kind in c and "invite" in c
        )
        if delays:
            figures[kind] = (percentile(delays, 0.5), percentile(delays, 0.99))
    return figures


@dataclass
class Measured:
    """A system's figures: its highest zero-failure rate, and the trials at half and twice it."""

    best: Trial | None
    half: Trial | None = None
    double: Trial | None = None


def run(target: Target, rate: int, workdir: Path, callee_port: int, timed: bool = False) -> Trial:
    """One trial, printed; a failed one restarts the system for the next."""
    result = trial(target, rate, workdir, callee_port, timed)
    verdict = "pass" if result.passed else "FAIL"
    if result.successful == result.calls and not result.held_rate:
        verdict += " (rate not held)"
    refused = ", ".join(f"{n} {what}" for what, n in result.refusals.most_common())
    print(
        f"  {target.name:<9} {rate:>5} cps  {result.calls:>6} calls  "
        f"{result.successful:>6} ok  {result.failed:>5} failed  "
        f"callee failed {result.callee_failed:>5}  {result.duration_s:6.1f} s  "
        f"({result.calls / result.duration_s:6.1f} calls/s)  {verdict}"
        + (f"  [{refused}]" if refused else "")
        + "".join(
            f"  {kind} p50/p99 {p50:.1f}/{p99:.1f} ms"
            for kind, (p50, p99) in result.latency_ms.items()
        )
        + shedding(result.load),
        flush=True,
    )
    if not result.passed:
        target.restart()
    return result


# the edge's shedding signals in its /v1/status `load`: the figure, and its limit
SIGNALS = (
    ("lag", "lag_ms", "lag_limit_ms"),
    ("queue", "queue_ms", "queue_limit_ms"),
    ("routing", "routing_wait_ms", "routing_limit_ms"),
)


def shedding(load: dict[str, float]) -> str:
    """'  peak lag 31/100, queue 180/150, routing 120/500 ms': each against its limit."""
    cells = [f"{name} {load[key]:.0f}/{load[limit]:.0f}" for name, key, limit in SIGNALS
             if key in load and limit in load]  # fmt: skip
    return f"  peak {', '.join(cells)} ms" if cells else ""


def search(target: Target, rates: list[int], workdir: Path, callee_port: int) -> Trial | None:
    """The highest rate with zero failed calls: step up, then bisect the last gap."""
    best: Trial | None = None
    failed_at: int | None = None
    for rate in rates:
        result = run(target, rate, workdir, callee_port)
        if not result.passed:
            failed_at = rate
            break
        best = result
    for _ in range(BISECT_STEPS):
        low = best.rate if best else 0
        if failed_at is None or failed_at - low <= max(10, low // 10):
            break
        middle = (low + failed_at) // 2
        result = run(target, middle, workdir, callee_port)
        if result.passed:
            best = result
        else:
            failed_at = middle
    return best


def measure(
    make: Callable[[Path, int], Target],
    rates: list[int],
    workdir: Path,
    extremes: bool,
    search_on: bool = True,
) -> Measured:
    """`search_on` False: a trial at each rate, the last passed one reported as the best."""
    callee_port = free_port(CALLEE_IP, socket.SOCK_DGRAM)
    target = make(workdir, callee_port)
    target.start()
    try:
        if search_on:
            measured = Measured(search(target, rates, workdir, callee_port))
        else:
            trials = [run(target, rate, workdir, callee_port, timed=True) for rate in rates]
            measured = Measured(next((t for t in reversed(trials) if t.passed), None))
        if measured.best is not None and extremes:
            rate = measured.best.rate
            print(f"  {target.name}: latency at half of {rate}, overload at twice it", flush=True)
            measured.half = run(target, max(1, rate // 2), workdir, callee_port, timed=True)
            measured.double = run(target, rate * 2, workdir, callee_port)
        return measured
    finally:
        target.stop()


def report(results: dict[str, Measured]) -> None:
    """The figures side by side; goodput/max is what twice the rate completed against the
    highest zero-failure rate (the target: at least 100%, the excess refused)."""
    print()
    print(f"{'system':<10} {'0 failed':>9} {'100 p50/p99':>14} {'200 p50/p99':>14} "
          f"{'offered 2x':>11} {'goodput':>8} {'goodput/max':>12}  failed at 2x")  # fmt: skip
    print("-" * 110)
    for name, m in results.items():
        if m.best is None:
            print(f"{name:<10} {'none':>9}")
            continue
        cells = [f"{name:<10} {m.best.rate:>5} cps"]
        for kind in ("100", "200"):
            p50, p99 = m.half.latency_ms.get(kind, (0.0, 0.0)) if m.half else (0.0, 0.0)
            cells.append(f"{p50:>5.1f}/{p99:>5.1f} ms" if m.half else f"{'-':>14}")
        if m.double is not None:
            failed = ", ".join(f"{n} {what}" for what, n in m.double.refusals.most_common())
            cells.append(
                f"{m.double.rate:>7} cps {m.double.goodput:>8.0f} "
                f"{m.double.goodput / m.best.rate:>12.0%}  {failed or '-'}"
            )
        print(" ".join(cells))
    kamailio, tandem = results.get("kamailio"), results.get("tandem")
    if kamailio and tandem and kamailio.best and tandem.best:
        print(f"\ntandem / kamailio: {tandem.best.rate} / {kamailio.best.rate} = "
              f"{tandem.best.rate / kamailio.best.rate:.2f} (target 0.25, and 1,000 calls/s)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="first two rates only")
    parser.add_argument("--only", choices=["kamailio", "tandem", "anchored"])
    parser.add_argument("--rates", help="these trials only, e.g. 350,700 (no search)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="edge-pbx as N workers on one address; the caller uses a socket per call",
    )
    args = parser.parse_args()
    Tandem.workers = args.workers
    fixed = [int(rate) for rate in args.rates.split(",")] if args.rates else []
    plans: list[tuple[str, Callable[[Path, int], Target], list[int]]] = [
        ("kamailio", Kamailio, KAMAILIO_RATES),
        ("tandem", Tandem, TANDEM_RATES),
        ("anchored", Anchored, TANDEM_RATES),
    ]
    results: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp:
        for name, make, rates in plans:
            if args.only and args.only != name:
                continue
            print(f"{name}: {TRIAL_S} s of calls per trial, rate stepped up", flush=True)
            workdir = Path(tmp) / name
            workdir.mkdir()
            extremes = not args.quick and not fixed and name != "anchored"
            rates = fixed or (rates[:2] if args.quick else rates)
            results[name] = measure(make, rates, workdir, extremes, search_on=not fixed)
    report(results)
    return 0 if all(m.best for m in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
