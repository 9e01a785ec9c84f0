"""Where a call's CPU goes: milliseconds of CPU per call in each process, at a steady rate.

A SIPp caller places RATE calls/s for SECONDS through the system bench_calls runs (`tandem
up`: two edges, router, callstate, NATS, tracing on; media bypassed) to a SIPp callee that
answers at once; each call hangs up at the answer. Each process's user and system time
(/proc/PID/stat) before and after the trial, over the calls completed, is its share of a
call; `tandem up` is there for its trace collector. The run has its own nats-server, whose
monitoring gives each connection's messages in and out: the NATS messages a call costs. With --profile DIR, py-spy samples both
edges over the trial and writes a flame graph of each (the README's table of what inside
an edge takes its share comes from these).

Run: .venv/bin/python -m tests.bench.bench_cpu [--rate R] [--seconds S] [--trials N]
[--profile DIR]
(`make bench` runs it with the other benchmarks)
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import httpx

from tests.bench.bench_calls import (
    CALLED,
    CALLEE_IP,
    CALLER_IP,
    SIPP_BUFFER,
    TOLERATE_LATE_ACK,
    Tandem,
)
from tests.bench.bench_hold import processes
from tests.bench.bench_router import cpu_s
from tests.conftest import NatsServer, free_port
from tests.system.sipp import Sipp

RATE = 200
SECONDS = 10
TRIALS = 5  # on one system; the figures are the medians (the machine is shared and noisy)
SAMPLES_PER_S = 200


def nats_messages(monitor: str) -> Counter[str]:
    """Messages each client sent and received so far, by its connection's name."""
    counts: Counter[str] = Counter()
    for conn in httpx.get(f"http://{monitor}/connz?limit=1000", timeout=5).json()["connections"]:
        name = conn.get("name", "?").removeprefix("tandem-")
        counts[f"{name} sent"] += conn["in_msgs"]
        counts[f"{name} received"] += conn["out_msgs"]
    return counts


@dataclass
class Shares:
    """One trial's CPU per call by process (ms) and NATS messages per call by client."""

    cpu_ms: dict[str, float]
    messages: dict[str, float]


def trial(system: Tandem, pids: dict[str, int], monitor: str, rate: int, seconds: int) -> Shares:
    calls = rate * seconds
    workdir = system.workdir
    callee_port = system.callee_port
    before = {role: cpu_s(pid) for role, pid in pids.items()}
    messages = nats_messages(monitor)
    common = {"calls": calls, "trace": False, "timeout_s": seconds + 60}
    perf = ("-buff_size", SIPP_BUFFER, "-l", str(calls))
    callee = Sipp("uas_answer.xml", workdir, ip=CALLEE_IP, port=callee_port, pause_ms=1000,
                  extra=(*perf, *TOLERATE_LATE_ACK), **common).start()  # fmt: skip
    result = Sipp("uac_call.xml", workdir, ip=CALLER_IP, remote=system.address, called=CALLED,
                  rate=rate, pause_ms=0, extra=perf, **common).run()  # fmt: skip
    after = {role: cpu_s(pid) for role, pid in pids.items()}
    messages = nats_messages(monitor) - messages
    with contextlib.suppress(subprocess.TimeoutExpired):
        assert callee.proc is not None
        callee.proc.wait(5)
    callee.stop()
    completed = result.total("Successful call")
    if completed != calls:
        raise RuntimeError(f"{completed} of {calls} calls completed: the rate is too high")
    return Shares(
        {role: (after[role] - before[role]) * 1000 / calls for role in pids},
        {name: count / calls for name, count in messages.items()},
    )


def profile(pids: dict[str, int], into: Path, seconds: int) -> list[subprocess.Popen[bytes]]:
    """py-spy on each edge for the next trial, collapsed stacks into INTO/<edge>.txt."""
    into.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(pid),
                "-r",
                str(SAMPLES_PER_S),
                "-f",
                "raw",
                "-o",
                str(into / f"{role.split()[1]}.txt"),
                "-d",
                str(seconds + 2),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for role, pid in pids.items()
        if role.startswith("edge ")
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=RATE)
    parser.add_argument("--seconds", type=int, default=SECONDS)
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--profile", type=Path, help="py-spy the edges over the first trial")
    args = parser.parse_args()
    trials: list[Shares] = []
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        workdir = Path(tmp)
        monitor_port = free_port()
        nats = NatsServer(workdir / "nats", monitor_port)
        nats.start()
        system = Tandem(workdir, free_port(CALLEE_IP, socket.SOCK_DGRAM))
        system.nats_url = nats.url
        try:
            system.start()
            assert system.up is not None and system.up.proc is not None
            assert nats.proc is not None
            pids = {**processes(), "tandem up": system.up.proc.pid, "nats-server": nats.proc.pid}
            for number in range(args.trials):
                spies = (
                    profile(pids, args.profile, args.seconds) if args.profile and not number else []
                )
                trials.append(
                    trial(system, pids, f"127.0.0.1:{monitor_port}", args.rate, args.seconds)
                )
                for spy in spies:
                    spy.wait(30)
                print(
                    f"trial {number + 1}: {sum(trials[-1].cpu_ms.values()):.2f} ms a call",
                    flush=True,
                )
        finally:
            system.stop()
            nats.stop()
    print(
        f"{args.trials} trials of {args.rate * args.seconds} calls at {args.rate} calls/s; medians"
    )
    cpu = {role: median(t.cpu_ms[role] for t in trials) for role in trials[0].cpu_ms}
    print(f"{'process':<18} {'ms of CPU per call':>19}")
    for role, share in sorted(cpu.items(), key=lambda item: -item[1]):
        print(f"{role:<18} {share:>19.2f}")
    print(f"{'all':<18} {median(sum(t.cpu_ms.values()) for t in trials):>19.2f}")
    print("NATS messages per call")
    for name in sorted(trials[0].messages):
        print(f"  {name:<34} {median(t.messages.get(name, 0.0) for t in trials):>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
