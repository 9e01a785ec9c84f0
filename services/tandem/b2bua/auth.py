"""Digest authentication of the requests a machine sends its trunk (RFC 3261 22.2, RFC 7616).

A 401 or 407 is answered with the trunk's credentials: the same request again, with a new
CSeq and the Authorization (or Proxy-Authorization) the challenge asks for. Once per
request: a second challenge for a request we answered means the credentials are refused,
unless it only says the nonce was stale (`stale=true`, once), so nothing goes round in a
loop. The machine keeps the count; this module only reads challenges and builds requests.
"""

from __future__ import annotations

from tandem.sip import Request, Response
from tandem.sip.digest import (
    HEADERS,
    Credentials,
    DigestClient,
    DigestError,
    choose,
    parse_challenges,
)

CHALLENGES = frozenset(HEADERS)  # 401, 407
MAX_ANSWERS = 2  # to one request: a challenge, and once more if its nonce was stale


class Auth:
    """The credentials of one machine's trunk; nc counts per nonce across its requests."""

    __slots__ = ("client",)

    def __init__(self, credentials: Credentials | None) -> None:
        self.client = DigestClient(credentials) if credentials is not None else None

    def answer(self, request: Request, response: Response, answered: int) -> tuple[str, str] | str:
        """The header to send `request` again with, or why it cannot be: the reason of the
        failure. `answered` is how many challenges to this request were answered already."""
        refusal = f"{response.status} {response.reason}".strip()
        if self.client is None:
            return f"{refusal}: no credentials for this trunk"
        header, answer = HEADERS[response.status]
        try:
            challenges = parse_challenges(response.headers.get_all(header))
            realm = self.client.credentials.realm
            challenge = choose(c for c in challenges if realm in (None, c.realm))
        except DigestError as exc:
            return f"{refusal}: {exc}"
        if answered >= MAX_ANSWERS or (answered and not challenge.stale):
            return f"{refusal}: credentials refused"
        return answer, self.client.authorize(challenge, request.method, request.uri)


def again(request: Request, cseq: int, header: tuple[str, str] | None = None) -> Request:
    """`request` to send again: a new CSeq, no Via (the transaction layer adds one with a
    fresh branch), the credentials `header` in place of any earlier answer."""
    headers = request.headers.copy()
    for name in ("via", "authorization", "proxy-authorization"):
        headers.remove(name)
    headers.set("CSeq", f"{cseq} {request.method}")
    if header is not None:
        headers.add(*header)
    return Request(request.method, request.uri, headers, request.body)


def credentials_of(request: Request) -> list[tuple[str, str]]:
    """The answers a request carries, for the ACK of its 2xx (RFC 3261 13.2.2.4)."""
    return [
        (n, v) for n, v in request.headers if n.lower() in ("authorization", "proxy-authorization")
    ]
