"""Memory with calls held: 10,000 calls in progress through the whole path, RSS per process.

A SIPp caller places CALLS calls at RATE calls/s, each held HOLD_S seconds, through the
system bench_calls runs (`tandem up`: two edges, router, callstate, NATS, tracing on; media
bypassed) to a SIPp callee; from CALLS / RATE seconds on, every call is up at once. Each
second the run reads every process's resident set (/proc/PID/status) and the edges' calls
and legs in progress (their /metrics), and prints the peak of each with the calls in
progress then, and RSS per 1,000 calls over the idle system. Target (issue 15): an edge
holding 10,000 calls under 300 MB.

Run: .venv/bin/python -m tests.bench.bench_hold [--calls N] [--rate R]
(`make bench` runs it with the other benchmarks)
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.bench.bench_calls import (
    CALLED,
    CALLEE_IP,
    CALLER_IP,
    SIPP_BUFFER,
    TOLERATE_LATE_ACK,
    Tandem,
)
from tests.bench.bench_router import rss_mb
from tests.conftest import free_port
from tests.system.sipp import Sipp, SippResult

CALLS = 10_000
RATE = 200
HOLD_S = 70  # longer than CALLS / RATE: the first call is still up when the last is placed
ACTIVE = re.compile(r'^tandem_edge_(calls|legs)_active\{edge="([^"]+)"\} ([0-9.e+]+)$', re.M)


def processes() -> dict[str, int]:
    """tandem's processes by role ('edge edge-pbx', 'callstate', ...) and nats-server."""
    found = {}
    for line in subprocess.run(
        ["ps", "-eo", "pid,args"], capture_output=True, text=True
    ).stdout.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        words = args.split()
        if "tandem.cli" in words:
            role = words[words.index("tandem.cli") + 1]
            if role == "edge":
                role = f"edge {words[words.index('--id') + 1]}"
            if role != "up":
                found[role] = int(pid)
        elif words and words[0].endswith("nats-server"):
            found["nats-server"] = int(pid)
    return found


def in_progress(apis: list[str]) -> dict[str, float]:
    """Calls and legs in progress on each edge, from its /metrics."""
    figures = {}
    for api in apis:
        with httpx.Client(timeout=2) as http:
            for kind, edge, value in ACTIVE.findall(http.get(f"http://{api}/metrics").text):
                figures[f"{edge} {kind}"] = float(value)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=CALLS)
    parser.add_argument("--rate", type=int, default=RATE)
    args = parser.parse_args()
    hold_s = max(HOLD_S, args.calls // args.rate + 20)
    with tempfile.TemporaryDirectory(prefix="bench-hold-") as tmp:
        workdir = Path(tmp)
        callee_port = free_port(CALLEE_IP, socket.SOCK_DGRAM)
        system = Tandem(workdir, callee_port)
        system.start()
        try:
            assert system.up is not None
            apis = [edge["api"] for edge in system.up.config["edges"]]
            time.sleep(2)
            idle = {role: rss_mb(pid) for role, pid in processes().items()}
            common = {"calls": args.calls, "trace": False, "timeout_s": hold_s + 120}
            perf = ("-buff_size", SIPP_BUFFER, "-l", str(args.calls + 100))
            callee = Sipp("uas_answer.xml", workdir, ip=CALLEE_IP, port=callee_port, pause_ms=1000,
                          extra=(*perf, *TOLERATE_LATE_ACK), **common).start()  # fmt: skip
            caller = Sipp("uac_call.xml", workdir, ip=CALLER_IP, remote=system.address,
                          called=CALLED, rate=args.rate, pause_ms=hold_s * 1000, extra=perf,
                          **common)  # fmt: skip
            result: list[SippResult] = []
            placing = threading.Thread(target=lambda: result.append(caller.run()))
            placing.start()
            peak: dict[str, tuple[float, dict[str, float]]] = {}
            most: dict[str, float] = {}
            started = time.monotonic()
            while placing.is_alive() and time.monotonic() - started < args.calls / args.rate + 15:
                time.sleep(1)
                calls = in_progress(apis)
                for key, value in calls.items():
                    most[key] = max(most.get(key, 0.0), value)
                for role, pid in processes().items():
                    rss = rss_mb(pid)
                    if rss > peak.get(role, (0.0, {}))[0]:
                        peak[role] = (rss, calls)
            print(f"{args.calls} calls at {args.rate} calls/s, each held {hold_s} s")
            print("most in progress: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(most.items())))
            print(f"{'process':<18} {'idle MB':>8} {'peak MB':>8} {'MB per 1,000 calls':>19}")
            held = max(most.values(), default=0.0) or 1.0
            for role, (rss, _) in sorted(peak.items()):
                grown = (rss - idle.get(role, rss)) / held * 1000
                print(f"{role:<18} {idle.get(role, 0.0):>8.0f} {rss:>8.0f} {grown:>19.1f}")
            placing.join(hold_s + 180)
            callee.stop()
            completed = result[0].total("Successful call") if result else 0
            print(f"caller: {completed} of {args.calls} calls completed")
        finally:
            system.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
