"""The ordered, case-insensitive, multi-valued header store and the typed Via and CSeq values."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache

from tandem.sip.grammar import CSEQ, TOKEN, VIA
from tandem.sip.uri import (
    Params,
    format_params,
    get_param,
    parse_params,
    set_param,
    split_outside_quotes,
)

# Canonical spelling of the headers tandem reads; the key of every header is its lower-case
# full name, so compact forms (RFC 3261 7.3.3, RFC 3515, RFC 3841, RFC 4028) land on it.
_CANONICAL = [
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Diversion",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "History-Info",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "Min-SE",
    "MIME-Version",
    "Organization",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Session-Expires",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
]
_COMPACT = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}
# lower-case name as received -> (key, canonical name)
NAMES: dict[str, tuple[str, str]] = {n.lower(): (n.lower(), n) for n in _CANONICAL}
NAMES["identity"] = ("identity", "Identity")
NAMES.update({c: NAMES[full] for c, full in _COMPACT.items()})

# Headers whose values may be comma-joined on one line (RFC 3261 7.3.1); the rest are
# never split, as Date, WWW-Authenticate and friends contain commas of their own.
LIST_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "allow",
        "allow-events",
        "contact",
        "in-reply-to",
        "proxy-require",
        "record-route",
        "require",
        "route",
        "supported",
        "unsupported",
        "via",
        "p-asserted-identity",
        "history-info",
        "diversion",
    }
)


def name_key(name: str) -> tuple[str, str]:
    """(key, canonical name) for a header name in any case or compact form."""
    lower = name.lower()
    return NAMES.get(lower) or (lower, name)


def _field(name: str, value: object) -> tuple[str, str, str]:
    """A header line as stored; refuses what would inject lines into the message."""
    text = str(value)
    if "\r" in text or "\n" in text or TOKEN.fullmatch(name) is None:
        raise ValueError(f"unsafe header {name!r}: {text[:40]!r}")
    return (*name_key(name), text.strip(" \t"))


class Headers:
    """Header fields in order; names compare case-insensitively, compact forms normalised.

    Each entry is one header line. `get_all` returns lines; `values` also splits the
    comma-joined values of list headers.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, object]] = ()) -> None:
        self._fields: list[tuple[str, str, str]] = [_field(n, v) for n, v in fields]

    @classmethod
    def _from_parsed(cls, fields: list[tuple[str, str, str]]) -> Headers:
        h = cls.__new__(cls)
        h._fields = fields
        return h

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for _, name, value in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name_key(name)[0]
        return any(k == key for k, _, _ in self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._fields] == [(k, v) for k, _, v in other._fields]

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def copy(self) -> Headers:
        return Headers._from_parsed(list(self._fields))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first line's value of a header, or `default`."""
        value = self.first(name_key(name)[0])
        return default if value is None else value

    def first(self, key: str) -> str | None:
        """`get` for a key already in its stored form (lower-case full name): the fast path."""
        for k, _, v in self._fields:
            if k == key:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every line's value of a header, in order."""
        key = name_key(name)[0]
        return [v for k, _, v in self._fields if k == key]

    def values(self, name: str) -> list[str]:
        """Every value of a header, with comma-joined values of list headers split."""
        key = name_key(name)[0]
        lines = [v for k, _, v in self._fields if k == key]
        if key not in LIST_HEADERS:
            return lines
        return [p.strip() for line in lines for p in split_outside_quotes(line, ",") if p.strip()]

    def add(self, name: str, value: object) -> None:
        """Append a header line."""
        self._fields.append(_field(name, value))

    def prepend(self, name: str, value: object) -> None:
        """Insert a header line before every other one (a new top Via)."""
        self._fields.insert(0, _field(name, value))

    def set(self, name: str, value: object) -> None:
        """Replace every line of a header by one line, where the first one was."""
        field = _field(name, value)
        key = field[0]
        for i, (k, _, _) in enumerate(self._fields):
            if k == key:
                self._fields[i] = field
                self._fields[i + 1 :] = [f for f in self._fields[i + 1 :] if f[0] != key]
                return
        self._fields.append(field)

    def remove(self, name: str) -> None:
        key = name_key(name)[0]
        self._fields = [f for f in self._fields if f[0] != key]

    def replace_first(self, name: str, value: object) -> None:
        """Replace the first value of a list header where it stands (a stamped top Via)."""
        key, _, text = _field(name, value)
        for i, (k, n, v) in enumerate(self._fields):
            if k == key:
                rest = split_outside_quotes(v, ",")[1:] if key in LIST_HEADERS else []
                self._fields[i] = (k, n, ",".join([text, *rest]))
                return
        raise KeyError(name)

    def remove_first(self, name: str) -> None:
        """Remove the first value of a list header (the top Via, the first Route)."""
        key = name_key(name)[0]
        for i, (k, n, v) in enumerate(self._fields):
            if k == key:
                rest = split_outside_quotes(v, ",")[1:] if key in LIST_HEADERS else []
                if rest:
                    self._fields[i] = (k, n, ",".join(rest).strip())
                else:
                    del self._fields[i]
                return


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: `SIP/2.0/<transport> <host>[:port];params` (RFC 3261 20.42)."""

    transport: str
    host: str  # IPv6 references without brackets
    port: int | None = None
    params: Params = ()

    @classmethod
    @lru_cache(maxsize=4096)  # values are immutable; a message's are read several times
    def parse(cls, text: str) -> Via:
        """Parse one Via value; raises ValueError if it breaks the grammar."""
        if VIA.fullmatch(text.strip()) is None:
            raise ValueError(f"invalid Via: {text[:60]!r}")
        rest = text.strip().partition("/")[2].partition("/")[2].lstrip()
        i = 0
        while rest[i] not in " \t":
            i += 1
        transport = rest[:i]
        sent_by, _, params = rest[i:].strip().partition(";")
        sent_by = sent_by.strip()
        port: int | None = None
        if sent_by.startswith("["):
            end = sent_by.index("]")
            host = sent_by[1:end]
            tail = sent_by[end + 1 :].strip()
            if tail:
                port = int(tail[1:])
        else:
            host, colon, p = sent_by.partition(":")
            host = host.strip()
            port = int(p) if colon else None
        return cls(transport.upper(), host, port, parse_params(params) if params else ())

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {host}{port}{format_params(self.params)}"

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_params(self, **params: str | None) -> Via:
        """This Via with parameters set (replaced in place, or appended)."""
        out = self.params
        for name, value in params.items():
            out = set_param(out, name, value)
        return replace(self, params=out)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        value = self.param("received")
        return value.strip("[]") if value else value

    @property
    def rport(self) -> int | None:
        """The rport value; None when absent, requested (a flag) or not a number."""
        value = self.param("rport")
        return int(value) if value and value.isdigit() and len(value) <= 5 else None

    @property
    def response_addr(self) -> tuple[str, int]:
        """Where responses go per RFC 3261 18.2.2 / RFC 3581: received and rport win."""
        default = 5061 if self.transport == "TLS" else 5060
        return self.received or self.host, self.rport or self.port or default


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    @classmethod
    @lru_cache(maxsize=4096)  # values are immutable; a message's are read several times
    def parse(cls, text: str) -> CSeq:
        if CSEQ.fullmatch(text.strip()) is None:
            raise ValueError(f"invalid CSeq: {text[:60]!r}")
        number, method = text.split()
        return cls(int(number.lstrip("0") or "0"), method)  # "0009" is 9 (RFC 4475 wsinv)

    def __str__(self) -> str:
        return f"{self.number} {self.method}"
