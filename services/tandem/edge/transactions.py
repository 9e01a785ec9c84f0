"""The asyncio side of tandem.sip's transaction layer: one layer per transport, one timer.

Datagrams go in with `receive`, whatever the layers want sent goes out through the
transports, and one `loop.call_at` is re-armed to the earliest timer (the aioquic
pattern). Client transactions report to a callback, server transactions are handled by
the edge through `ServerTransaction` handles; the events only the edge can act on
(requests, CANCELs, unparsable messages) are returned from `receive`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from tandem.edge.transport import Peer
from tandem.sip import Request, Response
from tandem.sip.transaction import (
    CancelReceived,
    Event,
    MessageRejected,
    RequestReceived,
    ResponseReceived,
    TransactionKey,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
)

log = logging.getLogger("tandem.edge.transactions")

# each response, or None with why: "timeout" (timer B or F, or give_up_s) or "transport_error"
OnResponse = Callable[[Response | None, str], None]
TIMEOUT, TRANSPORT_ERROR = "timeout", "transport_error"
ForEdge = RequestReceived | CancelReceived | MessageRejected


class ServerTransaction:
    """A request the edge must answer, and the layer that holds its transaction."""

    __slots__ = ("key", "last_status", "layer", "peer", "request")

    def __init__(
        self, key: TransactionKey, request: Request, peer: Peer, layer: TransactionLayer
    ) -> None:
        self.key = key
        self.request = request
        self.peer = peer
        self.layer = layer
        self.last_status = 0

    @property
    def final(self) -> bool:
        return self.last_status >= 200


@dataclass(slots=True)
class ClientTransaction:
    key: TransactionKey
    peer: Peer
    layer: TransactionLayer


class Transactions:
    """Every transaction of one edge, over its UDP, TCP and TLS layers."""

    def __init__(
        self,
        sent_by: tuple[str, int],
        send: Callable[[bytes, Peer], None],
        tls_sent_by: tuple[str, int] | None = None,
        *,
        shares_address: bool = False,
    ) -> None:
        """`shares_address`: the edge is a worker on an address shared with others (its
        `own_port`), whose requests that came there are answered from there."""
        self.layers = {
            "udp": TransactionLayer(sent_by, transport="UDP", auto_trying=False),
            "tcp": TransactionLayer(sent_by, transport="TCP", auto_trying=False),
            "tls": TransactionLayer(tls_sent_by or sent_by, transport="TLS", auto_trying=False),
        }
        # the requests that came to the address shared with other workers: answered from it
        self.shared = TransactionLayer(sent_by, transport="UDP", auto_trying=False)
        self.shares_address = shares_address
        self.send = send
        self.client: dict[TransactionKey, tuple[OnResponse, Peer]] = {}
        self.no_ack: dict[TransactionKey, Callable[[], None]] = {}  # timer L: a 2xx never ACKed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "Transactions.start() first"
        return self._loop

    # ---- in -------------------------------------------------------------------------------

    def _layer(self, peer: Peer) -> TransactionLayer:
        return self.shared if peer.shared else self.layers[peer.transport]

    def receive(self, data: bytes, peer: Peer) -> list[ForEdge]:
        layer, now = self._layer(peer), self.loop.time()
        events = layer.receive(data, peer.addr, now)
        if self.shares_address and layer is self.layers["udp"] and _stray_ack(events):
            # the ACK of a 2xx that left from the shared address, sent to our Contact
            layer, events = self.shared, self.shared.receive(data, peer.addr, now)
        return self._after(layer, events, peer.transport)

    def _on_timer(self) -> None:
        self._timer = None
        self._armed_at = None
        now = self.loop.time()
        try:
            for transport, layer in (*self.layers.items(), ("udp", self.shared)):
                for event in self._after(layer, layer.handle_timer(now), transport):
                    log.debug("unexpected event from a timer: %r", event)
        finally:  # whatever failed, the timers of every other transaction keep running
            for layer in (*self.layers.values(), self.shared):
                self._arm(layer)

    def _after(self, layer: TransactionLayer, events: list[Event], transport: str) -> list[ForEdge]:
        """Send what the layer queued, route client events, re-arm; the rest is the edge's."""
        self._flush(layer, transport)
        if not events:
            return []
        mine: list[ForEdge] = []
        for event in events:
            try:
                if isinstance(event, ResponseReceived):
                    # a non-INVITE's final response is its last word: its Completed state
                    # absorbs the copies, so the caller is let go now, not at timer K
                    last = event.response.status >= 200 and event.key[-1] != "INVITE"
                    entry = (self.client.pop if last else self.client.get)(event.key, None)
                    if entry is not None:
                        entry[0](event.response, "")
                elif isinstance(event, TransactionTimeout):
                    if event.timer == "L":
                        callback = self.no_ack.pop(event.key, None)
                        if callback is not None:
                            callback()
                    else:
                        entry = self.client.pop(event.key, None)
                        if entry is not None:
                            entry[0](None, TIMEOUT)
                elif isinstance(event, TransactionTerminated):
                    self.client.pop(event.key, None)
                    self.no_ack.pop(event.key, None)
                else:
                    mine.append(event)
            except Exception:  # one call's fault must not stop the others' timers and sends
                log.exception("transaction event %r failed", type(event).__name__)
        self._flush(layer, transport)  # the callbacks may have sent more
        return mine

    def _flush(self, layer: TransactionLayer, transport: str) -> None:
        out = layer.datagrams_to_send()
        if out:
            send, shared = self.send, layer is self.shared
            for data, addr in out:
                send(data, Peer(transport, addr[0], addr[1], shared))
        self._arm(layer)

    def _arm(self, layer: TransactionLayer) -> None:
        """Wake up for this layer's next timer if it is sooner than the one armed."""
        when = layer.get_timer()
        if when is None or (self._armed_at is not None and self._armed_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    # ---- server side ------------------------------------------------------------------------

    def server(self, event: RequestReceived, peer: Peer) -> ServerTransaction:
        assert event.key is not None
        return ServerTransaction(event.key, event.request, peer, self._layer(peer))

    def respond(self, stx: ServerTransaction, response: Response) -> None:
        stx.last_status = response.status
        stx.layer.respond(stx.key, response, self.loop.time())
        self._flush(stx.layer, stx.peer.transport)

    # ---- client side --------------------------------------------------------------------------

    def send_request(
        self,
        request: Request,
        peer: Peer,
        on_response: OnResponse,
        give_up_s: float | None = None,
    ) -> ClientTransaction:
        """Send a request as a new client transaction (the layer adds our Via).

        `on_response` gets each response (every 2xx of an INVITE, as the dialog ACKs each),
        or None on timeout (B, F, or `give_up_s` when sooner) or a transport error, with why.
        """
        layer = self.layers[peer.transport]
        key = layer.send_request(request, peer.addr, self.loop.time())
        self.client[key] = (on_response, peer)
        if give_up_s is not None:
            self.loop.call_later(give_up_s, self._give_up, key)
        self._flush(layer, peer.transport)
        return ClientTransaction(key, peer, layer)

    def _give_up(self, key: TransactionKey) -> None:
        entry = self.client.pop(key, None)
        if entry is not None:
            entry[0](None, TIMEOUT)

    def forget(self, keys: list[TransactionKey]) -> None:
        """Nothing is to be told any more of these transactions (their call has ended)."""
        for key in keys:
            self.client.pop(key, None)
            self.no_ack.pop(key, None)

    def cancel(self, ctx: ClientTransaction) -> None:
        """CANCEL an INVITE: now if a provisional came, else as soon as one does (RFC 3261 9.1)."""
        ctx.layer.cancel(ctx.key, self.loop.time())
        self._flush(ctx.layer, ctx.peer.transport)

    def send_stateless(self, message: Request, peer: Peer) -> None:
        """The ACK of a 2xx (and its repeats): no transaction of its own."""
        layer = self.layers[peer.transport]
        layer.send_stateless(message, peer.addr)
        self._flush(layer, peer.transport)

    def transport_failed(self, peer: Peer) -> None:
        """A connection to the peer could not be made: its pending transactions fail."""
        for key, (callback, to) in list(self.client.items()):
            if to == peer:
                del self.client[key]
                callback(None, TRANSPORT_ERROR)


def _stray_ack(events: list[Event]) -> bool:
    """An ACK that matched no transaction of its layer (its 2xx may be another's)."""
    return (
        len(events) == 1
        and isinstance(events[0], RequestReceived)
        and events[0].key is None
        and events[0].request.method == "ACK"
    )
