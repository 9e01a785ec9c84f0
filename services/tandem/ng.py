"""rtpengine's NG control protocol: bencode, and a client of one instance over UDP.

A request is `<cookie> <bencoded dictionary>` with at least a `command`; the reply carries
the same cookie and a `result` (`ok`, `pong`, or `error` with an `error-reason`). The client
keeps one socket per instance, matches replies to requests by cookie, and retransmits a
request that gets no reply with the same cookie (rtpengine answers a retransmission from
its cookie cache without doing it twice), giving up after the last try.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import typing
from typing import Any

log = logging.getLogger("tandem.ng")

RETRANSMIT_S = 0.5  # wait this long for a reply before sending the request again ...
TRIES = 3  # ... this many times in all: a request gives up after 1.5 s
MAX_DATAGRAM = 65535


class NgError(Exception):
    """rtpengine answered `error`; the message is its error-reason."""


class NgTimeout(Exception):
    """No reply after every try: the instance is down, or unreachable from here."""


# ---- bencode ----------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    """Bencode a dict, list, str, bytes, int or bool (dictionary keys in sorted order)."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list | tuple):
        return b"l" + b"".join(encode(item) for item in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(encode(k) + encode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Any:
    """The value of one bencoded document; byte strings come back as str (SDP included,
    surrogate-escaped where it is not UTF-8). Raises ValueError on anything malformed."""
    try:
        value, end = _decode(data, 0)
    except (IndexError, ValueError, RecursionError) as exc:
        raise ValueError(f"malformed bencode: {exc}") from None
    if end != len(data):
        raise ValueError("malformed bencode: trailing bytes")
    return value


_I, _L, _D, _E = b"ilde"  # as byte values: data[at] is an int


def _decode(data: bytes, at: int) -> tuple[Any, int]:
    kind = data[at]
    if kind == _I:
        end = data.index(b"e", at)
        return int(data[at + 1 : end]), end + 1
    if kind == _L:
        at += 1
        items = []
        while data[at] != _E:
            item, at = _decode(data, at)
            items.append(item)
        return items, at + 1
    if kind == _D:
        at += 1
        found = {}
        while data[at] != _E:
            key, at = _decode(data, at)
            if data[at] == _E:
                raise ValueError("a dictionary key without a value")
            found[str(key)], at = _decode(data, at)
        return found, at + 1
    colon = data.index(b":", at)
    start = colon + 1
    end = start + int(data[at:colon])
    if end > len(data) or end < start:
        raise ValueError("a string past the end")
    return data[start:end].decode("utf-8", "surrogateescape"), end


# ---- the client -------------------------------------------------------------------------


class NgClient(asyncio.DatagramProtocol):
    """One rtpengine instance's NG port, from one UDP socket of ours."""

    def __init__(
        self, host: str, port: int, retransmit_s: float = RETRANSMIT_S, tries: int = TRIES
    ) -> None:
        self.address = (host, port)
        self.retransmit_s = retransmit_s
        self.tries = tries
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self.timers: dict[bytes, asyncio.TimerHandle] = {}  # retransmissions after the first
        self._cookies = (f"{os.getpid():x}{os.urandom(3).hex()}_{n}" for n in itertools.count())

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, remote_addr=self.address)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(NgTimeout("client closed"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        cookie, _, body = data.partition(b" ")
        future = self.waiting.get(cookie)
        if future is None or future.done():
            return  # a late reply to a retransmission, or to a request given up
        try:
            reply = decode(body)
        except ValueError as exc:
            log.warning("rtpengine %s:%d sent an unreadable reply: %s", *self.address, exc)
            return
        if isinstance(reply, dict):
            future.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: nothing listens there now; the request times out as usual
        log.debug("rtpengine %s:%d: %r", *self.address, exc)

    async def request(self, command: str, **arguments: Any) -> dict[str, Any]:
        """Send `command` with its arguments (keys as NG names them); its reply dictionary,
        or NgError (an error result), or NgTimeout (no reply)."""
        if self.transport is None or self.transport.is_closing():
            try:
                await self.open()
            except OSError as exc:  # its name does not resolve, no route: as good as silent
                raise NgTimeout(f"cannot reach {self.address[0]}: {exc}") from None
        assert self.transport is not None
        cookie = next(self._cookies).encode()
        message = cookie + b" " + encode({"command": command, **arguments})
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.waiting[cookie] = future
        self._again(cookie, message, self.tries)
        try:
            reply = await future
        finally:
            self.waiting.pop(cookie, None)
            timer = self.timers.pop(cookie, None)
            if timer is not None:
                timer.cancel()
        if reply.get("result") == "error":
            raise NgError(str(reply.get("error-reason") or "error"))
        return reply

    def _again(self, cookie: bytes, message: bytes, left: int) -> None:
        """Send the request (again: the same cookie) and wait for its reply, or give up when
        no try is left."""
        future = self.waiting.get(cookie)
        if future is None or future.done():
            return
        if left <= 0:
            future.set_exception(NgTimeout(f"no reply after {self.tries} tries"))
            return
        if self.transport is not None:
            self.transport.sendto(message)
        loop = asyncio.get_running_loop()
        self.timers[cookie] = loop.call_later(
            self.retransmit_s, self._again, cookie, message, left - 1
        )
