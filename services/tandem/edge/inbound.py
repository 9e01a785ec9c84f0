"""Every SIP message an edge receives: admission by source, the transaction layer, and then
the call or leg it belongs to, or the answer tandem gives on its own (403, 481, 503, OPTIONS,
and the status of a malformed request). Nothing a peer sends may escape from here.

Over TLS a trunk that names certificate names (`tls_names`, as Teams Direct Routing and
SBCs do) is admitted only when its certificate gives one of them (RFC 5922 7.1). A trunk
with `auth.challenge` authenticates its INVITEs by digest (RFC 3261 22, RFC 7616) before
they become calls: 401 with a nonce of our own, `stale=true` when it ran out, 403 for wrong
credentials. An INVITE whose Request-URI names the AOR a trunk registers (our Contact
there) is that trunk's, when its source is one of the trunk's; the number called is then
its To's. A trunk with `registrar: true` may REGISTER (authenticated first, as its INVITEs
are), to `tandem.edge.registrar`.
"""

from __future__ import annotations

import logging
import time

from tandem import tls
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
from tandem.edge.registrar import Registrar
from tandem.edge.registry import Registry
from tandem.edge.stateless import ANSWER_HEADERS, answer_unparsable
from tandem.edge.transactions import ServerTransaction, Transactions
from tandem.edge.transport import Peer, Transports
from tandem.policy import Trunk
from tandem.policy.model import SecretError
from tandem.sip import ParseError, Request, parse, validate_request
from tandem.sip.digest import Authorization, DigestError, DigestServer, Verdict
from tandem.sip.transaction import CancelReceived, RequestReceived

log = logging.getLogger("tandem.edge.inbound")

# Overload: more calls in setup than this, or an event loop running this late, and new
# INVITEs get 503 + Retry-After at once rather than time out in a queue.
MAX_CALLS_IN_SETUP = 3000
REGISTRAR_METHODS = (*METHODS, "REGISTER")  # what a trunk with `registrar: true` may send


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
        self.challengers: dict[str, DigestServer] = {}  # by trunk: those that must authenticate
        self.registered: dict[str, Trunk] = {}  # by the user part of the AOR they register
        self.registrar: Registrar | None = None  # for trunks with `registrar: true`
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
            if trunk.tls_names and not self._names_admitted(trunk, peer):
                self._unknown_source(data, peer, "certificate names")
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

    def _names_admitted(self, trunk: Trunk, peer: Peer) -> bool:
        """A trunk that names certificate names: only over TLS, with one of them."""
        names = self.transports.certificate_names(peer) if peer.transport == "tls" else ()
        if tls.admits(trunk, names):
            return True
        if self.rejects.allow(f"names:{peer.host}", time.monotonic()):  # one line, not a flood
            given = ", ".join(names) or "none"
            log.warning(
                "trunk %s: %s %s:%s refused: certificate names %s, the trunk wants %s",
                trunk.id,
                peer.transport,
                peer.host,
                peer.port,
                given,
                ", ".join(trunk.tls_names),
            )
        return False

    def _unknown_source(self, data: bytes, peer: Peer, why: str = "unknown source") -> None:
        """403 to a request from no trunk's source, at a bounded rate; responses are dropped."""
        self.metrics.reject(why.replace(" ", "_"))
        if data[:4] == b"SIP/" or not self.rejects.allow(peer.host, time.monotonic()):
            return
        try:
            request = parse(data)
        except ParseError:
            return
        if not isinstance(request, Request) or request.method == "ACK":
            return
        warning = ("Warning", f'399 tandem "{why}"')
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
        methods = REGISTRAR_METHODS if trunk.registrar else METHODS
        error = validate_request(request, methods=methods, supported=EXTENSIONS, accept=BODY_TYPES)
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
            registered = self._registered(request, peer)
            trunk = registered or trunk
            if self._authenticated(request, txn, trunk):
                if registered is not None:  # the Request-URI names our binding, To the number
                    request.uri = str(request.to.uri)
                self._new_call(request, txn, peer, trunk)
        elif method == "OPTIONS":
            self._answer(txn, 200, [("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", SUPPORTED)])
        elif method == "REGISTER" and self.registrar is not None:
            if self._authenticated(request, txn, trunk):
                response = self.registrar.register(request, peer, trunk)
                self.transactions.respond(txn, response)
                self.metrics.response("out", response.status)
        else:
            self._answer(txn, 481, [])

    @property
    def overloaded(self) -> bool:
        return self.overload.refuses(self.registry.routing_wait(time.monotonic()))

    @property
    def load(self) -> dict[str, float]:
        return self.overload.figures(self.registry.routing_wait(time.monotonic()))

    def _registered(self, invite: Request, peer: Peer) -> Trunk | None:
        """The trunk that registers the AOR the INVITE is for, when its source is the trunk's."""
        if not self.registered:
            return None
        try:
            user = invite.request_uri.user
        except ValueError:
            return None
        trunk = self.registered.get(user or "")
        if trunk is None:
            return None
        return trunk if Admission([trunk]).trunk(peer.host, peer.port) is trunk else None

    def _authenticated(self, request: Request, txn: ServerTransaction, trunk: Trunk) -> bool:
        """True when the trunk need not authenticate, or its credentials are right; else
        the request has been answered (a challenge, or 403)."""
        server = self.challengers.get(trunk.id)
        if server is None:
            return True
        assert trunk.auth is not None
        now = time.time()
        value = request.headers.get("authorization")
        if value is None:
            self._challenge(txn, server, now)
            return False
        try:
            answer = Authorization.parse(value)
            password = trunk.auth.password()
        except DigestError as exc:
            log.info("trunk %s: unreadable credentials (%s): challenged again", trunk.id, exc)
            self._challenge(txn, server, now)
            return False
        except SecretError as exc:
            log.warning("trunk %s: %s: its INVITEs cannot be authenticated", trunk.id, exc)
            self._answer(txn, 503, [("Retry-After", str(RETRY_AFTER_S))])
            return False
        verdict = Verdict.WRONG
        if answer.username == trunk.auth.username:
            verdict = server.verify(answer, request.method, request.uri, password, now)
        if verdict is Verdict.OK:
            return True
        if verdict is Verdict.WRONG:
            self.metrics.reject("auth_refused")
            log.warning(
                "trunk %s: digest credentials of user %r refused (%s:%s)",
                trunk.id,
                answer.username[:64],
                txn.peer.host,
                txn.peer.port,
            )
            self._answer(txn, 403, [("Warning", '399 tandem "wrong credentials"')])
            return False
        self._challenge(txn, server, now, stale=verdict is Verdict.STALE)  # bad nonce, replay
        return False

    def _challenge(
        self, txn: ServerTransaction, server: DigestServer, now: float, *, stale: bool = False
    ) -> None:
        challenges = [("WWW-Authenticate", c) for c in server.challenges(now, stale=stale)]
        self._answer(txn, 401, challenges)

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
