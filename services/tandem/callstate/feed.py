"""A durable pull consumer's messages in batches, with a pull request always open.

nats.py's `fetch` waits for each message with its own timer task, which costs more than
callstate's whole handling of an event; this keeps one pull request open (as nats.go's
`Consume` does) and collects what it delivers on a plain subscription, so a batch is
whatever arrived while the previous one was being applied, or, when little did, in the
next LINGER_S: a call's events come within milliseconds of each other, and applied in one
batch they cost one write of its record instead of one per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

PULL_BATCH = 512
LINGER_S = 0.025  # a small batch waits this long for more (records lag by as much)
SMALL_BATCH = 64
PULL_EXPIRES_S = 5.0
STATUS = "Status"  # 404 no messages, 408 request expired, 409 consumer gone or changed
DESCRIPTION = "Description"  # what the status says: "Consumer Deleted", "Leadership Change"


class Feed:
    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = nc.new_inbox()
        self.buffer: list[Msg] = []
        self.arrived = asyncio.Event()
        self.outstanding = 0  # messages the open pull request may still deliver
        self.pull_ends = 0.0  # monotonic; after it, the pull is over even if no status came
        self.sub: Subscription | None = None
        self.gone = False  # the consumer was deleted or changed under us

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):  # a closed connection has no subscription
                await self.sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        if msg.headers and STATUS in msg.headers:
            self.outstanding = 0
            # a 409 also ends a pull when the consumer moves to a new leader (a NATS server
            # died) or its server shuts down: pull again; only a deleted consumer is gone
            description = msg.headers.get(DESCRIPTION, "")
            deleted = "Deleted" in description or not description
            self.gone = self.gone or (msg.headers[STATUS] == "409" and deleted)
        else:
            self.buffer.append(msg)
            self.outstanding -= 1
        self.arrived.set()

    async def _pull_if_idle(self) -> None:
        if self.outstanding > 0 and time.monotonic() < self.pull_ends:
            return
        self.outstanding = PULL_BATCH
        self.pull_ends = time.monotonic() + PULL_EXPIRES_S
        request = {"batch": PULL_BATCH, "expires": int(PULL_EXPIRES_S * 1e9)}
        await self.nc.publish(self.subject, json.dumps(request).encode(), reply=self.inbox)

    async def next_batch(self, timeout_s: float) -> list[Msg]:
        """Everything delivered so far, in stream order; waits up to timeout_s for something."""
        await self._pull_if_idle()
        if not self.buffer:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout_s)
        if 0 < len(self.buffer) < SMALL_BATCH:
            await asyncio.sleep(LINGER_S)
        batch, self.buffer = self.buffer, []
        if not batch and self.gone:
            raise ConsumerGoneError(self.subject)
        await self._pull_if_idle()  # the next batch arrives while this one is applied
        return batch


class ConsumerGoneError(Exception):
    """The consumer was deleted or replaced (another leader): stop and recover."""
