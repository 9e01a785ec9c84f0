"""In-dialog requests crossing from one leg's dialog to the other's, and their answers.

Both machines relay the same way: a request their far end sends (re-INVITE, UPDATE, INFO)
crosses the bus as a `LegRequest` and waits, with its server transaction, for the
`LegResponse` that comes back; a request the other side sends through them is sent in their
own dialog and its answer crosses back. Only the headers that mean something end to end
cross; Via, Contact, Route, tags and Call-ID belong to one side's dialog and stay there.
"""

from __future__ import annotations

from tandem.b2bua.events import Txn
from tandem.b2bua.local import USER_AGENT, new_id
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, Response, make_response

END_TO_END = frozenset(
    (
        "content-disposition",
        "event",
        "info-package",
        "reason",
        "recv-info",
        "refer-to",  # a relayed REFER (RFC 3515) and its NOTIFYs
        "referred-by",
        "subscription-state",
    )
)


def relayed_headers(message: Request | Response) -> list[pb.Header]:
    return [pb.Header(name=n, value=v) for n, v in message.headers if n.lower() in END_TO_END]


def sip_body(message: Request | Response) -> pb.SipBody:
    if not message.body:
        return pb.SipBody()
    content_type = message.headers.get("content-type") or "application/sdp"
    return pb.SipBody(content_type=content_type, body=message.body)


def body_headers(body: pb.SipBody) -> list[tuple[str, str]]:
    return [("Content-Type", body.content_type or "application/sdp")] if body.body else []


def leg_response(request_id: str, response: Response | None) -> pb.LegResponse:
    """The answer to a relayed request as it crosses back (None: it timed out)."""
    if response is None:
        return pb.LegResponse(request_id=request_id, status=408, reason="Request Timeout")
    return pb.LegResponse(
        request_id=request_id,
        status=response.status,
        reason=response.reason,
        headers=relayed_headers(response),
        body=sip_body(response),
    )


def respond(
    request: Request,
    status: int,
    reason: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    to_tag: str | None = None,
) -> Response:
    """A response to `request` with tandem's Server header (and our To tag when out of dialog)."""
    return make_response(
        request,
        status,
        reason,
        to_tag=to_tag,
        headers=[("Server", USER_AGENT), *(headers or ())],
        body=body,
    )


class Relay:
    """The in-dialog requests of one machine that wait for an answer across the bus."""

    def __init__(self) -> None:
        self.waiting: dict[str, Txn] = {}  # our far end's, sent across, by request id
        self.sent: dict[str, bool] = {}  # the other side's, sent in our dialog: answered yet?

    def outbound(self, txn: Txn) -> pb.LegRequest:
        """Our far end's request, to cross to the other leg; it waits for the answer."""
        request = txn.request
        request_id = new_id()
        self.waiting[request_id] = txn
        return pb.LegRequest(
            request_id=request_id,
            method=request.method,
            headers=relayed_headers(request),
            body=sip_body(request),
        )

    def answer(self, answer: pb.LegResponse, contact: str) -> tuple[Txn, Response] | None:
        """The response to send our far end for an answer that came back, if still awaited."""
        txn = self.waiting.get(answer.request_id)
        if txn is None:
            return None
        if answer.status >= 200:
            del self.waiting[answer.request_id]
        headers = [(h.name, h.value) for h in answer.headers] + body_headers(answer.body)
        if txn.request.method == "INVITE" and 200 <= answer.status < 300:
            headers.append(("Contact", contact))  # a target refresh: our side's contact
        body = answer.body.body
        return txn, respond(txn.request, answer.status, answer.reason or None, headers, body)

    @staticmethod
    def inbound_headers(request: pb.LegRequest) -> list[tuple[str, str]]:
        """The headers of the other side's request as we send it in our dialog."""
        headers = [(h.name, h.value) for h in request.headers]
        return [*headers, ("User-Agent", USER_AGENT), *body_headers(request.body)]
