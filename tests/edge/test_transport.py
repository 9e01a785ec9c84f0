"""The edge's plain sockets (tandem.edge.transport): UDP and TCP between two real Transports,
on asyncio and on uvloop, which the processes run on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from tandem.edge.transport import Peer, Transports
from tests.conftest import free_port

MSG = b"OPTIONS sip:gw SIP/2.0\r\nCall-ID: c1\r\nContent-Length: 0\r\n\r\n"
WAIT_S = 5.0


async def exchange(transport: str) -> None:
    got_a: asyncio.Queue[tuple[bytes, Peer]] = asyncio.Queue()
    got_b: asyncio.Queue[tuple[bytes, Peer]] = asyncio.Queue()
    a = Transports("127.0.0.1", free_port(), lambda d, p: got_a.put_nowait((d, p)), print)
    b = Transports("127.0.0.1", free_port(), lambda d, p: got_b.put_nowait((d, p)), print)
    await a.start()
    await b.start()
    try:
        to_a = Peer(transport, "127.0.0.1", a.port)
        b.send(MSG, to_a)
        ping = b"\r\n\r\n" if transport == "tcp" else b""
        b.send(ping + MSG, to_a)  # a ping between messages is swallowed
        data, from_b = await asyncio.wait_for(got_a.get(), WAIT_S)
        assert (data, from_b.transport, from_b.host) == (MSG, transport, "127.0.0.1")
        assert (await asyncio.wait_for(got_a.get(), WAIT_S)) == (MSG, from_b)
        a.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", from_b)
        data, back = await asyncio.wait_for(got_b.get(), WAIT_S)
        assert back == to_a and data.startswith(b"SIP/2.0 200")  # TCP: on the same connection
        assert got_b.empty()  # no pong on TCP: its behaviour is as it was
        if transport == "tcp":
            assert list(b.connections) == [to_a] and list(a.connections) == [from_b]
            assert a.certificate_names(from_b) == ()
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_messages_both_ways(loop: str, transport: str) -> None:
    run: Callable[[Coroutine[Any, Any, None]], None] = (
        uvloop.run if loop == "uvloop" else asyncio.run
    )
    run(exchange(transport))


async def test_a_tcp_peer_that_refuses_is_reported() -> None:
    errors: asyncio.Queue[Peer] = asyncio.Queue()
    edge = Transports("127.0.0.1", free_port(), lambda d, p: None, errors.put_nowait)
    await edge.start()
    nobody = Peer("tcp", "127.0.0.1", free_port())
    try:
        edge.send(MSG, nobody)
        assert await asyncio.wait_for(errors.get(), WAIT_S) == nobody
        assert edge.last_failure(nobody) == "connection refused"
        assert edge.listeners == [f"udp:127.0.0.1:{edge.port}", f"tcp:127.0.0.1:{edge.port}"]
    finally:
        await edge.stop()
