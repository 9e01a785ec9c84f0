"""Every SIP message an edge receives: admission by source, the transaction layer, and then
the call or leg it belongs to, or the answer tandem gives on its own (403, 481, 503, OPTIONS,
and the status of a malformed request). Nothing a peer sends may escape from here.
"""

from __future__ import annotations

import logging
import time

from tandem.b2bua import events as e
from tandem.b2bua.local import (
    ACCEPT,
    ALLOW,
    BODY_TYPES,
    EXTENSIONS,
    METHODS,
    RETRY_AFTER_S,
    SUPPORTED,
    new_tag,
)
from tandem.b2bua.relay import respond
from tandem.edge.admission import Admission, RejectLimiter
from tandem.edge.executor import Executor
from tandem.edge.metrics import EdgeMetrics
from tandem.edge.overload import Overload
from tandem.edge.registry import Registry
from tandem.edge.stateless import ANSWER_HEADERS, answer_unparsable
from tandem.edge.transactions import ServerTransaction, Transactions
from tandem.edge.transport import Peer, Transports
from tandem.policy import Trunk
from tandem.sip import ParseError, Request, parse, validate_request
from tandem.sip.transaction import CancelReceived, RequestReceived

log = logging.getLogger("tandem.edge.inbound")

# Overload: more calls in setup than this, or an event loop running this late, and new
# INVITEs get 503 + Retry-After at once rather than time out in a queue.
MAX_CALLS_IN_SETUP = 3000


class Inbound:
    """The receiving side of one edge's sockets."""

    def __init__(
        self,
        edge: str,
        transports: Transports,
        transactions: Transactions,
        registry: Registry,
        executor: Executor,
        metrics: EdgeMetrics,
    ) -> None:
        self.edge = edge
        self.transports = transports
        self.transactions = transactions
        self.registry = registry
        self.executor = executor
        self.metrics = metrics
        self.admission = Admission(())
        self.rejects = RejectLimiter()
        self.draining = False  # new calls get 503: the edge is stopping
        self.overload = Overload()

    def receive(self, data: bytes, peer: Peer) -> None:
        """Every datagram and framed stream message."""
        try:
            trunk = self.admission.trunk(peer.host, peer.port)
            if trunk is None:
                self._unknown_source(data, peer)
                return
            if data[:4] == b"SIP/" and data[8:11].isdigit():
                self.metrics.response("in", int(data[8:11]))
            for event in self.transactions.receive(data, peer):
                if isinstance(event, RequestReceived):
                    self._request(event, peer, trunk)
                elif isinstance(event, CancelReceived):
                    runner = self.registry.invites.get(event.key)
                    if runner is not None:
                        self.executor.feed(runner, e.CallerCancelled())
                else:
                    self._rejected(event.error, data, peer)
        except Exception:
            log.exception("edge %s: message from %s:%s failed", self.edge, peer.host, peer.port)

    def _rejected(self, error: ParseError, data: bytes, peer: Peer) -> None:
        """A message the parser refused: a response is dropped; a request gets its status.

        The transaction layer answers when the request's Via, From, To, Call-ID and CSeq
        parsed; otherwise (a bad start line, a malformed Via) the answer is built here from
        the raw lines, as a stateless server would.
        """
        self.metrics.malformed("request" if error.status else "response")
        partial = error.partial
        if error.status is None or (
            partial is not None and all(h in partial.headers for h in ANSWER_HEADERS)
        ):
            return
        answer = answer_unparsable(data, error.status, error.headers)
        if answer is not None:
            data, port = answer
            self.transports.send(data, peer if port is None else peer._replace(port=port))
            self.metrics.response("out", error.status)

    def _unknown_source(self, data: bytes, peer: Peer) -> None:
        """403 to a request from no trunk's source, at a bounded rate; responses are dropped."""
        self.metrics.reject("unknown_source")
        if data[:4] == b"SIP/" or not self.rejects.allow(peer.host, time.monotonic()):
            return
        try:
            request = parse(data)
        except ParseError:
            return
        if not isinstance(request, Request) or request.method == "ACK":
            return
        warning = ("Warning", '399 tandem "unknown source"')
        response = respond(request, 403, headers=[warning], to_tag=new_tag())
        self.transports.send(bytes(response), peer)
        self.metrics.response("out", 403)

    def _answer(self, txn: ServerTransaction, status: int, headers: list[tuple[str, str]]) -> None:
        """tandem's own answer to a request no call or leg takes (a fresh To tag: RFC 3261
        8.2.6.2, when the request had none)."""
        self.transactions.respond(
            txn, respond(txn.request, status, None, headers, to_tag=new_tag())
        )
        self.metrics.response("out", status)

    def _request(self, event: RequestReceived, peer: Peer, trunk: Trunk) -> None:
        request = event.request
        method = request.method
        self.metrics.request(method)
        if method == "ACK":  # of a 2xx (the layer absorbs the others): the dialog's
            runner = self.registry.dialogs.get((request.call_id, request.to.tag or ""))
            if runner is not None:
                self.executor.feed(runner, e.AckReceived(request))
            return
        txn = self.transactions.server(event, peer)
        error = validate_request(request, methods=METHODS, supported=EXTENSIONS, accept=BODY_TYPES)
        if error is not None:
            assert error.status is not None
            self._answer(txn, error.status, list(error.headers))
            return
        to_tag = request.to.tag
        if to_tag:
            runner = self.registry.dialogs.get((request.call_id, to_tag))
            if runner is None:
                self._answer(txn, 481, [])
            else:
                self.executor.feed(runner, e.InDialogRequest(request, txn))
        elif method == "INVITE":
            self._new_call(request, txn, peer, trunk)
        elif method == "OPTIONS":
            self._answer(txn, 200, [("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", SUPPORTED)])
        else:
            self._answer(txn, 481, [])

    @property
    def overloaded(self) -> bool:
        return self.overload.refuses(self.registry.routing_wait(time.monotonic()))

    def _new_call(self, invite: Request, txn: ServerTransaction, peer: Peer, trunk: Trunk) -> None:
        refusal = None
        if self.draining:
            refusal = "draining"
        elif self.overloaded or self.registry.in_setup >= MAX_CALLS_IN_SETUP:
            refusal = "overload"
        elif not trunk.enabled:
            refusal = "trunk_disabled"
        elif (
            trunk.max_concurrent_calls
            and self.registry.active_in[trunk.id] >= trunk.max_concurrent_calls
        ):
            refusal = "trunk_limit"
        if refusal is not None:
            self.metrics.reject(refusal)
            retry = ("Retry-After", str(RETRY_AFTER_S))
            self._answer(txn, 503, [retry, ("Warning", f'399 tandem "{refusal}"')])
            return
        self.executor.start_call(invite, txn, peer, trunk)
