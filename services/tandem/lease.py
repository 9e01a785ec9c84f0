"""A lease: one holder at a time of a role (callstate's leader, the prober of a trunk).

The lease is one KV key written with compare-and-set. The holder renews it every sixth of
its time to live and stops acting as soon as half of it has passed without a renewal, well
before another may take it over (when the stored expiry has passed), so two holders never
act at once unless their clocks disagree by more than that margin. Callstate's record
writes are compare-and-set too (callstate/store.py), which fences a leader that missed this.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tandem import bus

log = logging.getLogger("tandem.lease")


class Lease:
    def __init__(self, kv: KeyValue, holder: str, key: str, ttl_s: float) -> None:
        self.kv = kv
        self.holder = holder
        self.key = key
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
            self.revision = await self.kv.create(self.key, self._value())
        except KeyWrongLastSequenceError:
            try:
                entry = await self.kv.get(self.key)
            except KeyNotFoundError:
                return False  # released between our two calls: try again next round
            current = json.loads(entry.value or b"{}")
            mine = current.get("holder") == self.holder
            if not mine and current.get("expires_unix_ms", 0) > bus.now_ms():
                return False
            try:
                self.revision = await self.kv.update(self.key, self._value(), last=entry.revision)
            except KeyWrongLastSequenceError:
                return False
        self.valid_until = sent + self.ttl_s / 2
        log.info("%s holds the lease %s", self.holder, self.key)
        return True

    async def renew(self) -> bool:
        sent = time.monotonic()
        try:
            self.revision = await self.kv.update(self.key, self._value(), last=self.revision)
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
            await self.kv.delete(self.key, last=revision)
