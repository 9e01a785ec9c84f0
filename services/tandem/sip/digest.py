"""Digest authentication for SIP, both sides, sans-I/O (RFC 3261 22, RFC 7616, RFC 8760).

Theory of operation. A UAC that gets a 401/407 parses its challenges (`parse_challenges`),
picks one (`choose`: SHA-256 before MD5) and a `DigestClient` builds the Authorization or
Proxy-Authorization value, counting nc per nonce. A UAS's `DigestServer` issues challenges
whose nonce carries its own expiry under an HMAC, so any replica holding the key verifies
it without state; only the highest nc seen per nonce is remembered, in bounded memory.

qop=auth is supported, and no qop for RFC 2069-era peers; auth-int (which hashes the body)
and the -sess variants are not. Time is passed in (seconds, wall clock when replicas share
the key); randomness comes from `secrets`. Passwords are never in a repr or an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from tandem.sip.message import Request, Response

ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
}
PREFERENCE = ("SHA-256", "MD5")  # RFC 8760 2.4 lets local policy pick the strongest

NONCE_TTL_S = 300.0  # how long a nonce we issue stays fresh
MAX_TRACKED_NONCES = 10_000  # nonces whose highest nc the server remembers
MAX_CLIENT_NONCES = 64  # nonces whose nc the client counts (one per realm, really)
MAX_HEADER = 4096  # characters; a longer challenge or answer is refused unread

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_QUOTED = r'"((?:[^"\\\r\n]|\\[^\r\n])*)"'  # group: the content, escapes still in
_PARAM = re.compile(rf"[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:{_QUOTED}|({_TOKEN}))[ \t]*")
_SCHEME = re.compile(rf"[ \t]*({_TOKEN})(?:[ \t]+|$)")
_UNQUOTE = re.compile(r"\\(.)")
_NC = re.compile(r"[0-9A-Fa-f]{8}")


class DigestError(ValueError):
    """A challenge or an answer that cannot be read or used; the message names why."""


def _params(value: str) -> tuple[str, dict[str, str]]:
    """The scheme and the auth-params of one challenge or credentials value (RFC 7235 2.1)."""
    if len(value) > MAX_HEADER:
        raise DigestError("header too long")
    scheme = _SCHEME.match(value)
    if scheme is None:
        raise DigestError("no authentication scheme")
    params: dict[str, str] = {}
    pos = scheme.end()
    while pos < len(value):
        m = _PARAM.match(value, pos)
        if m is None:
            raise DigestError(f"unreadable parameter at offset {pos}")
        name = m.group(1).lower()
        if name in params:
            raise DigestError(f"parameter {name!r} repeated")
        quoted = m.group(2)
        params[name] = _UNQUOTE.sub(r"\1", quoted) if quoted is not None else m.group(3)
        pos = m.end()
        if pos < len(value):
            if value[pos] != ",":
                raise DigestError(f"expected ',' at offset {pos}")
            pos += 1
    return scheme.group(1), params


def _quote(text: str) -> str:
    if "\r" in text or "\n" in text:
        raise DigestError("line break in a parameter")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _algorithm(params: dict[str, str]) -> str:
    name = params.get("algorithm", "MD5")
    for known in ALGORITHMS:
        if name.upper() == known:
            return known
    raise DigestError(f"unsupported algorithm {name[:20]!r}")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One WWW-Authenticate or Proxy-Authenticate Digest challenge."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()  # the qop values offered; () for an RFC 2069 challenge
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, value: str) -> Challenge:
        scheme, params = _params(value)
        if scheme.lower() != "digest":
            raise DigestError(f"not a Digest challenge: {scheme[:20]!r}")
        if "realm" not in params or "nonce" not in params:
            raise DigestError("challenge without realm or nonce")
        qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
        return cls(
            realm=params["realm"],
            nonce=params["nonce"],
            algorithm=_algorithm(params),
            qop=qop,
            opaque=params.get("opaque"),
            stale=params.get("stale", "").lower() == "true",
        )

    def __str__(self) -> str:
        parts = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        return "Digest " + ", ".join(parts)


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """The Digest challenges among header values that tandem can answer, in their order.

    Other schemes, unknown algorithms and auth-int-only challenges are left out; a
    malformed Digest challenge raises DigestError.
    """
    found = []
    for value in values:
        scheme = _SCHEME.match(value)
        if scheme is None or scheme.group(1).lower() != "digest":
            continue
        try:
            challenge = Challenge.parse(value)
        except DigestError as exc:
            if str(exc).startswith("unsupported algorithm"):
                continue
            raise
        if challenge.qop and "auth" not in challenge.qop:
            continue
        found.append(challenge)
    return found


def choose(challenges: Iterable[Challenge]) -> Challenge:
    """The challenge to answer: the strongest algorithm; the first of equals (RFC 8760 2.4)."""
    ranked = sorted(challenges, key=lambda c: PREFERENCE.index(c.algorithm))
    if not ranked:
        raise DigestError("no Digest challenge tandem can answer (MD5 or SHA-256, qop=auth)")
    return ranked[0]


def _response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str,
    cnonce: str,
) -> str:
    h = ALGORITHMS[algorithm]
    ha1 = h(f"{username}:{realm}:{password}".encode())
    ha2 = h(f"{method}:{uri}".encode())
    if qop is None:  # RFC 2069 / RFC 2617 3.2.2.1 without qop
        return h(f"{ha1}:{nonce}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password, for one realm or (realm None) whatever realm challenges."""

    username: str
    password: str = field(repr=False)
    realm: str | None = None


@dataclass(frozen=True, slots=True)
class Authorization:
    """The parameters of an Authorization or Proxy-Authorization Digest value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str = ""
    cnonce: str = ""
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> Authorization:
        scheme, params = _params(value)
        if scheme.lower() != "digest":
            raise DigestError(f"not Digest credentials: {scheme[:20]!r}")
        missing = [p for p in ("username", "realm", "nonce", "uri", "response") if p not in params]
        if missing:
            raise DigestError(f"credentials without {', '.join(missing)}")
        qop = params.get("qop")
        if qop is not None:
            qop = qop.lower()
            if qop != "auth":
                raise DigestError(f"unsupported qop {qop[:20]!r}")
            if _NC.fullmatch(params.get("nc", "")) is None or not params.get("cnonce"):
                raise DigestError("qop=auth needs nc (8 hex digits) and cnonce")
        return cls(
            username=params["username"],
            realm=params["realm"],
            nonce=params["nonce"],
            uri=params["uri"],
            response=params["response"].lower(),
            algorithm=_algorithm(params),
            qop=qop,
            nc=params.get("nc", ""),
            cnonce=params.get("cnonce", ""),
            opaque=params.get("opaque"),
        )

    def __str__(self) -> str:
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.qop is not None:
            parts += [f"cnonce={_quote(self.cnonce)}", f"qop={self.qop}", f"nc={self.nc}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        return "Digest " + ", ".join(parts)


# status -> (the response header carrying challenges, the request header answering them)
HEADERS = {
    401: ("WWW-Authenticate", "Authorization"),
    407: ("Proxy-Authenticate", "Proxy-Authorization"),
}


class DigestClient:
    """Answers challenges with one set of credentials; nc counts up per nonce (RFC 7616 3.4)."""

    def __init__(
        self, credentials: Credentials, cnonce: Callable[[], str] = lambda: secrets.token_hex(16)
    ) -> None:
        self.credentials = credentials
        self._cnonce = cnonce
        self._counts: OrderedDict[str, int] = OrderedDict()

    def __repr__(self) -> str:
        return f"DigestClient({self.credentials!r})"

    def answer(self, response: Response, request: Request) -> tuple[str, str]:
        """The header (name, value) that answers a 401/407 to `request` when it is resent."""
        if response.status not in HEADERS:
            raise DigestError(f"{response.status} is not a challenge")
        challenge_header, answer_header = HEADERS[response.status]
        challenges = parse_challenges(response.headers.get_all(challenge_header))
        if self.credentials.realm is not None:
            challenges = [c for c in challenges if c.realm == self.credentials.realm]
        return answer_header, self.authorize(choose(challenges), request.method, request.uri)

    def authorize(self, challenge: Challenge, method: str, uri: str) -> str:
        """The Authorization value for a request with this method and Request-URI."""
        creds = self.credentials
        if creds.realm is not None and creds.realm != challenge.realm:
            raise DigestError(f"challenge for realm {challenge.realm[:60]!r}, not ours")
        qop = "auth" if "auth" in challenge.qop else None
        if challenge.qop and qop is None:
            raise DigestError(f"unsupported qop {','.join(challenge.qop)[:20]!r}")
        nc = self._counts.pop(challenge.nonce, 0) + 1
        self._counts[challenge.nonce] = nc
        while len(self._counts) > MAX_CLIENT_NONCES:
            self._counts.popitem(last=False)
        cnonce = self._cnonce() if qop else ""
        nc_text = f"{nc:08x}" if qop else ""
        return str(
            Authorization(
                username=creds.username,
                realm=challenge.realm,
                nonce=challenge.nonce,
                uri=uri,
                response=_response(
                    challenge.algorithm,
                    creds.username,
                    challenge.realm,
                    creds.password,
                    method,
                    uri,
                    challenge.nonce,
                    qop,
                    nc_text,
                    cnonce,
                ),
                algorithm=challenge.algorithm,
                qop=qop,
                nc=nc_text,
                cnonce=cnonce,
                opaque=challenge.opaque,
            )
        )


class Verdict(Enum):
    OK = "ok"
    STALE = "stale"  # right password, nonce expired or forgotten: re-challenge with stale=true
    WRONG = "wrong"  # wrong password, or a realm, algorithm, qop or URI that is not ours
    BAD_NONCE = "bad_nonce"  # a nonce we never issued
    REPLAY = "replay"  # an nc not above the highest seen for this nonce


_NONCE = struct.Struct(">Q8s")  # expiry in milliseconds, 8 random octets; then 16 of HMAC


class DigestServer:
    """Challenges and verifies for one realm; nonces are checked by HMAC, not stored.

    Only `nc` needs memory: the highest count seen per nonce, for at most `max_tracked`
    nonces. When one is forgotten its expiry raises a floor, and any forgotten nonce at or
    below the floor is answered STALE, so a replay is never accepted and the client simply
    gets a fresh nonce.
    """

    def __init__(
        self,
        realm: str,
        key: bytes,
        *,
        nonce_ttl_s: float = NONCE_TTL_S,
        algorithms: tuple[str, ...] = PREFERENCE,
        qop: bool = True,
        max_tracked: int = MAX_TRACKED_NONCES,
    ) -> None:
        unknown = [a for a in algorithms if a not in ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(f"unsupported algorithms {unknown}")
        if len(key) < 16:
            raise ValueError("the nonce key must have at least 16 octets")
        self.realm = realm
        self._key = key
        self.nonce_ttl_s = nonce_ttl_s
        self.algorithms = algorithms
        self.qop = qop
        self.max_tracked = max_tracked
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()  # nonce -> (nc, expiry)
        self._floor_ms = 0

    def __repr__(self) -> str:
        return f"DigestServer(realm={self.realm!r})"

    def _mac(self, body: bytes) -> bytes:
        return hmac.digest(self._key, self.realm.encode() + b"\0" + body, "sha256")[:16]

    def nonce(self, now: float) -> str:
        body = _NONCE.pack(int((now + self.nonce_ttl_s) * 1000), secrets.token_bytes(8))
        return base64.urlsafe_b64encode(body + self._mac(body)).decode().rstrip("=")

    def _expiry_ms(self, nonce: str) -> int | None:
        """The expiry a nonce of ours carries, or None when it is not ours."""
        if len(nonce) != 43:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=")
        except ValueError:
            return None
        body, mac = raw[: _NONCE.size], raw[_NONCE.size :]
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        expiry_ms: int = _NONCE.unpack(body)[0]
        return expiry_ms

    def challenges(self, now: float, *, stale: bool = False) -> list[str]:
        """WWW-Authenticate (or Proxy-Authenticate) values, most preferred first (RFC 8760)."""
        nonce = self.nonce(now)
        qop = ("auth",) if self.qop else ()
        return [str(Challenge(self.realm, nonce, a, qop, stale=stale)) for a in self.algorithms]

    def verify(
        self, credentials: Authorization, method: str, uri: str, password: str, now: float
    ) -> Verdict:
        """Whether these credentials authenticate a request of this method and Request-URI.

        The caller has looked the password up by `credentials.username`; `uri` is the
        Request-URI as received, compared as a string (RFC 7616 3.4.6).
        """
        if (
            credentials.realm != self.realm
            or credentials.algorithm not in self.algorithms
            or credentials.uri != uri
            or (self.qop and credentials.qop is None)  # no downgrade to RFC 2069
        ):
            return Verdict.WRONG
        expiry_ms = self._expiry_ms(credentials.nonce)
        if expiry_ms is None:
            return Verdict.BAD_NONCE
        expected = _response(
            credentials.algorithm,
            credentials.username,
            self.realm,
            password,
            method,
            uri,
            credentials.nonce,
            credentials.qop,
            credentials.nc,
            credentials.cnonce,
        )
        if not hmac.compare_digest(expected, credentials.response):
            return Verdict.WRONG
        if now * 1000 > expiry_ms:
            return Verdict.STALE
        if credentials.qop is None:
            return Verdict.OK  # nothing to count: the nonce's lifetime is the only bound
        return self._count(credentials.nonce, int(credentials.nc, 16), expiry_ms)

    def _count(self, nonce: str, nc: int, expiry_ms: int) -> Verdict:
        seen = self._seen.get(nonce)
        if seen is None:
            if expiry_ms <= self._floor_ms:
                return Verdict.STALE  # may have been seen and forgotten
        elif nc <= seen[0]:
            return Verdict.REPLAY
        self._seen[nonce] = (nc, expiry_ms)
        self._seen.move_to_end(nonce)
        while len(self._seen) > self.max_tracked:
            _, (_, forgotten_ms) = self._seen.popitem(last=False)
            self._floor_ms = max(self._floor_ms, forgotten_ms)
        return Verdict.OK
