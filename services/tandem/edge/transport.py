"""The edge's SIP sockets: UDP and TCP listeners on the `sip` address, optionally a TLS one
on `sip_tls`, and connections to peers; bytes in and out.

Everything above this module sees a message as bytes plus a `Peer` (transport, address).
Stream connections are reused per peer. On TLS (RFC 3261 26, RFC 5630) a connection we
open is verified against the name the caller gives (SNI too) and presents our
certificate for mutual TLS; one we accept verifies a client certificate when one is
presented, and `certificate_names(peer)` gives its names while the message is handled.
TLS flows are kept alive by RFC 5626 3.5.1 double-CRLF pings from the side that opened
them, answered with one CRLF. A failure to connect, a handshake or verification failure
or a dead flow calls `error(peer)`; `last_failure(peer)` says why.

TLS runs here on an `ssl.SSLObject` over memory BIOs rather than in the event loop:
uvloop's `start_tls` does not complete a server-side handshake, and neither loop lets a
server see why a handshake failed; this way both loops behave alike and every failure
has its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple, cast

from tandem.sip import ParseError, StreamFramer
from tandem.tls import TlsContexts, TlsError, certificate_names, failure_reason

log = logging.getLogger("tandem.edge.transport")

# A burst of datagrams must wait in the kernel while the loop is busy, not be dropped: the
# default (about 200 KB, a hundred messages) overflows in bursts of a few hundred calls/s.
# Much more would only queue an overload for seconds, retransmissions included, where a
# drop lets the sender's timers and the edge's 503s do their work.
UDP_BUFFER_BYTES = 2 * 1024 * 1024

TCP_CONNECT_TIMEOUT_S = 2.0
TLS_CONNECT_TIMEOUT_S = 5.0  # connect and handshake
TLS_HANDSHAKE_TIMEOUT_S = 5.0  # of a connection we accepted
# RFC 5626 4.4.1 suggests 95-120 s on TCP; SBCs and NATs in front of trunks often drop a
# flow idle for 60 s, hence shorter. A peer that answered a ping once must answer each
# within PONG_TIMEOUT_S; one that never answers (no RFC 5626) is only kept warm.
KEEPALIVE_S = 30.0
PONG_TIMEOUT_S = 10.0
MAX_FAILURES = 1024  # peers whose last failure is remembered
TLS_READ = 65536
PING, PONG = b"\r\n\r\n", b"\r\n"


class Peer(NamedTuple):
    transport: str  # "udp", "tcp" or "tls"
    host: str
    port: int
    # came in on the address the edge shares with other workers (SO_REUSEPORT): what
    # answers it leaves from there (RFC 3581 4); every request leaves from the edge's own
    shared: bool = False

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def target(self) -> tuple[str, str, int]:
        """Where a request to this peer goes (never by the shared address: no `shared`)."""
        return self.transport, self.host, self.port


Receive = Callable[[bytes, Peer], None]
TransportError = Callable[[Peer], None]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: Transports, shared: bool) -> None:
        self.receive = owner.receive
        self.owner = owner
        self.shared = shared

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[1] == self.owner.probe_from[1] and addr[0] == self.owner.probe_from[0]:
            self.owner.probed()  # our own: no peer can send from our probe's port
            return
        self.receive(data, Peer("udp", addr[0], addr[1], self.shared))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, framed into messages for the owner's `receive`.

    It joins `owner.connections` once usable (TLS: handshake done); `ready` completes then,
    or fails with the reason.
    """

    def __init__(
        self,
        owner: Transports,
        peer: Peer | None = None,
        *,
        outbound: bool = False,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.owner = owner
        self.peer = peer
        self.outbound = outbound
        self.transport: asyncio.Transport | None = None
        self.framer = StreamFramer()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.got_data = False
        self.names: tuple[str, ...] = ()  # a TLS peer's certificate names
        self.timer: asyncio.TimerHandle | None = None
        self.pong_due = False
        self.answers_pings = False
        self.tls: ssl.SSLObject | None = None
        if tls is not None:
            self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = tls.wrap_bio(self._in, self._out, not outbound, server_name)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no asyncio.Transport subclasses (an isinstance check
        # failed every TCP connection on uvloop), but have the same methods
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            host, port = transport.get_extra_info("peername")[:2]
            self.peer = Peer("tcp" if self.tls is None else "tls", host, port)
        if self.tls is None:
            self._usable()
        else:
            self._arm(TLS_HANDSHAKE_TIMEOUT_S, lambda: self._fail("tls: handshake timeout"))
            self._handshake()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        if self.tls is None:
            self.transport.write(data)
        else:
            self.tls.write(data)
            self._flush()

    def data_received(self, data: bytes) -> None:
        self.got_data = True
        if self.tls is None:
            self._received(data)
            return
        if self.closed:
            return
        self._in.write(data)
        if not self.ready.done() and not self._handshake():
            return
        plain = []
        while not self.closed:
            try:
                chunk = self.tls.read(TLS_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                assert self.transport is not None
                self.transport.close()
                break
            except ssl.SSLError as exc:  # e.g. a TLS 1.3 server refusing our certificate
                self._fail(failure_reason(exc))
                return
            if not chunk:
                break
            plain.append(chunk)
        self._flush()  # post-handshake messages (tickets, key updates)
        if plain:
            self._received(b"".join(plain))

    def _handshake(self) -> bool:
        assert self.tls is not None
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._flush()  # the alert tells the peer why
            self._fail(failure_reason(exc))
            return False
        self._flush()
        self._usable()
        return True

    def _flush(self) -> None:
        assert self.transport is not None
        if self._out.pending:
            self.transport.write(self._out.read())

    def _usable(self) -> None:
        assert self.peer is not None
        if self.timer is not None:
            self.timer.cancel()
        self.owner.connections[self.peer] = self
        if self.tls is not None:
            self.names = certificate_names(self.tls.getpeercert())
            if self.outbound and self.owner.keepalive_s > 0:
                self._arm(self.owner.keepalive_s, self._ping)
        if not self.ready.done():  # done: cancelled by a connect timeout
            self.ready.set_result(None)

    def _received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        if self.pong_due:  # anything from the peer shows the flow is alive
            self.pong_due = False
            self.answers_pings = self.answers_pings or not data.strip(b"\r\n")
        try:
            messages = self.framer.feed(data)
        except ParseError as exc:
            log.info("closing %s %s: %s", self.peer.transport, self.peer, exc)
            self.transport.close()
            return
        if self.tls is not None and not self.outbound and (pings := self.framer.take_pings()):
            self.write(PONG * pings)
        for message in messages:
            self.owner.receive(message, self.peer)

    def _fail(self, reason: str) -> None:
        """Close for a TLS reason; the caller of `_connect` reports a connect that failed."""
        if self.closed:
            return
        self.closed = True
        assert self.transport is not None and self.peer is not None
        self.transport.abort()
        if self.owner.connections.get(self.peer) is self:
            del self.owner.connections[self.peer]  # no more sends on it
        if self.outbound and not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        else:
            self.owner.failed(self.peer, reason, report=self.outbound)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.peer is not None and self.owner.connections.get(self.peer) is self:
            del self.owner.connections[self.peer]
        handshaking = self.tls is not None and not self.ready.done() and not self.closed
        # a peer that closes before saying anything (a TCP health check) is no failure
        if handshaking and (self.outbound or self.got_data):
            self._fail("tls: connection closed during the handshake")
        self.closed = True

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self.timer = asyncio.get_running_loop().call_later(delay, callback)

    def _ping(self) -> None:
        self.write(PING)
        self.pong_due = True
        self._arm(self._pong_wait, self._pong_check)

    @property
    def _pong_wait(self) -> float:
        return min(PONG_TIMEOUT_S, self.owner.keepalive_s / 2)

    def _pong_check(self) -> None:
        if self.pong_due and self.answers_pings:
            self._fail("keepalive: no pong")
            return
        self._arm(self.owner.keepalive_s - self._pong_wait, self._ping)


class Transports:
    """The listeners of one edge, and sending to a peer over the transport it names.

    With `own_port` the edge is one worker of several on `host:port`: its UDP, TCP and TLS
    listeners there share the address (SO_REUSEPORT), so the kernel gives each new flow to
    one worker by a hash of the sender's address and port, and it has UDP and TCP
    listeners of its own on `own_port`, which its Via and Contact name. Its requests leave
    from its own socket, so their responses and the dialogs' next requests come back to it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        receive: Receive,
        error: TransportError,
        *,
        tls: TlsContexts | None = None,
        tls_listen: tuple[str, int] | None = None,
        keepalive_s: float = KEEPALIVE_S,
        probed: Callable[[], None] = lambda: None,
        own_port: int | None = None,
    ) -> None:
        """`probed` is called when a datagram of `probe()` has come through the UDP socket."""
        self.host = host
        self.port = port
        self.own_port = own_port
        self.receive = receive
        self.error = error
        self.tls = tls if tls is not None else TlsContexts()  # no certificate: client only
        self.tls_listen = tls_listen
        self.keepalive_s = keepalive_s
        self.udp: asyncio.DatagramTransport | None = None  # ours: what every request leaves by
        self.shared: asyncio.DatagramTransport | None = None  # with own_port: the sip address
        self.tcp: asyncio.Server | None = None
        self.own_tcp: asyncio.Server | None = None
        self.tls_server: asyncio.Server | None = None
        self.connections: dict[Peer, _Stream] = {}
        self.connecting: dict[Peer, list[bytes]] = {}
        self.failures: dict[Peer, str] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.probed = probed
        self._probe: socket.socket | None = None
        self.probe_from: tuple[str, int] = ("", -1)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        reuse_port = self.own_port is not None
        self.udp = await self._udp(self.own_port or self.port, shared=False)
        if reuse_port:
            self.shared = await self._udp(self.port, shared=True)
            self.own_tcp = await loop.create_server(
                lambda: _Stream(self), self.host, self.own_port, reuse_address=True, backlog=1024
            )
        # on a shared address the kernel would hand the probe to any worker: ours it is
        self._start_probe(self.udp.get_extra_info("socket"))
        self.tcp = await loop.create_server(
            lambda: _Stream(self),
            self.host,
            self.port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=1024,
        )
        if self.tls_listen is not None:
            self.tls.server()  # refuse to start without a usable certificate
            host, port = self.tls_listen
            self.tls_server = await loop.create_server(
                # the context is asked for per connection: it follows rotated files
                lambda: _Stream(self, tls=self.tls.server()),
                host,
                port,
                reuse_address=True,
                reuse_port=reuse_port,
                backlog=1024,
            )

    async def _udp(self, port: int, shared: bool) -> asyncio.DatagramTransport:
        udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Udp(self, shared), local_addr=(self.host, port), reuse_port=shared or None
        )
        sock = udp.get_extra_info("socket")
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # capped by net.core.[rw]mem_max
                sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
        return udp

    def _start_probe(self, sock: socket.socket) -> None:
        bound = sock.getsockname()
        target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound[0], bound[0])
        probe = socket.socket(sock.family, socket.SOCK_DGRAM)
        try:
            probe.setblocking(False)
            probe.connect((target, bound[1]))
        except OSError as exc:  # the edge runs, without the socket queue among its signals
            log.warning("no probe of the UDP queue at %s: %s", target, exc)
            probe.close()
        else:
            self._probe, self.probe_from = probe, probe.getsockname()[:2]

    def probe(self) -> None:
        """A datagram to our own UDP socket, where it queues behind what the kernel holds:
        `probed` is called when the edge reads it (a CRLF, were it ever taken for SIP)."""
        if self._probe is not None:
            with contextlib.suppress(OSError):  # a full buffer: the probe counts as lost
                self._probe.send(PONG)

    @property
    def listeners(self) -> list[str]:
        listeners = [f"udp:{self.host}:{self.port}", f"tcp:{self.host}:{self.port}"]
        if self.own_port is not None:
            listeners += [f"udp:{self.host}:{self.own_port}", f"tcp:{self.host}:{self.own_port}"]
        if self.tls_listen is not None:
            listeners.append(f"tls:{self.tls_listen[0]}:{self.tls_listen[1]}")
        return listeners

    def send(
        self, data: bytes, peer: Peer, *, server_name: str | None = None, verify: bool = True
    ) -> None:
        """Send to a peer; a stream is opened when there is none (TLS: verified against
        `server_name`, else the peer's address, unless `verify` is false) and reused."""
        if peer.transport == "udp":
            udp = self.shared if peer.shared else self.udp
            if udp is not None:
                udp.sendto(data, peer.addr)
            return
        connection = self.connections.get(peer)
        if connection is not None:
            connection.write(data)
        elif peer in self.connecting:
            self.connecting[peer].append(data)
        else:
            self.connecting[peer] = [data]
            self._spawn(self._connect(peer, server_name, verify))

    def certificate_names(self, peer: Peer) -> tuple[str, ...]:
        """The names in the certificate of the TLS connection with this peer (RFC 5922 7.1);
        () when there is none. Asked from `receive`, it is the sender's certificate."""
        connection = self.connections.get(peer)
        return connection.names if connection is not None else ()

    def last_failure(self, peer: Peer) -> str | None:
        """Why the last connection to or from this peer failed, for the trunk's health."""
        return self.failures.get(peer)

    def failed(self, peer: Peer, reason: str, *, report: bool) -> None:
        log.info("%s %s:%s failed: %s", peer.transport, peer.host, peer.port, reason)
        if len(self.failures) >= MAX_FAILURES and peer not in self.failures:
            del self.failures[next(iter(self.failures))]  # inbound failures must not grow it
        self.failures[peer] = reason
        if report:
            self.error(peer)

    def _source_for(self, peer: Peer) -> tuple[str, int] | None:
        """Connections leave from the listening address, as the peer's ACL expects (the
        kernel's choice on a wildcard listener, or across address families)."""
        if self.host in ("0.0.0.0", "::", "") or (":" in self.host) != (":" in peer.host):
            return None
        return self.host, 0

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, peer: Peer, server_name: str | None, verify: bool) -> None:
        loop = asyncio.get_running_loop()
        tls = peer.transport == "tls"
        stream: _Stream | None = None
        try:
            async with asyncio.timeout(TLS_CONNECT_TIMEOUT_S if tls else TCP_CONNECT_TIMEOUT_S):
                context = self.tls.client(verify) if tls else None
                name = server_name or peer.host
                _, stream = await loop.create_connection(
                    lambda: _Stream(self, peer, outbound=True, tls=context, server_name=name),
                    peer.host,
                    peer.port,
                    local_addr=self._source_for(peer),
                )
                await stream.ready
        except (OSError, TimeoutError, TlsError) as exc:  # ConnectionError: the TLS reason
            if stream is not None and stream.transport is not None and not stream.closed:
                stream.closed = True
                stream.transport.abort()  # a handshake that took too long
            self.connecting.pop(peer, None)
            self.failed(peer, failure_reason(exc), report=True)
            return
        self.failures.pop(peer, None)
        for data in self.connecting.pop(peer, []):
            stream.write(data)

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.close()
        for server in (self.udp, self.shared, self.tcp, self.own_tcp, self.tls_server):
            if server is not None:
                server.close()
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        for task in list(self.tasks):
            task.cancel()
