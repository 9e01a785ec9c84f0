"""How many call events per second one callstate applies (run: make bench, or python -m tests.bench.bench_callstate).

A real nats-server; N calls of 9 events each are on the stream before callstate starts, and
the clock runs until every CDR is written: the catch-up rate after a restart, which bounds
the calls per second callstate keeps up with (a call is 9 events).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tandem import bus
from tandem.callstate.service import Service
from tandem.config import parse_config
from tandem.process import Context
from tests.callstate.edge import FakeEdge
from tests.conftest import NatsServer


async def bench(calls: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = NatsServer(Path(folder))
        server.start()
        try:
            nc = await bus.connect(server.url, "bench")
            js = nc.jetstream()
            await bus.ensure_stores(js)
            edge = FakeEdge(nc, js)
            for start in range(0, calls, 50):
                await asyncio.gather(*(edge.call(f"c{n}") for n in range(start, start + 50)))
            service = Service(Context("callstate", parse_config({}), nc, js, None))
            began = time.perf_counter()
            await service.start()
            while service.cdrs_written < calls:  # noqa: ASYNC110 (polling is the measurement)
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - began
            print(
                f"{calls} calls ({calls * 9} events) in {elapsed:.2f}s: "
                f"{calls * 9 / elapsed:,.0f} events/s, {calls / elapsed:,.0f} calls/s"
            )
            await service.stop()
            await nc.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(bench(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
