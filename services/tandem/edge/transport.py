"""The edge's SIP sockets: one UDP and one TCP listener on the `sip` address, bytes in and out.

Everything above this module sees a message as bytes plus a `Peer` (transport, address);
a new transport (TLS) is one more listener class that feeds the same callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import NamedTuple

from tandem.sip import ParseError, StreamFramer

log = logging.getLogger("tandem.edge.transport")

# A burst of datagrams must wait in the kernel while the loop is busy, not be dropped: the
# default (about 200 KB, a hundred messages) overflows in bursts of a few hundred calls/s.
# Much more would only queue an overload for seconds, retransmissions included, where a
# drop lets the sender's timers and the edge's 503s do their work.
UDP_BUFFER_BYTES = 2 * 1024 * 1024

TCP_CONNECT_TIMEOUT_S = 2.0


class Peer(NamedTuple):
    transport: str  # "udp" or "tcp"
    host: str
    port: int

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port


Receive = Callable[[bytes, Peer], None]
TransportError = Callable[[Peer], None]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, receive: Receive) -> None:
        self.receive = receive

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.receive(data, Peer("udp", addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


class _TcpConnection(asyncio.Protocol):
    def __init__(self, owner: Transports, peer: Peer | None = None) -> None:
        self.owner = owner
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.framer = StreamFramer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.peer is None:
            host, port = transport.get_extra_info("peername")[:2]
            self.peer = Peer("tcp", host, port)
        self.owner.connections[self.peer] = self

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        try:
            for message in self.framer.feed(data):
                self.owner.receive(message, self.peer)
        except ParseError as exc:
            log.info("closing tcp %s: %s", self.peer, exc)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.owner.connections.get(self.peer) is self:
            del self.owner.connections[self.peer]


class Transports:
    """The listeners of one edge, and sending to a peer over the transport it names."""

    def __init__(self, host: str, port: int, receive: Receive, error: TransportError) -> None:
        self.host = host
        self.port = port
        self.receive = receive
        self.error = error
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None
        self.connections: dict[Peer, _TcpConnection] = {}
        self.connecting: dict[Peer, list[bytes]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self.receive), local_addr=(self.host, self.port)
        )
        sock = self.udp.get_extra_info("socket")
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # capped by net.core.[rw]mem_max
                sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
        self.tcp = await loop.create_server(
            lambda: _TcpConnection(self), self.host, self.port, reuse_address=True, backlog=1024
        )

    @property
    def listeners(self) -> list[str]:
        return [f"udp:{self.host}:{self.port}", f"tcp:{self.host}:{self.port}"]

    def send(self, data: bytes, peer: Peer) -> None:
        if peer.transport == "udp":
            if self.udp is not None:
                self.udp.sendto(data, peer.addr)
            return
        connection = self.connections.get(peer)
        if connection is not None and connection.transport is not None:
            connection.transport.write(data)
        elif peer in self.connecting:
            self.connecting[peer].append(data)
        else:
            self.connecting[peer] = [data]
            task = asyncio.create_task(self._connect(peer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connect(self, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _TcpConnection(self, peer), peer.host, peer.port),
                TCP_CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            log.info("tcp connect to %s:%s failed: %s", peer.host, peer.port, exc)
            self.connecting.pop(peer, None)
            self.error(peer)
            return
        for data in self.connecting.pop(peer, []):
            transport.write(data)

    async def stop(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        for task in list(self.tasks):
            task.cancel()
