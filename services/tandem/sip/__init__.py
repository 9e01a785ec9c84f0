"""tandem's sans-I/O SIP core: messages, SDP, transactions and dialogs (RFC 3261), no I/O."""

from tandem.sip.framer import StreamFramer
from tandem.sip.headers import CSeq, Headers, Via
from tandem.sip.message import (
    ParseError,
    Request,
    Response,
    make_response,
    parse,
    validate_request,
)
from tandem.sip.uri import URI, NameAddr

__all__ = [
    "URI",
    "CSeq",
    "Headers",
    "NameAddr",
    "ParseError",
    "Request",
    "Response",
    "StreamFramer",
    "Via",
    "make_response",
    "parse",
    "validate_request",
]
