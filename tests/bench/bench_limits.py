"""What a limited trunk's place costs (run: make bench, or python -m tests.bench.bench_limits).

A real nats-server; two edges' `Limits` take places on one trunk and free them: one at a
time (the latency a call pays before routing or before its leg), then both edges at once
with 100 calls each in flight (compare-and-set races between them), as calls per second.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from tandem import bus
from tandem.edge.limits import Limits
from tests.conftest import NatsServer


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    asyncio.get_running_loop().create_task(coro)


async def bench(calls: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = NatsServer(Path(folder))
        server.start()
        try:
            nc = await bus.connect(server.url, "bench")
            js = nc.jetstream()
            await bus.ensure_stores(js)
            a, b = (Limits(edge, lambda e: True, spawn) for edge in ("edge-a", "edge-b"))
            await a.start(js)
            await b.start(js)
            began = time.perf_counter()
            for _ in range(calls):
                assert await a.reserve("gw", calls)
                await a._released("gw")
            each = (time.perf_counter() - began) / calls
            print(f"one at a time: reserve + release {each * 1e3:.2f} ms ({calls} calls)")

            async def edge(limits: Limits, n: int) -> int:
                placed = 0
                for _ in range(n // 100):
                    got = await asyncio.gather(*(limits.reserve("gw", 10**6) for _n in range(100)))
                    placed += sum(got)
                    await asyncio.gather(*(limits._released("gw") for _n in range(100)))
                return placed

            began = time.perf_counter()
            placed = sum(await asyncio.gather(edge(a, calls), edge(b, calls)))
            elapsed = time.perf_counter() - began
            print(
                f"two edges racing, 100 in flight each: {placed} places taken and freed in "
                f"{elapsed:.2f} s, {placed / elapsed:,.0f} calls/s"
            )
            await nc.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(bench(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
