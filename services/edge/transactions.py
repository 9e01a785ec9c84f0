"""RFC 3261 transactions (section 17) as the edge needs them, on asyncio timers.

This is the adapter the edge runs until tandem.sip's sans-I/O transaction layer is wired
in: it matches requests and responses to transactions by branch and method, absorbs
retransmissions, retransmits over UDP (timers A, E, G and the 2xx retransmission of 13.3.1.4),
times out (B, F, H) and sends the ACK of a non-2xx final. Finished transactions linger for
64*T1 to absorb late retransmissions, swept in batches rather than one timer each.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from tandem.edge.transport import Peer
from tandem.sip import Request, Response

T1 = 0.5
T2 = 4.0
TIMER_B = 64 * T1  # B, F, H and how long a finished transaction is remembered
SWEEP_S = 1.0
MAGIC_COOKIE = "z9hG4bK"

Key = tuple[str, str]
OnResponse = Callable[[Response | None], None]


def _key(message: Request | Response, method: str) -> Key:
    via = message.headers.get("via") or ""
    branch = message.via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        return branch, method
    # RFC 2543 peers: no unique branch, fall back to the fields that identify the request
    return f"{message.call_id}|{message.from_.tag}|{message.cseq.number}|{via}", method


class ServerTransaction:
    __slots__ = ("interval", "key", "last", "last_status", "on_no_ack", "peer", "request", "timer")

    def __init__(self, key: Key, request: Request, peer: Peer) -> None:
        self.key = key
        self.request = request
        self.peer = peer
        self.last: bytes | None = None  # the last response sent, resent on a retransmission
        self.last_status = 0
        self.timer: asyncio.TimerHandle | None = None
        self.interval = T1
        self.on_no_ack: Callable[[], None] | None = None

    @property
    def final(self) -> bool:
        return self.last_status >= 200


class ClientTransaction:
    __slots__ = (
        "ack",
        "completed",
        "data",
        "deadline",
        "interval",
        "key",
        "on_response",
        "peer",
        "request",
        "timer",
    )

    def __init__(self, key: Key, request: Request, peer: Peer, on_response: OnResponse) -> None:
        self.key = key
        self.request = request
        self.data = bytes(request)
        self.peer = peer
        self.on_response = on_response
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.interval = T1
        self.completed = False
        self.ack: bytes | None = None


class Transactions:
    """Every transaction of one edge, both roles."""

    def __init__(self, send: Callable[[bytes, Peer], None]) -> None:
        self.send = send
        self.server: dict[Key, ServerTransaction] = {}
        self.client: dict[Key, ClientTransaction] = {}
        self._expiring: deque[tuple[float, dict[Key, Any], Key, object]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for stx in self.server.values():
            _cancel(stx.timer)
        for ctx in self.client.values():
            _cancel(ctx.timer)
            _cancel(ctx.deadline)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "Transactions.start() first"
        return self._loop

    # ---- server side ----------------------------------------------------------------------

    def absorb(self, request: Request) -> bool:
        """True if the request belongs to a transaction already running (and was handled)."""
        method = request.method
        if method == "ACK":
            stx = self.server.get(_key(request, "INVITE"))
            if stx is None or not stx.final or 200 <= stx.last_status < 300:
                return False  # the ACK of a 2xx is its own transaction: the dialog's
            _cancel(stx.timer)  # timer G stops: the non-2xx final arrived
            stx.timer = None
            return True
        stx = self.server.get(_key(request, method))
        if stx is None:
            return False
        if stx.last is not None:
            self.send(stx.last, stx.peer)
        return True

    def new_server(self, request: Request, peer: Peer) -> ServerTransaction:
        stx = ServerTransaction(_key(request, request.method), request, peer)
        self.server[stx.key] = stx
        return stx

    def invite_for_cancel(self, cancel: Request) -> ServerTransaction | None:
        return self.server.get(_key(cancel, "INVITE"))

    def respond(self, stx: ServerTransaction, response: Response) -> None:
        data = bytes(response)
        stx.last = data
        stx.last_status = response.status
        self.send(data, stx.peer)
        if response.status < 200:
            return
        self._expire(self.server, stx.key, stx)
        if stx.request.method == "INVITE" and stx.peer.transport == "udp":
            # timer G for a non-2xx final; for a 2xx the UAS core's own retransmission
            stx.interval = T1
            stx.timer = self.loop.call_later(T1, self._retransmit_final, stx, 0.0)

    def acked(self, stx: ServerTransaction) -> None:
        """The ACK of the 2xx arrived (in the dialog): stop retransmitting it."""
        _cancel(stx.timer)
        stx.timer = None

    def _retransmit_final(self, stx: ServerTransaction, elapsed: float) -> None:
        elapsed += stx.interval
        if elapsed >= TIMER_B:  # timer H, or no ACK for the 2xx
            stx.timer = None
            if stx.on_no_ack is not None:
                stx.on_no_ack()
            return
        if stx.last is not None:
            self.send(stx.last, stx.peer)
        stx.interval = min(stx.interval * 2, T2)
        stx.timer = self.loop.call_later(stx.interval, self._retransmit_final, stx, elapsed)

    # ---- client side ----------------------------------------------------------------------

    def send_request(
        self, request: Request, peer: Peer, on_response: OnResponse, timeout: float = TIMER_B
    ) -> ClientTransaction:
        """Send a request (its top Via carries a fresh branch) as a new client transaction.

        `on_response` gets each provisional, the final (every 2xx retransmission too, for
        INVITE, as the dialog must ACK each), or None on timeout or a transport error.
        """
        ctx = ClientTransaction(_key(request, request.method), request, peer, on_response)
        self.client[ctx.key] = ctx
        self.send(ctx.data, peer)
        if peer.transport == "udp":
            ctx.timer = self.loop.call_later(T1, self._retransmit, ctx)
        ctx.deadline = self.loop.call_later(timeout, self._timeout, ctx)
        return ctx

    def stop_retransmitting(self, ctx: ClientTransaction) -> None:
        _cancel(ctx.timer)
        ctx.timer = None

    def receive_response(self, response: Response) -> bool:
        """Hand a response to its transaction; False if none matches (a stray)."""
        try:
            ctx = self.client.get(_key(response, response.cseq.method))
        except ValueError:
            return False
        if ctx is None:
            return False
        status = response.status
        is_invite = ctx.request.method == "INVITE"
        if ctx.completed:
            if is_invite and status >= 300 and ctx.ack is not None:
                self.send(ctx.ack, ctx.peer)  # our ACK was lost
            elif is_invite and status < 300:
                ctx.on_response(response)  # 2xx retransmission: the dialog ACKs again
            return True
        if status < 200:
            if is_invite:
                self.stop_retransmitting(ctx)
            elif ctx.timer is not None:
                ctx.interval = T2 / 2  # timer E continues at T2 after a provisional
            ctx.on_response(response)
            return True
        ctx.completed = True
        self.stop_retransmitting(ctx)
        _cancel(ctx.deadline)
        ctx.deadline = None
        if is_invite and status >= 300:
            ctx.ack = bytes(ack_for(ctx.request, response))
            self.send(ctx.ack, ctx.peer)
        self._expire(self.client, ctx.key, ctx)
        ctx.on_response(response)
        return True

    def transport_failed(self, peer: Peer) -> None:
        """A connection to the peer could not be made: its pending transactions fail."""
        for ctx in [c for c in self.client.values() if c.peer == peer and not c.completed]:
            self._timeout(ctx)

    def _retransmit(self, ctx: ClientTransaction) -> None:
        self.send(ctx.data, ctx.peer)
        ctx.interval *= 2
        if ctx.request.method != "INVITE":
            ctx.interval = min(ctx.interval, T2)
        ctx.timer = self.loop.call_later(ctx.interval, self._retransmit, ctx)

    def _timeout(self, ctx: ClientTransaction) -> None:
        self.stop_retransmitting(ctx)
        _cancel(ctx.deadline)
        ctx.completed = True
        self.client.pop(ctx.key, None)
        ctx.on_response(None)

    # ---- lingering --------------------------------------------------------------------------

    def _expire(self, table: dict[Key, Any], key: Key, value: object) -> None:
        self._expiring.append((self.loop.time() + TIMER_B, table, key, value))

    def _sweep(self) -> None:
        now = self.loop.time()
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            _, table, key, value = expiring.popleft()
            if table.get(key) is value:
                del table[key]
                timer = getattr(value, "timer", None)
                _cancel(timer)
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)


def ack_for(invite: Request, response: Response) -> Request:
    """The ACK of a non-2xx final (RFC 3261 17.1.1.3): same branch, the response's To."""
    headers = [
        ("Via", invite.headers.get("via") or ""),
        ("Max-Forwards", "70"),
        ("From", invite.headers.get("from") or ""),
        ("To", response.headers.get("to") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.number} ACK"),
    ]
    headers += [("Route", value) for value in invite.headers.get_all("route")]
    return Request("ACK", invite.uri, headers)


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()
