"""The RFC 3261 section 17 transaction layer: four state machines, their timers, matching.

Everything that changes a transaction's state lives in this file. The layer takes the
time as an argument and does no I/O: `receive` and `handle_timer` return events, the
bytes to send wait in `datagrams_to_send()`, and `get_timer()` says when to call
`handle_timer` next (the aioquic pattern). INVITE transactions follow RFC 6026: a 2xx
moves them to Accepted (timers L and M) instead of ending them, so retransmitted
INVITEs and 2xx are absorbed or passed up instead of starting new transactions.

The INVITE server transaction also retransmits its 2xx until the ACK arrives (the UAS
core's duty, RFC 3261 13.3.1.4) on timer G's schedule, so a B2BUA leg needs no timer
of its own for that.
"""

from __future__ import annotations

import heapq
import secrets
from dataclasses import dataclass
from enum import Enum

from tandem.sip.headers import Headers, Via
from tandem.sip.message import ParseError, Request, Response, make_response, parse

Addr = tuple[str, int]
TransactionKey = tuple[str, ...]
MAGIC_COOKIE = "z9hG4bK"


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 64 random bits."""
    return MAGIC_COOKIE + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Timers:
    """T1 (RTT estimate), T2 (cap on non-INVITE retransmits), T4 (network lifetime), seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU. `key` names its server transaction, to `respond` to it.

    An ACK has no transaction of its own: its `key` is the INVITE's it acknowledges (a
    2xx that the layer stops retransmitting), or None when it matches none.
    """

    key: TransactionKey | None
    request: Request
    addr: Addr


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response to the client transaction `key` (every 2xx of an INVITE, forks included)."""

    key: TransactionKey
    response: Response
    addr: Addr


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A CANCEL matched INVITE server transaction `key`; the layer already answered it 200."""

    key: TransactionKey
    request: Request


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B or F (no final response: treat as 408), H (no ACK for a non-2xx final) or
    L (no ACK for a 2xx: the UAS should send BYE) fired for transaction `key`."""

    key: TransactionKey
    timer: str


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    key: TransactionKey


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """Bytes from `addr` that did not parse; answered with `error.status` when possible."""

    error: ParseError
    addr: Addr


Event = (
    RequestReceived
    | ResponseReceived
    | CancelReceived
    | TransactionTimeout
    | TransactionTerminated
    | MessageRejected
)


class State(Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


# -- the four machines ----------------------------------------------------------------


class _Transaction:
    """What the four machines share: identity, peer, state and named timers."""

    def __init__(self, layer: TransactionLayer, key: TransactionKey, request: Request, addr: Addr):
        self.layer = layer
        self.key = key
        self.request: Request | None = request  # until the final response: see `settle`
        self.addr = addr
        self.state = State.TRYING
        self.timers: dict[str, float] = {}
        self.interval = layer.timers.t1  # the current retransmit interval (A, E or G)

    def set_timer(self, name: str, delay: float, now: float) -> None:
        self.timers[name] = now + delay
        self.layer._schedule(now + delay, self.key, name)

    def start(self, now: float) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        """The final response is in: what stays (32 s on UDP, for copies) needs no request.

        A lingering transaction holds its key, peer and bytes to resend only, so the
        thousands a busy edge keeps are small and cheap for the collector to walk."""
        self.request = None

    def terminate(self) -> None:
        self.state = State.TERMINATED
        self.timers.clear()
        self.layer._remove(self)

    def on_timer(self, name: str, now: float) -> None:
        raise NotImplementedError


class _ClientTransaction(_Transaction):
    def __init__(self, layer: TransactionLayer, key: TransactionKey, request: Request, addr: Addr):
        super().__init__(layer, key, request, addr)
        self.data = bytes(request)
        self.cancel_pending = False  # CANCEL asked for before any provisional response
        self.cancelled = False

    def settle(self) -> None:
        super().settle()
        self.data = b""  # never sent again

    def on_response(self, response: Response, addr: Addr, now: float) -> None:
        raise NotImplementedError


class InviteClientTransaction(_ClientTransaction):
    """RFC 3261 17.1.1 (figure 5) with RFC 6026's Accepted state."""

    ack = b""  # the ACK sent for a non-2xx final response, resent for its copies

    def start(self, now: float) -> None:
        self.state = State.CALLING
        self.layer._send(self.data, self.addr)
        if not self.layer.reliable:
            self.set_timer("A", self.interval, now)
        self.set_timer("B", 64 * self.layer.timers.t1, now)

    def on_timer(self, name: str, now: float) -> None:
        if name == "A" and self.state is State.CALLING:
            self.layer._send(self.data, self.addr)
            self.interval *= 2  # no T2 cap for INVITE
            self.set_timer("A", self.interval, now)
        elif name == "B" and (
            self.state is State.CALLING or (self.cancelled and self.state is State.PROCEEDING)
        ):
            self.layer._emit(TransactionTimeout(self.key, "B"))
            self.terminate()
        elif name in ("D", "M"):
            self.terminate()

    def on_response(self, response: Response, addr: Addr, now: float) -> None:
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            self.timers.pop("A", None)
            if status >= 200:
                self.timers.pop("B", None)
            if status < 200:
                self.state = State.PROCEEDING
                if self.cancel_pending:
                    self.layer._send_cancel(self, now)
            elif status < 300:
                self.state = State.ACCEPTED
                self.set_timer("M", 64 * self.layer.timers.t1, now)
                self.settle()
            else:
                self.state = State.COMPLETED
                self.ack = bytes(self._ack_for(response))
                self.layer._send(self.ack, self.addr)
                self.set_timer("D", 0 if self.layer.reliable else 32, now)
                self.settle()
            self.layer._emit(ResponseReceived(self.key, response, addr))
        elif self.state is State.ACCEPTED and 200 <= status < 300:
            self.layer._emit(ResponseReceived(self.key, response, addr))  # a fork, or a resend
        elif self.state is State.COMPLETED and status >= 300:
            self.layer._send(self.ack, self.addr)

    def _ack_for(self, response: Response) -> Request:
        """The ACK for a non-2xx final response (17.1.1.3): same branch, To from the response."""
        assert self.request is not None, "settled"
        return _same_branch(self.request, "ACK", response.headers.get("to") or "")


class NonInviteClientTransaction(_ClientTransaction):
    """RFC 3261 17.1.2 (figure 6)."""

    def start(self, now: float) -> None:
        self.state = State.TRYING
        self.layer._send(self.data, self.addr)
        if not self.layer.reliable:
            self.set_timer("E", self.interval, now)
        self.set_timer("F", 64 * self.layer.timers.t1, now)

    def on_timer(self, name: str, now: float) -> None:
        if name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            self.layer._send(self.data, self.addr)
            t2 = self.layer.timers.t2
            self.interval = t2 if self.state is State.PROCEEDING else min(2 * self.interval, t2)
            self.set_timer("E", self.interval, now)
        elif name == "F" and self.state in (State.TRYING, State.PROCEEDING):
            self.layer._emit(TransactionTimeout(self.key, "F"))
            self.terminate()
        elif name == "K":
            self.terminate()

    def on_response(self, response: Response, addr: Addr, now: float) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return  # Completed absorbs retransmitted responses
        if response.status < 200:
            self.state = State.PROCEEDING
        else:
            self.state = State.COMPLETED
            self.timers.pop("E", None)
            self.timers.pop("F", None)
            self.set_timer("K", 0 if self.layer.reliable else self.layer.timers.t4, now)
            self.settle()
        self.layer._emit(ResponseReceived(self.key, response, addr))


class _ServerTransaction(_Transaction):
    def __init__(self, layer: TransactionLayer, key: TransactionKey, request: Request, addr: Addr):
        super().__init__(layer, key, request, addr)
        self.last: bytes | None = None  # the last response, for retransmitted requests
        self.acked = False  # INVITE: the ACK for its 2xx arrived
        self.dialog: tuple[str, str, str] | None = None  # INVITE: how that ACK is matched

    def on_request(self, request: Request, addr: Addr, now: float) -> None:
        raise NotImplementedError

    def respond(self, response: Response, now: float) -> None:
        raise NotImplementedError

    def _send(self, response: Response) -> None:
        self.last = bytes(response)
        self.layer._send(self.last, self.addr)


class InviteServerTransaction(_ServerTransaction):
    """RFC 3261 17.2.1 (figure 7) with RFC 6026's Accepted state."""

    def start(self, now: float) -> None:
        self.state = State.PROCEEDING

    def on_request(self, request: Request, addr: Addr, now: float) -> None:
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self.timers.pop("G", None)
                self.timers.pop("H", None)
                self.set_timer("I", 0 if self.layer.reliable else self.layer.timers.t4, now)
            elif self.state is State.ACCEPTED:
                self._acked(request, addr)
        elif self.state in (State.PROCEEDING, State.COMPLETED) and self.last is not None:
            self.layer._send(self.last, self.addr)  # a retransmitted INVITE

    def _acked(self, ack: Request, addr: Addr) -> None:
        if not self.acked:  # the first ACK for the 2xx: stop retransmitting it, pass it up
            self.acked = True
            self.timers.pop("G", None)
            self.layer._emit(RequestReceived(self.key, ack, addr))

    def respond(self, response: Response, now: float) -> None:
        if self.state is not State.PROCEEDING:
            raise ValueError(f"cannot respond in state {self.state.value}")
        self._send(response)
        t1 = self.layer.timers.t1
        if response.status < 200:
            return
        self.settle()
        if response.status < 300:
            self.state = State.ACCEPTED
            self.dialog = _dialog_of(response)
            self.layer._accepted[self.dialog] = self.key
            self.set_timer("G", t1, now)  # 13.3.1.4: the 2xx is resent on any transport
            self.set_timer("L", 64 * t1, now)
        else:
            self.state = State.COMPLETED
            if not self.layer.reliable:
                self.set_timer("G", t1, now)
            self.set_timer("H", 64 * t1, now)

    def on_timer(self, name: str, now: float) -> None:
        if name == "G" and self.state in (State.COMPLETED, State.ACCEPTED) and self.last:
            self.layer._send(self.last, self.addr)
            self.interval = min(2 * self.interval, self.layer.timers.t2)
            self.set_timer("G", self.interval, now)
        elif name == "H" and self.state is State.COMPLETED:
            self.layer._emit(TransactionTimeout(self.key, "H"))
            self.terminate()
        elif name == "L":
            if not self.acked:
                self.layer._emit(TransactionTimeout(self.key, "L"))
            self.terminate()
        elif name == "I":
            self.terminate()


class NonInviteServerTransaction(_ServerTransaction):
    """RFC 3261 17.2.2 (figure 8)."""

    def start(self, now: float) -> None:
        self.state = State.TRYING

    def on_request(self, request: Request, addr: Addr, now: float) -> None:
        if self.last is not None:  # Trying has nothing to resend yet
            self.layer._send(self.last, self.addr)

    def respond(self, response: Response, now: float) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise ValueError(f"cannot respond in state {self.state.value}")
        self._send(response)
        if response.status < 200:
            self.state = State.PROCEEDING
        else:
            self.state = State.COMPLETED
            self.set_timer("J", 0 if self.layer.reliable else 64 * self.layer.timers.t1, now)
            self.settle()

    def on_timer(self, name: str, now: float) -> None:
        if name == "J":
            self.terminate()


# -- matching -------------------------------------------------------------------------


def server_key(request: Request, method: str | None = None) -> TransactionKey:
    """The server transaction a request belongs to (17.2.3); ACK maps onto its INVITE.

    Without a branch that starts with the magic cookie (and has something after it:
    RFC 4475 3.2.1), RFC 2543 matching applies: Request-URI, From tag, Call-ID, CSeq
    number and the whole top Via.
    """
    method = method or ("INVITE" if request.method == "ACK" else request.method)
    via = request.via
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        return ("s", branch, via.host, str(via.port), method)
    return (
        "s2543",
        request.uri,
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.number),
        str(via),
        method,
    )


def client_key(message: Request | Response) -> TransactionKey:
    """The client transaction of a request we send, or of a response to it (17.1.3)."""
    return ("c", message.via.branch or "", message.cseq.method)


def _same_branch(invite: Request, method: str, to: str) -> Request:
    """An ACK (17.1.1.3) or CANCEL (9.1) of our INVITE: its Request-URI, top Via, From,
    Call-ID, CSeq number and Route, with the To given."""
    headers = invite.headers
    copy = Headers(
        [
            ("Via", (headers.get("via") or "").split(",")[0]),
            ("From", headers.get("from") or ""),
            ("To", to),
            ("Call-ID", headers.get("call-id") or ""),
            ("CSeq", f"{invite.cseq.number} {method}"),
            ("Max-Forwards", "70"),
        ]
    )
    for route in headers.get_all("route"):
        copy.add("Route", route)
    return Request(method, invite.uri, copy)


def _dialog_of(message: Request | Response) -> tuple[str, str, str]:
    """What ties an ACK for a 2xx to its INVITE: Call-ID, CSeq number, From tag."""
    return (message.call_id, str(message.cseq.number), message.from_.tag or "")


def _response_addr(via: Via, source: Addr, reliable: bool) -> Addr:
    """Where responses go (18.2.2, RFC 3581): the connection, or received/rport, sent-by port."""
    if reliable or via.param("rport") is not None:
        return source
    return source[0], via.port or 5060


# -- the layer ------------------------------------------------------------------------


class TransactionLayer:
    """Every transaction over one transport (one UDP socket, or all TCP connections)."""

    def __init__(
        self,
        sent_by: Addr,
        *,
        transport: str = "UDP",
        timers: Timers | None = None,
        auto_trying: bool = True,
    ) -> None:
        self.sent_by = sent_by
        self.transport = transport.upper()
        self.reliable = self.transport != "UDP"
        self.timers = timers or Timers()
        self.auto_trying = auto_trying  # answer 100 at once, as a B2BUA always should
        self._transactions: dict[TransactionKey, _Transaction] = {}
        self._accepted: dict[tuple[str, str, str], TransactionKey] = {}
        self._heap: list[tuple[float, int, TransactionKey, str]] = []
        self._seq = 0
        self._out: list[tuple[bytes, Addr]] = []
        self._events: list[Event] = []

    # inputs

    def receive(self, data: bytes, addr: Addr, now: float) -> list[Event]:
        """Take one datagram (or one framed stream message) from `addr`."""
        try:
            message = parse(data)
        except ParseError as error:
            partial = error.partial
            if error.status is not None and partial is not None and _answerable(partial):
                answer = make_response(partial, error.status, headers=error.headers)
                self._send(bytes(answer), _response_addr(partial.via, addr, self.reliable))
            self._emit(MessageRejected(error, addr))
            return self._take_events()
        if isinstance(message, Response):
            txn = self._transactions.get(client_key(message))
            if isinstance(txn, _ClientTransaction):
                txn.on_response(message, addr, now)
            # else: a stray response (RFC 4475 bcast.dat) matches nothing and is dropped
        else:
            self._on_request(message, addr, now)
        return self._take_events()

    def _on_request(self, request: Request, addr: Addr, now: float) -> None:
        via = request.via
        if via.host != addr[0] or via.param("rport") == "":
            # 18.2.1 and RFC 3581: record where the request really came from
            stamped = via.with_params(received=addr[0])
            if via.param("rport") is not None:
                stamped = stamped.with_params(rport=str(addr[1]))
            request.headers.replace_first("via", stamped)
        key = server_key(request)
        txn = self._transactions.get(key)
        if isinstance(txn, _ServerTransaction):
            txn.on_request(request, addr, now)
            return
        if request.method == "ACK":
            accepted = self._accepted.get(_dialog_of(request))
            txn = self._transactions.get(accepted) if accepted else None
            if isinstance(txn, InviteServerTransaction):
                txn._acked(request, addr)
            else:
                self._emit(RequestReceived(None, request, addr))
            return
        cls: type[_ServerTransaction] = (
            InviteServerTransaction if request.method == "INVITE" else NonInviteServerTransaction
        )
        server = cls(self, key, request, _response_addr(via, addr, self.reliable))
        self._transactions[key] = server
        server.start(now)
        if request.method == "CANCEL":
            self._on_cancel(server, request, now)
            return
        if request.method == "INVITE" and self.auto_trying:
            server.respond(make_response(request, 100), now)
        self._emit(RequestReceived(key, request, addr))

    def _on_cancel(self, server: _ServerTransaction, cancel: Request, now: float) -> None:
        """9.2: answer the CANCEL itself; the TU answers the INVITE (487)."""
        invite_key = server_key(cancel, "INVITE")
        invite = self._transactions.get(invite_key)
        if not isinstance(invite, InviteServerTransaction):
            server.respond(make_response(cancel, 481), now)
            return
        # After a final response the CANCEL changes nothing, but is still answered 200.
        server.respond(make_response(cancel, 200), now)
        if invite.state is State.PROCEEDING:
            self._emit(CancelReceived(invite_key, cancel))

    def send_request(self, request: Request, addr: Addr, now: float) -> TransactionKey:
        """Start a client transaction. A top Via with a fresh branch is added if none is there.

        ACK for a 2xx is not a transaction: send it with `send_stateless`.
        """
        if request.method == "ACK":
            raise ValueError("an ACK for a 2xx is sent with send_stateless")
        if "via" not in request.headers:
            request.headers.prepend("Via", self.make_via())
        key = client_key(request)
        if key in self._transactions:
            raise ValueError(f"a client transaction with branch {key[1]!r} exists")
        cls: type[_ClientTransaction] = (
            InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
        )
        txn = cls(self, key, request, addr)
        self._transactions[key] = txn
        txn.start(now)
        return key

    def make_via(self, branch: str | None = None) -> Via:
        """Our Via: sent-by, transport, rport requested, a fresh branch."""
        host, port = self.sent_by
        return Via(
            self.transport, host, port, (("branch", branch or new_branch()), ("rport", None))
        )

    def respond(self, key: TransactionKey, response: Response, now: float) -> None:
        """Send a response through server transaction `key`."""
        txn = self._transactions.get(key)
        if not isinstance(txn, _ServerTransaction):
            raise KeyError(f"no server transaction {key!r}")
        txn.respond(response, now)

    def cancel(self, key: TransactionKey, now: float) -> None:
        """Cancel INVITE client transaction `key` (9.1): at once if a provisional response
        came, else as soon as one does; nothing if a final response came.

        Before any provisional response the INVITE is no longer retransmitted (a silent
        peer gets nothing more); the transaction stays until timer B only to match a late
        response: a provisional one is CANCELled, a 2xx still reaches the TU."""
        txn = self._transactions.get(key)
        if not isinstance(txn, InviteClientTransaction) or txn.cancelled:
            return
        if txn.state is State.PROCEEDING:
            self._send_cancel(txn, now)
        elif txn.state is State.CALLING:
            txn.cancel_pending = True
            txn.timers.pop("A", None)

    def _send_cancel(self, txn: InviteClientTransaction, now: float) -> None:
        txn.cancel_pending = False
        txn.cancelled = True
        # 9.1: without a final response 64*T1 after the CANCEL, the INVITE is given up.
        txn.set_timer("B", 64 * self.timers.t1, now)
        assert txn.request is not None, "a CANCEL goes before the final response"
        cancel = _same_branch(txn.request, "CANCEL", txn.request.headers.get("to") or "")
        self.send_request(cancel, txn.addr, now)

    def send_stateless(self, message: Request | Response, addr: Addr) -> None:
        """Send outside any transaction: the ACK for a 2xx, or its retransmissions."""
        if isinstance(message, Request) and "via" not in message.headers:
            message.headers.prepend("Via", self.make_via())
        self._send(bytes(message), addr)

    # outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When `handle_timer` must next run, or None."""
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> list[Event]:
        """Fire every timer due at `now`."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._live(entry):
                txn = self._transactions[entry[2]]
                del txn.timers[entry[3]]
                txn.on_timer(entry[3], now)
        return self._take_events()

    def transaction_state(self, key: TransactionKey) -> State:
        txn = self._transactions.get(key)
        return txn.state if txn else State.TERMINATED

    def __len__(self) -> int:
        return len(self._transactions)

    # plumbing for the machines

    def _live(self, entry: tuple[float, int, TransactionKey, str]) -> bool:
        txn = self._transactions.get(entry[2])
        return txn is not None and txn.timers.get(entry[3]) == entry[0]

    def _schedule(self, when: float, key: TransactionKey, name: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, key, name))

    def _send(self, data: bytes, addr: Addr) -> None:
        self._out.append((data, addr))

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _remove(self, txn: _Transaction) -> None:
        if self._transactions.get(txn.key) is txn:
            del self._transactions[txn.key]
            if isinstance(txn, _ServerTransaction) and txn.dialog is not None:
                self._accepted.pop(txn.dialog, None)
            self._emit(TransactionTerminated(txn.key))


def _answerable(request: Request) -> bool:
    """A request that failed to parse can be answered if the headers a response copies are sound."""
    present = {key for key, _, _ in request.headers._fields}
    return {"via", "from", "to", "call-id", "cseq"} <= present
