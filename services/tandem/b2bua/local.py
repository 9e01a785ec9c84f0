"""How tandem names itself in SIP: ids, tags, its Contact, and the headers it always sends.

Each leg of a call has its own Call-ID, tags, Via (added by the transaction layer) and
Contact, so nothing of one side's topology reaches the other.
"""

from __future__ import annotations

import os

from tandem import __version__
from tandem.sip.uri import format_host_port

USER_AGENT = f"tandem/{__version__}"
METHODS = (
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "PRACK", "REFER", "NOTIFY",
)  # fmt: skip
ALLOW = ", ".join(METHODS)
ACCEPT = "application/sdp"
BODY_TYPES = (
    "application/sdp",
    "multipart/mixed",
    "application/dtmf-relay",
    "application/dtmf",
    "message/sipfrag",  # NOTIFYs of a REFER's progress
)
EXTENSIONS = ("100rel", "timer")  # RFC 3262, RFC 4028: what a Require may ask of tandem
SUPPORTED = ", ".join(EXTENSIONS)
RETRY_AFTER_S = 5  # on every 503 tandem gives for its own reasons (limits, overload, drain)


def new_id() -> str:
    return os.urandom(12).hex()


def new_tag() -> str:
    return os.urandom(6).hex()


class Local:
    """The edge as one transport's peers see it: its host and its Contact (a `sips:` one for
    a dialog whose request was `sips:`, RFC 5630)."""

    __slots__ = ("contact", "host", "port", "transport")

    def __init__(self, host: str, port: int, transport: str, scheme: str = "sip") -> None:
        self.host = host
        self.port = port
        self.transport = transport
        if scheme == "sips":
            self.contact = f"<sips:{format_host_port(host, port)}>"
        else:
            self.contact = f"<sip:{format_host_port(host, port)}{uri_transport(transport)}>"


def uri_transport(transport: str) -> str:
    """The URI parameter that names a transport other than UDP (RFC 3261 19.1.1)."""
    return "" if transport == "udp" else f";transport={transport}"
