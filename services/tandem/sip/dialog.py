"""RFC 3261 section 12 dialogs: their state, and the requests sent within them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum

from tandem.sip.message import Request, Response
from tandem.sip.uri import URI, NameAddr

DialogId = tuple[str, str, str]  # Call-ID, local tag, remote tag
# Requests that carry a Contact, which refreshes the remote target (12.2, RFC 3311, 6665).
_TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


class DialogState(Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass
class Dialog:
    call_id: str
    local: NameAddr  # our From (UAC) or To (UAS) address, with our tag
    remote: NameAddr  # theirs, with their tag
    remote_target: URI
    route_set: list[NameAddr]
    local_cseq: int
    remote_cseq: int | None
    invite_cseq: int  # the CSeq of the last INVITE, which its ACK repeats
    local_contact: NameAddr | None = None
    state: DialogState = DialogState.EARLY
    secure: bool = False
    is_uac: bool = True

    @property
    def id(self) -> DialogId:
        return (self.call_id, self.local.tag or "", self.remote.tag or "")

    @classmethod
    def as_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 1xx/2xx with a To tag creates for the request's sender (12.1.2)."""
        cseq = request.cseq.number
        contacts = response.contacts
        local_contacts = request.contacts
        return cls(
            call_id=request.call_id,
            local=request.from_,
            remote=response.to,
            remote_target=contacts[0].uri if contacts else request.request_uri,
            route_set=list(reversed(response.record_route)),
            local_cseq=cseq,
            remote_cseq=None,
            invite_cseq=cseq,
            local_contact=local_contacts[0] if local_contacts else None,
            state=DialogState.CONFIRMED if 200 <= response.status < 300 else DialogState.EARLY,
            secure=request.request_uri.scheme == "sips",
            is_uac=True,
        )

    @classmethod
    def as_uas(cls, request: Request, response: Response) -> Dialog:
        """The dialog our 1xx/2xx (with our To tag) to `request` creates (12.1.1)."""
        contacts = request.contacts
        local_contacts = response.contacts
        cseq = request.cseq.number
        return cls(
            call_id=request.call_id,
            local=response.to,
            remote=request.from_,
            remote_target=contacts[0].uri if contacts else request.from_.uri,
            route_set=request.record_route,
            local_cseq=0,
            remote_cseq=cseq,
            invite_cseq=cseq,
            local_contact=local_contacts[0] if local_contacts else None,
            state=DialogState.CONFIRMED if 200 <= response.status < 300 else DialogState.EARLY,
            secure=request.request_uri.scheme == "sips",
            is_uac=False,
        )

    def on_response(self, request: Request, response: Response) -> None:
        """A response to a request sent in this dialog (or to the INVITE that created it)."""
        status = response.status
        if request.method == "INVITE" and self.is_uac and self.state is DialogState.EARLY:
            if status >= 300:
                self.state = DialogState.TERMINATED
                return
            if status >= 200:
                # 13.2.2.4: the 2xx fixes the route set of a dialog born early
                self.route_set = list(reversed(response.record_route))
                self.state = DialogState.CONFIRMED
        if request.method in _TARGET_REFRESH and 100 < status < 300 and response.contacts:
            self.remote_target = response.contacts[0].uri
        if status in (408, 481) or (request.method == "BYE" and status >= 200):
            self.state = DialogState.TERMINATED  # 12.2.1.2

    def on_request(self, request: Request) -> int | None:
        """An in-dialog request from the peer (12.2.2); returns the error status, if any."""
        cseq = request.cseq.number
        if request.method not in ("ACK", "CANCEL"):
            # Retransmissions stop at the transaction layer, so an equal CSeq is stale too.
            if self.remote_cseq is not None and cseq <= self.remote_cseq:
                return 500
            self.remote_cseq = cseq
        if request.method in _TARGET_REFRESH and request.contacts:
            self.remote_target = request.contacts[0].uri
        if request.method == "INVITE":
            self.invite_cseq = cseq
        elif request.method == "BYE":
            self.state = DialogState.TERMINATED
        return None

    def create_request(
        self,
        method: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Request:
        """A request within the dialog (12.2.1.1): BYE, re-INVITE, UPDATE, INFO, ...

        It has no Via: the transaction layer adds one with a fresh branch.
        """
        if method == "ACK":
            return self.create_ack(body=body, headers=headers)
        self.local_cseq += 1
        if method == "INVITE":
            self.invite_cseq = self.local_cseq
        return self._request(method, self.local_cseq, headers, body)

    def create_ack(self, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> Request:
        """The ACK for a 2xx to the last INVITE (13.2.2.4): the INVITE's CSeq number."""
        return self._request("ACK", self.invite_cseq, headers, body)

    def _request(
        self, method: str, cseq: int, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Request:
        uri, routes = self.remote_target, list(self.route_set)
        if routes and routes[0].uri.param("lr") is None:
            # a strict router (RFC 2543): it takes the Request-URI, the target goes last
            uri = replace(routes[0].uri, params=(), headers=())
            routes = [*routes[1:], NameAddr(self.remote_target)]
        fields = [("Route", str(r)) for r in routes]
        fields += [
            ("Max-Forwards", "70"),
            ("From", str(self.local)),
            ("To", str(self.remote)),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if method in _TARGET_REFRESH and self.local_contact is not None:
            fields.append(("Contact", str(self.local_contact)))
        return Request(method, uri, [*fields, *headers], body)

    @property
    def next_hop(self) -> URI:
        """Where requests in the dialog go: the first route, else the remote target."""
        return self.route_set[0].uri if self.route_set else self.remote_target


class DialogSet:
    """The dialogs one INVITE of ours creates: one per To tag among its responses (forking)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.dialogs: dict[str, Dialog] = {}

    def on_response(self, response: Response) -> Dialog | None:
        """Create or update the dialog of a response; returns it (None: no dialog, e.g. 100)."""
        tag = response.to.tag
        status = response.status
        if status >= 300:
            for dialog in self.dialogs.values():
                if dialog.state is DialogState.EARLY:
                    dialog.state = DialogState.TERMINATED
            return None
        if tag is None or status == 100:
            return None
        if tag in self.dialogs:
            self.dialogs[tag].on_response(self.request, response)
        else:
            self.dialogs[tag] = Dialog.as_uac(self.request, response)
        return self.dialogs[tag]

    @property
    def early(self) -> list[Dialog]:
        return [d for d in self.dialogs.values() if d.state is DialogState.EARLY]

    @property
    def confirmed(self) -> list[Dialog]:
        return [d for d in self.dialogs.values() if d.state is DialogState.CONFIRMED]
