"""A trunk's `max_concurrent_calls`, held across every edge.

Each limited trunk has one record in KV TANDEM_TRUNK_CALLS: the calls each edge has on it
now, in both directions (`{"edge-a": 12, "edge-b": 30}`). An edge reserves a call before it
starts one (the ingress edge before routing it, the serving edge before creating a leg) by
writing its own count plus one with compare-and-set against the revision it read, and only
while the counts of the live edges leave room: two edges racing for the last place cannot
both win it. An edge writes its own count, never an increment, so a record it rewrites
always says what it really holds. A call's end writes the count less one.

A dead edge's count is reclaimed: an edge that has not heartbeated for the time that makes
it lost (`live`) is left out of the sum and of the next write. A restarted edge holds no
calls, and zeroes its counts before it takes any. When NATS cannot be asked, the call is
refused: a limit that may not hold is not a limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from tandem import bus

log = logging.getLogger("tandem.edge.limits")

WRITE_TRIES = 50  # compare-and-set rounds lost to other edges before a reserve gives up
CONFLICT_WAIT_S = 0.001  # after a lost round, up to this long (random) before the next
TIMEOUT_S = 2.0  # one KV request


class Limits:
    def __init__(
        self,
        edge: str,
        live: Callable[[str], bool],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self.edge = edge
        self.live = live  # is this edge alive (its heartbeats)?
        self.spawn = spawn
        self.held: Counter[str] = Counter()  # this edge's calls, by limited trunk
        self._kv: KeyValue | None = None
        self._locks: dict[str, asyncio.Lock] = {}  # one write at a time per trunk

    async def start(self, js: JetStreamContext) -> None:
        """Zero this edge's counts: it holds no call yet (it may have been restarted)."""
        self._kv = await js.key_value(bus.TRUNK_CALLS_BUCKET)
        try:
            trunks = await self._kv.keys()
        except NoKeysError:
            trunks = []
        for trunk in trunks:
            await self._write(trunk, 0)

    async def reserve(self, trunk: str, limit: int) -> bool:
        """A place for one more call on the trunk, if its live edges leave one."""
        try:
            return await self._write(trunk, 1, limit)
        except Exception as exc:
            log.warning("trunk %s: its limit cannot be checked (%r): call refused", trunk, exc)
            return False

    def release(self, trunk: str) -> None:
        """A call that held a place has ended: the place is free (written off the SIP path)."""
        self.spawn(self._released(trunk))

    async def _released(self, trunk: str) -> None:
        try:
            await self._write(trunk, -1)
        except Exception as exc:  # the next write for the trunk puts our count right
            log.warning("trunk %s: a freed place not written (%r)", trunk, exc)

    async def _write(self, trunk: str, change: int, limit: int | None = None) -> bool:
        lock = self._locks.setdefault(trunk, asyncio.Lock())
        async with lock:
            mine = max(0, self.held[trunk] + change)
            for _ in range(WRITE_TRIES):
                counts, revision = await self._read(trunk)
                others = {e: n for e, n in counts.items() if e != self.edge and self.live(e)}
                if limit is not None and sum(others.values()) + mine > limit:
                    return False
                record = {**others, self.edge: mine} if mine else others
                if record == counts:
                    break  # nothing to write (a restart's zero is there already)
                try:
                    await self._put(trunk, json.dumps(record).encode(), revision)
                except KeyWrongLastSequenceError:  # another edge wrote first: read again
                    await asyncio.sleep(random.uniform(0, CONFLICT_WAIT_S))
                    continue
                break
            else:
                log.warning("trunk %s: its call count kept changing; call refused", trunk)
                return False
            self.held[trunk] = mine
            return True

    async def _read(self, trunk: str) -> tuple[dict[str, int], int]:
        assert self._kv is not None
        try:
            entry = await asyncio.wait_for(self._kv.get(trunk), TIMEOUT_S)
        except KeyNotFoundError:
            return {}, 0
        counts = json.loads(entry.value or b"{}")
        return {str(e): int(n) for e, n in counts.items()}, entry.revision or 0

    async def _put(self, trunk: str, record: bytes, revision: int) -> None:
        assert self._kv is not None
        if revision:
            await asyncio.wait_for(self._kv.update(trunk, record, last=revision), TIMEOUT_S)
        else:
            await asyncio.wait_for(self._kv.create(trunk, record), TIMEOUT_S)
