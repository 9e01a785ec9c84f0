"""The leader lease: which callstate replica applies the call events (one at a time).

The lease is one KV key written with compare-and-set. The holder renews it every sixth of
its time to live and stops leading as soon as half of it has passed without a renewal, well
before another replica may take it over (when the stored expiry has passed), so two
replicas never apply events at once unless their clocks disagree by more than that margin.
Record writes are compare-and-set too (store.py), which fences a leader that missed all this.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tandem import bus

log = logging.getLogger("tandem.callstate")

LEASE_KEY = "leader"
LEASE_TTL_S = 6.0


class Lease:
    def __init__(self, kv: KeyValue, holder: str, ttl_s: float = LEASE_TTL_S) -> None:
        self.kv = kv
        self.holder = holder
        self.ttl_s = ttl_s
        self.revision = 0
        self.valid_until = 0.0  # monotonic

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 6

    @property
    def held(self) -> bool:
        return self.revision != 0 and time.monotonic() < self.valid_until

    def _value(self) -> bytes:
        expires = bus.now_ms() + int(self.ttl_s * 1000)
        return json.dumps({"holder": self.holder, "expires_unix_ms": expires}).encode()

    async def try_acquire(self) -> bool:
        sent = time.monotonic()
        try:
            self.revision = await self.kv.create(LEASE_KEY, self._value())
        except KeyWrongLastSequenceError:
            try:
                entry = await self.kv.get(LEASE_KEY)
            except KeyNotFoundError:
                return False  # released between our two calls: try again next round
            current = json.loads(entry.value or b"{}")
            mine = current.get("holder") == self.holder
            if not mine and current.get("expires_unix_ms", 0) > bus.now_ms():
                return False
            try:
                self.revision = await self.kv.update(LEASE_KEY, self._value(), last=entry.revision)
            except KeyWrongLastSequenceError:
                return False
        self.valid_until = sent + self.ttl_s / 2
        log.info("callstate %s holds the leader lease", self.holder)
        return True

    async def renew(self) -> bool:
        sent = time.monotonic()
        try:
            self.revision = await self.kv.update(LEASE_KEY, self._value(), last=self.revision)
        except KeyWrongLastSequenceError:
            self.revision, self.valid_until = 0, 0.0
            return False
        self.valid_until = sent + self.ttl_s / 2
        return True

    async def release(self) -> None:
        """Give the lease up at once so that a standby replica takes over without waiting."""
        if not self.revision:
            return
        revision, self.revision, self.valid_until = self.revision, 0, 0.0
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self.kv.delete(LEASE_KEY, last=revision)
