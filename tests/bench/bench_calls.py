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
retransmissions left over from it cannot fail the next one.

Run: .venv/bin/python -m tests.bench.bench_calls [--quick] [--only kamailio|tandem|anchored]
(`make bench` runs it with the other benchmarks)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, free_port
from tests.support import TandemUp, system_config
from tests.system.sipp import Sipp, udp_bound

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


@dataclass
class Trial:
    rate: int
    calls: int
    successful: int
    failed: int
    callee_failed: int
    duration_s: float

    @property
    def held_rate(self) -> bool:
        return self.duration_s <= TRIAL_S + SLACK_S

    @property
    def passed(self) -> bool:
        complete = self.successful == self.calls and self.failed == 0
        return complete and self.callee_failed == 0 and self.held_rate


class Target:
    """A system under test: where the caller sends, and how to (re)start it."""

    name = ""
    address = ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

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
            "-Y", str(rundir), "-P", str(rundir / "kamailio.pid"), "-m", "256", "-M", "16",
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

    def start(self) -> None:
        config = system_config(f"nats://127.0.0.1:{free_port()}")
        for trunk in config["trunks"]:
            trunk["options_interval_s"] = 0  # a probe would be an unexpected call to SIPp
            if trunk["id"] == "pbx-hq":
                trunk["sources"] = [CALLER_IP]
            if trunk["id"] == "pstn-gw1":
                trunk["peer"] = f"{CALLEE_IP}:{self.callee_port}"
                trunk["sources"] = [CALLEE_IP]
                if self.anchored:
                    trunk["media"] = "anchor"
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


class Anchored(Tandem):
    name = "anchored"
    anchored = True


def trial(target: Target, rate: int, workdir: Path, callee_port: int) -> Trial:
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
    start = time.monotonic()
    caller = Sipp(
        "uac_call.xml",
        workdir,
        ip=CALLER_IP,
        remote=target.address,
        called=CALLED,
        rate=rate,
        pause_ms=0,
        extra=(*perf, "-l", str(rate * 10)),
        **common,
    ).run()
    duration = time.monotonic() - start
    assert callee.proc is not None
    with contextlib.suppress(subprocess.TimeoutExpired):
        callee.proc.wait(DRAIN_S)
    answered = callee.stop()
    return Trial(
        rate,
        calls,
        caller.total("Successful call"),
        caller.total("Failed call"),
        answered.total("Failed call") + (calls - answered.total("Successful call")),
        duration,
    )


def search(target: Target, rates: list[int], workdir: Path, callee_port: int) -> Trial | None:
    """The highest rate with zero failed calls: step up, then bisect the last gap."""
    best: Trial | None = None
    failed_at: int | None = None

    def run(rate: int) -> Trial:
        result = trial(target, rate, workdir, callee_port)
        verdict = "pass" if result.passed else "FAIL"
        if result.successful == result.calls and not result.held_rate:
            verdict += " (rate not held)"
        print(
            f"  {target.name:<9} {rate:>5} cps  {result.calls:>6} calls  "
            f"{result.successful:>6} ok  {result.failed:>5} failed  "
            f"callee failed {result.callee_failed:>5}  {result.duration_s:6.1f} s  "
            f"({result.calls / result.duration_s:6.1f} calls/s)  {verdict}",
            flush=True,
        )
        if not result.passed:
            target.restart()
        return result

    for rate in rates:
        result = run(rate)
        if not result.passed:
            failed_at = rate
            break
        best = result
    for _ in range(BISECT_STEPS):
        low = best.rate if best else 0
        if failed_at is None or failed_at - low <= max(10, low // 10):
            break
        middle = (low + failed_at) // 2
        result = run(middle)
        if result.passed:
            best = result
        else:
            failed_at = middle
    return best


def measure(make: Callable[[Path, int], Target], rates: list[int], workdir: Path) -> Trial | None:
    callee_port = free_port(CALLEE_IP, socket.SOCK_DGRAM)
    target = make(workdir, callee_port)
    target.start()
    try:
        return search(target, rates, workdir, callee_port)
    finally:
        target.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="first two rates only")
    parser.add_argument("--only", choices=["kamailio", "tandem", "anchored"])
    args = parser.parse_args()
    plans: list[tuple[str, Callable[[Path, int], Target], list[int]]] = [
        ("kamailio", Kamailio, KAMAILIO_RATES),
        ("tandem", Tandem, TANDEM_RATES),
        ("anchored", Anchored, TANDEM_RATES),
    ]
    results: dict[str, Trial | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp:
        for name, make, rates in plans:
            if args.only and args.only != name:
                continue
            print(f"{name}: {TRIAL_S} s of calls per trial, rate stepped up", flush=True)
            workdir = Path(tmp) / name
            workdir.mkdir()
            results[name] = measure(make, rates[:2] if args.quick else rates, workdir)
    print()
    print(f"{'system':<10} {'highest rate, 0 failed':>24} {'calls':>8} {'duration':>10}")
    print("-" * 55)
    for name, best in results.items():
        if best is None:
            print(f"{name:<10} {'none passed':>24}")
        else:
            rate = f"{best.rate} cps"
            print(f"{name:<10} {rate:>24} {best.calls:>8} {best.duration_s:>9.1f}s")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
