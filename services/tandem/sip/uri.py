"""SIP, SIPS and tel URIs and the name-addr / addr-spec forms that carry them (RFC 3261 19, 20).

Values are kept as written (escapes included) so that a parsed URI serialises back to the
same text; `unescape` gives the decoded form when a comparison needs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from urllib.parse import unquote

from tandem.sip import grammar

_QUOTE_PAIR = re.compile(r'["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')
Params = tuple[tuple[str, str | None], ...]


def unescape(text: str) -> str:
    """Decode %HH escapes (RFC 3261 19.1.2); invalid escapes are left as they are."""
    return unquote(text, errors="surrogateescape") if "%" in text else text


def split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on `sep` where it is not inside a quoted string or <...>."""
    if '"' not in text and "<" not in text:
        return text.split(sep)
    parts: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == sep and not angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parse_params(text: str) -> Params:
    """Parse `;name=value;flag` (text starts after the first ';'), LWS around ; and = removed."""
    params: list[tuple[str, str | None]] = []
    for item in split_outside_quotes(text, ";"):
        name, eq, value = item.partition("=")
        params.append((name.strip(), value.strip() if eq else None))
    return tuple(params)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def get_param(params: Params, name: str) -> str | None:
    """The value of a parameter (case-insensitive name); "" for a flag; None if absent."""
    name = name.lower()
    for k, v in params:
        if k.lower() == name:
            return "" if v is None else v
    return None


def set_param(params: Params, name: str, value: str | None) -> Params:
    """`params` with `name` set to `value` (replaced in place, or appended)."""
    lname = name.lower()
    out = [(k, value) if k.lower() == lname else (k, v) for k, v in params]
    if all(k.lower() != lname for k, _ in params):
        out.append((name, value))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class URI:
    """A sip/sips/tel URI broken into parts; other schemes keep their text in `opaque`."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""  # IPv6 references without brackets
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str = ""

    @classmethod
    @lru_cache(maxsize=4096)  # values are immutable; a message's are read several times
    def parse(cls, text: str) -> URI:
        """Parse a URI; raises ValueError if a sip/sips URI breaks the grammar."""
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or not scheme:
            raise ValueError(f"not a URI: {text!r}")
        if scheme == "tel":
            number, _, params = rest.partition(";")
            return cls(scheme, user=number, params=parse_params(params) if params else ())
        if scheme not in ("sip", "sips"):
            return cls(scheme, opaque=rest)
        if grammar.SIP_URI.fullmatch(text) is None:
            raise ValueError(f"invalid SIP URI: {text!r}")
        user = password = None
        if "@" in rest:
            userinfo, _, rest = rest.rpartition("@")
            user, colon, pw = userinfo.partition(":")
            password = pw if colon else None
        headers: tuple[tuple[str, str], ...] = ()
        rest, q, hpart = rest.partition("?")
        if q:
            headers = tuple((k, v) for k, _, v in (h.partition("=") for h in hpart.split("&")))
        hostport, _, params = rest.partition(";")
        port: int | None = None
        if hostport.startswith("["):
            end = hostport.index("]")
            host = hostport[1:end]
            if hostport[end + 1 :]:
                port = int(hostport[end + 2 :])
        else:
            host, colon, p = hostport.partition(":")
            port = int(p) if colon else None
        return cls(
            scheme,
            user=user,
            password=password,
            host=host,
            port=port,
            params=parse_params(params) if params else (),
            headers=headers,
        )

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(f"[{self.host}]" if ":" in self.host else self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> URI:
        return replace(self, params=set_param(self.params, name, value))

    @property
    def host_port(self) -> tuple[str, int | None]:
        """Where the URI points: (host without brackets, port or None)."""
        return self.host, self.port


def quote_display(name: str) -> str:
    """A display name as a quoted-string; '"', '\\' and control characters become quoted-pairs."""
    return '"' + _QUOTE_PAIR.sub(r"\\\g<0>", name) + '"'


def _unquote_display(text: str) -> str:
    if text.startswith('"'):
        out = []
        i = 1
        while i < len(text) - 1:
            if text[i] == "\\":
                i += 1
            out.append(text[i])
            i += 1
        return "".join(out)
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI and header parameters."""

    uri: URI
    display: str | None = None
    params: Params = ()

    @classmethod
    @lru_cache(maxsize=4096)  # values are immutable; a message's are read several times
    def parse(cls, text: str) -> NameAddr:
        """Parse a name-addr or addr-spec with parameters; raises ValueError if invalid."""
        text = text.strip()
        if grammar.ADDRESS.fullmatch(text) is None:
            raise ValueError(f"invalid address: {text[:60]!r}")
        if text.startswith('"'):
            i = 1
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            display: str | None = _unquote_display(text[: i + 1])
            lt = text.index("<", i)
        else:
            lt = text.find("<")
            head = text[:lt] if lt >= 0 else ""
            if lt < 0 or ";" in head or "=" in head:  # '<' inside a parameter value
                uri, _, rest = text.partition(";")
                return cls(URI.parse(uri.strip()), None, parse_params(rest) if rest else ())
            display = _unquote_display(head) if head.strip() else None
        gt = text.index(">", lt)
        rest = text[gt + 1 :].strip()
        params = parse_params(rest[1:]) if rest.startswith(";") else ()
        return cls(URI.parse(text[lt + 1 : gt]), display, params)

    def __str__(self) -> str:
        name = "" if self.display is None else quote_display(self.display) + " "
        return f"{name}<{self.uri}>{format_params(self.params)}"

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        return replace(self, params=set_param(self.params, name, value))

    @property
    def tag(self) -> str | None:
        return self.param("tag") or None


DEFAULT_PORT = 5060  # RFC 3261 19.1.2, for sip: over UDP and TCP


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """'1.2.3.4:5060', '[::1]:5060', 'gw.example.com' -> (host, port)."""
    host, sep, port = text.rpartition(":") if not text.endswith("]") else ("", "", "")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed IPv6 reference in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected ':port' after ']' in {text!r}")
        port = rest[1:]
    elif not sep or ":" in host:  # no port, or a bare IPv6 address
        host, port = text, ""
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if not port and text.endswith(":"):
        raise ValueError(f"missing port after ':' in {text!r}")
    if not port:
        if default_port is None:
            raise ValueError(f"missing port in {text!r}")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port {port!r} in {text!r}")
    return host, int(port)


def format_host_port(host: str, port: int) -> str:
    """host:port, with an IPv6 address in brackets (RFC 3261 25.1)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
