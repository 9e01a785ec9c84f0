"""SIP requests and responses: parsing with the checks RFC 4475 demands, building, serialising.

`parse` splits the header section eagerly and checks syntax of every header tandem relies
on with one compiled regex each; typed values (Via, From, CSeq, ...) are built on access.
Content-Length is framing, not data: it is not kept among the headers, and `bytes(msg)`
always writes the length of the body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from tandem.sip import grammar
from tandem.sip.headers import NAMES, CSeq, Headers, Via
from tandem.sip.uri import URI, NameAddr, split_outside_quotes

REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

# Methods RFC 3261 and its extensions define; others get 501 rather than 405.
KNOWN_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE"}
    | {"NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"}
)
_SINGLE = frozenset(
    ("call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type")
)
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_MAX_CSEQ = 2**31 - 1  # RFC 3261 8.1.1.5
_FOLD = re.compile(r"\r\n[ \t]+")
_UNSAFE = re.compile(r"[\s]")


class ParseError(Exception):
    """A message tandem must not process.

    `status` is the response a server sends back (400, 505, 416, 420, ...) or None when the
    message is dropped (a malformed response, or bytes that are no message). `partial` is
    the request as far as it could be read, to answer with `make_response(partial, status)`
    when its Via, From, To, Call-ID and CSeq are sound. `headers` are the extra headers the
    answer carries (Unsupported for 420, Accept for 415, Allow for 405).
    """

    def __init__(
        self,
        status: int | None,
        reason: str,
        *,
        partial: Request | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(f"{status or 'drop'}: {reason}")
        self.status = status
        self.reason = reason
        self.partial = partial
        self.headers = tuple(headers)


class _Invalid(Exception):
    """Raised inside the parser; `parse` turns it into ParseError with the right status."""


class _Folded(Exception):
    """A header line continues on the next line (RFC 3261 7.3.1)."""


class Message:
    """What requests and responses share: headers, body and typed header accessors."""

    __slots__ = ("body", "headers")

    headers: Headers
    body: bytes

    def _start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        lines = [self._start_line()]
        lines += [f"{name}: {value}" for _, name, value in self.headers._fields]
        lines.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    @property
    def call_id(self) -> str:
        return self.headers.first("call-id") or ""

    @property
    def cseq(self) -> CSeq:
        return CSeq.parse(self.headers.first("cseq") or "")

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self.headers.first("from") or "")

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self.headers.first("to") or "")

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.values("via")]

    @property
    def via(self) -> Via:
        """The top Via."""
        top = self.headers.first("via") or ""
        return Via.parse(split_outside_quotes(top, ",")[0])

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; empty for none and for `Contact: *`."""
        return [NameAddr.parse(v) for v in self.headers.values("contact") if v != "*"]

    @property
    def route(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.values("route")]

    @property
    def record_route(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.values("record-route")]

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.first("max-forwards")
        return None if value is None else int(value.lstrip("0") or "0")

    @property
    def content_type(self) -> str | None:
        """The media type, lower case and without parameters (`application/sdp`)."""
        value = self.headers.first("content-type")
        if value is None:
            return None
        return "".join(value.partition(";")[0].split()).lower()

    @property
    def content_length(self) -> int:
        return len(self.body)

    def _fields(self) -> list[tuple[str, str]]:
        return [(k, v) for k, _, v in self.headers._fields]


class Request(Message):
    __slots__ = ("_version", "method", "uri")

    def __init__(
        self,
        method: str,
        uri: str | URI,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.uri = str(uri)
        if grammar.TOKEN.fullmatch(method) is None or not self.uri or _UNSAFE.search(self.uri):
            raise ValueError(f"not a request line: {method!r} {self.uri!r}")
        self._version = "SIP/2.0"
        self.headers = headers.copy() if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    @property
    def request_uri(self) -> URI:
        return URI.parse(self.uri)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self.method, self.uri, self._fields(), self.body) == (
            other.method,
            other.uri,
            other._fields(),
            other.body,
        )

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} {self.call_id!r}>"


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        self.status = status
        self.reason = REASONS.get(status, "") if reason is None else reason
        self.headers = headers.copy() if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    def _start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.status, self.reason, self._fields(), self.body) == (
            other.status,
            other.reason,
            other._fields(),
            other.body,
        )

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} {self.call_id!r}>"


def parse(data: bytes) -> Request | Response:
    """Parse one message from a datagram (or one framed by `StreamFramer`).

    Octets past Content-Length are ignored; without Content-Length the body is the rest
    of the data. Raises ParseError: status 400 or 505 for requests, None for responses.
    Semantic checks (416, 420, 415, 406, 483, 405) are `validate_request`'s.
    """
    if data[:2] == b"\r\n":
        data = data.lstrip(b"\r\n")  # keep-alives before the start line (RFC 3261 7.5)
    end = data.find(b"\r\n\r\n")
    is_response = data[:4] == b"SIP/"
    if end < 0:
        raise ParseError(None if is_response else 400, "no empty line after the headers")
    lines = data[:end].decode("utf-8", "surrogateescape").split("\r\n")
    try:
        msg = _start(lines[0], is_response)
    except _Invalid as exc:
        raise ParseError(None if is_response else 400, str(exc)) from None
    try:
        try:
            length = _take_headers(msg, lines)
        except (_Folded, _Invalid):
            # Folding is rare, so it costs a second pass rather than a check on every line.
            head = "\r\n".join(lines)
            if "\r\n " not in head and "\r\n\t" not in head:
                raise
            msg.headers._fields = []
            unfolded = _FOLD.sub(" ", head).split("\r\n")
            if unfolded[0] != lines[0]:
                raise _Invalid("folded start line") from None
            length = _take_headers(msg, unfolded)
        body = data[end + 4 :]
        if length is not None:
            if length > len(body):
                raise _Invalid("body shorter than Content-Length")
            body = body[:length]
    except _Invalid as exc:
        if isinstance(msg, Response):
            raise ParseError(None, str(exc)) from None
        raise ParseError(400, str(exc), partial=msg) from None
    msg.body = body
    if isinstance(msg, Request) and msg._version != "SIP/2.0":
        # Checked last so that the 505 can be sent: it needs the Via, From, To...
        raise ParseError(505, f"version {msg._version} not supported", partial=msg)
    return msg


def _take_headers(msg: Request | Response, lines: list[str]) -> int | None:
    """Store and check the header lines (after the start line); returns the Content-Length."""
    fields = msg.headers._fields
    seen: dict[str, str] = {}
    length = None
    for i in range(1, len(lines)):
        name, colon, value = lines[i].partition(":")
        entry = _TABLE.get(name) or _TABLE.get(name.lower())
        if entry is None or not colon:
            if name[:1] in (" ", "\t"):
                raise _Folded
            entry = _slow_name(name.rstrip(" \t"), colon)
        value = value.strip(" \t")
        check = entry[3]
        if check is not None:
            fast = entry[2]
            if (fast is None or fast.fullmatch(value) is None) and check.fullmatch(value) is None:
                raise _Invalid(f"malformed {entry[1]}")
            key = entry[0]
            if key in seen and entry[4]:
                raise _Invalid(f"more than one {entry[1]}")
            seen[key] = value
            if key == "content-length":
                length = _number(value, _MAX_CSEQ, "Content-Length")
                continue  # framing, not a header: bytes() writes it
        fields.append((entry[0], entry[1], value))
    for key in _REQUIRED:
        if key not in seen:
            raise _Invalid(f"missing {key}")
    number, method = seen["cseq"].split()  # its grammar was checked in the loop
    _number(number, _MAX_CSEQ, "CSeq")
    if isinstance(msg, Request) and method != msg.method:
        raise _Invalid("CSeq method does not match the request line")
    _number(seen.get("max-forwards", "0"), 255, "Max-Forwards")
    return length


def _number(digits: str, limit: int, what: str) -> int:
    """A checked decimal up to `limit` (< 2**31); the length test first, as int() refuses
    4301 digits."""
    digits = digits.lstrip("0")
    if len(digits) > 10 or (value := int(digits or "0")) > limit:
        raise _Invalid(f"{what} above {limit}")
    return value


def _slow_name(name: str, colon: str) -> _Entry:
    """The table entry of a header name with LWS before its colon, or of an unknown one."""
    entry = _TABLE.get(name.lower())
    if entry is None and colon and grammar.TOKEN.fullmatch(name) is not None:
        return (name.lower(), name, None, None, False)
    if entry is None or not colon:
        raise _Invalid(f"bad header line {name[:40]!r}")
    return entry


def _start(line: str, is_response: bool) -> Request | Response:
    parts = line.split(" ", 2)
    if len(parts) != 3:
        raise _Invalid("malformed start line")
    if is_response:
        version, code, reason = parts
        if (
            version != "SIP/2.0"
            or len(code) != 3
            or not code.isascii()
            or not code.isdigit()
            or not "1" <= code[0] <= "6"
        ):
            raise _Invalid("malformed status line")
        return Response(int(code), reason)
    method, uri, version = parts
    if grammar.TOKEN.fullmatch(method) is None or grammar.REQUEST_URI.fullmatch(uri) is None:
        raise _Invalid("malformed request line")
    if version != "SIP/2.0" and grammar.SIP_VERSION.fullmatch(version) is None:
        raise _Invalid("malformed request line")
    request = Request.__new__(Request)  # the checks __init__ makes were just made
    request.method = method
    request.uri = uri
    request._version = version
    request.headers = Headers._from_parsed([])
    return request


# Every header listed here is checked; CSeq again after the loop, against the method.
_CHECKS = {
    "cseq": grammar.CSEQ,
    "via": grammar.VIAS,
    "from": grammar.ADDRESS,
    "to": grammar.ADDRESS,
    "contact": grammar.CONTACTS,
    "route": grammar.ROUTES,
    "record-route": grammar.ROUTES,
    "call-id": grammar.CALL_ID,
    "max-forwards": grammar.DIGITS,
    "content-length": grammar.DIGITS,
    "content-type": grammar.MEDIA_TYPE,
}
# Shortcuts tried first: a value they match is valid (see grammar).
_FAST = {
    "via": grammar.FAST_VIA,
    "from": grammar.FAST_NAME_ADDR,
    "to": grammar.FAST_NAME_ADDR,
    "contact": grammar.FAST_NAME_ADDR,
    "route": grammar.FAST_NAME_ADDR,
    "record-route": grammar.FAST_NAME_ADDR,
}
_Entry = tuple[str, str, "re.Pattern[str] | None", "re.Pattern[str] | None", bool]
# name as received, in lower case or canonical (the common case, which spares a lower())
# -> (key, canonical name, fast check, check, single-valued)
_TABLE: dict[str, _Entry] = {
    name: (key, canonical, _FAST.get(key), _CHECKS.get(key), key in _SINGLE)
    for name, (key, canonical) in NAMES.items()
}
_TABLE.update({canonical: _TABLE[key] for key, canonical in NAMES.values()})


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to `request` per RFC 3261 8.2.6: Via, From, To, Call-ID, CSeq copied.

    `to_tag` is added to To unless the request already had one (an in-dialog request).
    Record-Route is copied on 101-299, as the UAS of a dialog must (12.1.1).
    """
    out: list[tuple[str, str, str]] = []
    for field in request.headers._fields:
        key = field[0]
        if key == "to" and to_tag is not None and status > 100:
            value = field[2]
            if NameAddr.parse(value).tag is None:
                field = (key, field[1], f"{value};tag={to_tag}")
            out.append(field)
        elif key in ("via", "from", "to", "call-id", "cseq") or (
            key == "record-route" and 100 < status < 300
        ):
            out.append(field)
    response = Response(status, reason, Headers._from_parsed(out), body)
    for name, value in headers:
        response.headers.add(name, value)
    return response


def validate_request(
    request: Request,
    *,
    methods: Iterable[str] | None = None,
    supported: Iterable[str] = (),
    accept: Iterable[str] = ("application/sdp",),
) -> ParseError | None:
    """The error a B2BUA answers to a well-formed request it cannot take, or None.

    In this order: 405/501 for a method not in `methods` (None allows all), 416 for a
    Request-URI that is not sip/sips/tel, 483 for Max-Forwards 0, 420 for a Require or
    Proxy-Require extension not in `supported` (a B2BUA forwards, so it checks both), 415
    for a body type not in `accept`, 406 when the request's Accept admits none of `accept`.
    """
    method = request.method
    if methods is not None:
        allowed = list(methods)
        if method not in allowed:
            if method in KNOWN_METHODS:
                return ParseError(
                    405, "method not allowed", headers=[("Allow", ", ".join(allowed))]
                )
            return ParseError(
                501, "method not implemented", headers=[("Allow", ", ".join(allowed))]
            )
    scheme = request.uri.partition(":")[0].lower()
    if scheme not in ("sip", "sips", "tel"):
        return ParseError(416, f"URI scheme {scheme!r} not supported")
    if request.max_forwards == 0:
        return ParseError(483, "Max-Forwards is 0")
    if method not in ("ACK", "CANCEL"):  # RFC 3261 8.2.2.3: never reject these on Require
        known = {s.lower() for s in supported}
        unknown = [
            tag
            for name in ("require", "proxy-require")
            for tag in request.headers.values(name)
            if tag.lower() not in known
        ]
        if unknown:
            return ParseError(
                420, "unsupported extension", headers=[("Unsupported", ", ".join(unknown))]
            )
    types = [t.lower() for t in accept]
    if request.body and (request.content_type or "application/sdp") not in types:
        return ParseError(415, "unsupported media type", headers=[("Accept", ", ".join(types))])
    ranges = request.headers.values("accept")
    if ranges and not any(_accepts(r, t) for r in ranges for t in types):
        return ParseError(406, "no acceptable body type")
    return None


def _accepts(media_range: str, media_type: str) -> bool:
    wanted = "".join(media_range.partition(";")[0].split()).lower()
    if wanted in ("*/*", media_type):
        return True
    return wanted.endswith("/*") and media_type.startswith(wanted[:-1])
