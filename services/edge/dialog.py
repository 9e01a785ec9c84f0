"""One side of a B2BUA call as a SIP dialog (RFC 3261 12): its ids, and the requests it sends.

The ingress side is the UAS dialog with the caller, an egress leg the UAC dialog with the
callee. Each leg has its own Call-ID, tags, Via and Contact, so nothing of one side's
topology reaches the other. Requests are sent to the trunk's address (the source of the
ingress INVITE, the peer of the egress trunk), as an SBC does, never to a Contact's host.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tandem import __version__
from tandem.edge.transport import Peer
from tandem.sip import Request, Response

USER_AGENT = f"tandem/{__version__}"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
ACCEPT = "application/sdp"
SUPPORTED = ""  # 100rel is neither offered nor accepted


def new_id() -> str:
    return os.urandom(12).hex()


def new_tag() -> str:
    return os.urandom(6).hex()


def new_branch() -> str:
    return "z9hG4bK" + os.urandom(9).hex()


class Local:
    """How this edge names itself to one peer: Via sent-by and Contact, per transport."""

    __slots__ = ("contact", "host", "port", "via_prefix")

    def __init__(self, host: str, port: int, transport: str) -> None:
        self.host = host
        self.port = port
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.via_prefix = f"SIP/2.0/{transport.upper()} {hostport};branch="
        suffix = ";transport=tcp" if transport == "tcp" else ""
        self.contact = f"<sip:{hostport}{suffix}>"

    def via(self, branch: str | None = None) -> str:
        return f"{self.via_prefix}{branch or new_branch()};rport"


class Dialog:
    """The state RFC 3261 12 names: Call-ID, tags, URIs, remote target, route set, CSeq."""

    __slots__ = (
        "call_id",
        "invite_cseq",
        "local",
        "local_cseq",
        "local_tag",
        "local_uri",
        "peer",
        "remote_target",
        "remote_uri",
        "route_set",
    )

    def __init__(
        self,
        call_id: str,
        local_uri: str,
        local_tag: str,
        remote_uri: str,
        remote_target: str,
        route_set: list[str],
        local_cseq: int,
        peer: Peer,
        local: Local,
    ) -> None:
        self.call_id = call_id
        self.local_uri = local_uri  # the From of our requests, tag included
        self.local_tag = local_tag
        self.remote_uri = remote_uri  # the To of our requests, tag included once known
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_cseq = local_cseq
        self.invite_cseq = local_cseq  # the CSeq our ACK for the last INVITE's 2xx takes
        self.peer = peer
        self.local = local

    @classmethod
    def as_uas(cls, invite: Request, local_tag: str, peer: Peer, local: Local) -> Dialog:
        """The caller's dialog, as the UAS that received its INVITE."""
        contacts = invite.contacts
        target = str(contacts[0].uri) if contacts else invite.from_.uri.__str__()
        to = invite.headers.get("to") or ""
        return cls(
            call_id=invite.call_id,
            local_uri=f"{to};tag={local_tag}",
            local_tag=local_tag,
            remote_uri=invite.headers.get("from") or "",
            remote_target=target,
            route_set=invite.headers.values("record-route"),
            local_cseq=0,
            peer=peer,
            local=local,
        )

    def established_by(self, response: Response) -> None:
        """As the UAC: take the remote tag, target and route set from a 1xx/2xx with a tag."""
        self.remote_uri = response.headers.get("to") or self.remote_uri
        contacts = response.contacts
        if contacts:
            self.remote_target = str(contacts[0].uri)
        self.route_set = list(reversed(response.headers.values("record-route")))

    def request(
        self,
        method: str,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """A new in-dialog request (not ACK): the next CSeq and a fresh branch."""
        self.local_cseq += 1
        if method == "INVITE":
            self.invite_cseq = self.local_cseq
        return self._build(method, self.local_cseq, body, content_type, headers)

    def ack(self, body: bytes = b"", content_type: str | None = None) -> Request:
        """The ACK of the 2xx to our last INVITE (a transaction of its own: new branch)."""
        return self._build("ACK", self.invite_cseq, body, content_type, ())

    def _build(
        self,
        method: str,
        cseq: int,
        body: bytes,
        content_type: str | None,
        headers: Iterable[tuple[str, str]],
    ) -> Request:
        fields = [
            ("Via", self.local.via()),
            ("Max-Forwards", "70"),
            ("From", self.local_uri),
            ("To", self.remote_uri),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        fields += [("Route", route) for route in self.route_set]
        if method in ("INVITE", "UPDATE"):
            fields.append(("Contact", self.local.contact))
        fields.append(("User-Agent", USER_AGENT))
        fields += headers
        if body:
            fields.append(("Content-Type", content_type or ACCEPT))
        return Request(method, self.remote_target, fields, body)
