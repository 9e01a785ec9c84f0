"""TLS material as SSL contexts that follow their files, and the names a peer's certificate
gives it for admission (RFC 5922 7.1, RFC 6125 6.4.3); for the edge and `check-config`.

A rotated Kubernetes Secret replaces the files behind their paths; `TlsContexts` stats
them when a connection is made (at most every `check_interval_s`) and rebuilds its
contexts when they changed. A half-written rotation (a key that does not match the new
certificate yet) keeps the previous contexts until the next check.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tandem.policy import Trunk

if TYPE_CHECKING:
    from tandem.config import TlsFiles  # config imports this module

log = logging.getLogger("tandem.tls")

RELOAD_CHECK_S = 2.0
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsError(Exception):
    """TLS files that cannot be used; the message names the file and the reason."""


def _stat(path: str | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)  # follows the Secret's symlinks to the file itself
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class TlsContexts:
    """Server and client contexts from an optional certificate/key and CA bundle (PEM).

    Without a certificate the edge cannot listen for TLS, but still connects (no mutual
    TLS); without a CA bundle, the system's CA store verifies peers.
    """

    def __init__(
        self,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
        *,
        check_interval_s: float = RELOAD_CHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (cert is None) != (key is None):
            raise TlsError("a certificate needs its key, and a key its certificate")
        self.paths = (cert, key, ca)
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._stamps = tuple(_stat(p) for p in self.paths)
        self._checked = clock()
        self._server, self._client, self._client_unverified = self._build()
        self.generation = 1  # how many times the files were loaded

    @classmethod
    def from_config(cls, files: TlsFiles | None, **kwargs: Any) -> TlsContexts:
        if files is None:
            return cls(**kwargs)
        return cls(files.cert, files.key, files.ca, **kwargs)

    def server(self) -> ssl.SSLContext:
        """The context for an accepted connection: asks for (and verifies) a client cert."""
        self._refresh()
        if self._server is None:
            raise TlsError("no certificate configured: this edge cannot accept TLS")
        return self._server

    def client(self, verify: bool = True) -> ssl.SSLContext:
        """The context for a connection we open: presents our certificate when we have one."""
        self._refresh()
        return self._client if verify else self._client_unverified

    def _build(self) -> tuple[ssl.SSLContext | None, ssl.SSLContext, ssl.SSLContext]:
        cert, key, ca = self.paths

        def context(purpose: int, verify: bool) -> ssl.SSLContext:
            ctx = ssl.SSLContext(purpose)
            ctx.minimum_version = MINIMUM_VERSION
            if cert is not None and key is not None:
                try:
                    ctx.load_cert_chain(cert, key)
                except (OSError, ssl.SSLError) as exc:
                    raise TlsError(f"{cert} with {key}: {_why(exc)}") from None
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                return ctx
            try:
                if ca is None:
                    ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
                else:
                    ctx.load_verify_locations(cafile=ca)
            except (OSError, ssl.SSLError) as exc:
                raise TlsError(f"{ca}: {_why(exc)}") from None
            return ctx

        server = None
        if cert is not None:
            server = context(ssl.PROTOCOL_TLS_SERVER, verify=True)
            server.verify_mode = ssl.CERT_OPTIONAL  # a presented certificate must verify
        return (
            server,
            context(ssl.PROTOCOL_TLS_CLIENT, True),
            context(ssl.PROTOCOL_TLS_CLIENT, False),
        )

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self.check_interval_s:
            return
        self._checked = now
        stamps = tuple(_stat(p) for p in self.paths)
        if stamps == self._stamps:
            return
        try:
            self._server, self._client, self._client_unverified = self._build()
        except TlsError as exc:
            log.warning("TLS files changed but do not load, keeping the previous ones: %s", exc)
            return
        self._stamps = stamps
        self.generation += 1
        log.info("TLS files reloaded: %s", ", ".join(p for p in self.paths if p))


# OpenSSL's reasons for files that do not load, in words
_FILE_REASONS = {
    "NO_START_LINE": "no PEM data in it",
    "KEY_VALUES_MISMATCH": "the key is not the certificate's",
}


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        if exc.reason in _FILE_REASONS:
            return _FILE_REASONS[exc.reason]
        if "PEM lib" in str(exc):  # Python gives no reason code for these
            return "no PEM data in it"
        return str(exc.reason or exc).lower().replace("_", " ")
    return exc.strerror or str(exc)


def failure_reason(exc: BaseException) -> str:
    """A TLS or connect failure in one line, for the log and the trunk's health reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}".lower().replace("_", " ")
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # the same words on asyncio and uvloop
    return str(exc) or exc.__class__.__name__


def certificate_names(cert: dict[str, Any] | None) -> tuple[str, ...]:
    """The DNS names a verified peer certificate gives (as `SSLObject.getpeercert()`).

    RFC 5922 7.1: the SAN's DNS names and sip:/sips: URIs' hosts; the subject's CN only
    when the SAN has neither.
    """
    if not cert:
        return ()
    names: list[str] = []
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS":
            names.append(value.lower())
        elif kind == "URI" and value.lower().startswith(("sip:", "sips:")):
            host = value.partition(":")[2].rpartition("@")[2].split(";")[0].split(":")[0]
            names.append(host.lower())
    if not names:
        for rdn in cert.get("subject", ()):
            names += [value.lower() for key, value in rdn if key == "commonName"]
    return tuple(dict.fromkeys(names))


def name_matches(presented: str, reference: str) -> bool:
    """RFC 6125 6.4.3: case-insensitive; `*` only as the whole left-most presented label,
    standing for exactly one label (so *.example.com is not example.com nor a.b.example.com).
    """
    presented, reference = presented.lower().rstrip("."), reference.lower().rstrip(".")
    if not presented.startswith("*."):
        return "*" not in presented and presented == reference
    suffix = presented[1:]  # ".example.com"
    if "*" in suffix or suffix.count(".") < 2:  # no *.com: too wide to mean a peer
        return False
    label, dot, rest = reference.partition(".")
    return bool(label) and bool(dot) and f".{rest}" == suffix


def admits(trunk: Trunk, names: Iterable[str]) -> bool:
    """Whether a peer whose certificate gives `names` may be this trunk (its tls_names)."""
    if not trunk.tls_names:
        return True  # the trunk names none: its source addresses decide alone
    presented = list(names)
    return any(name_matches(p, ref) for ref in trunk.tls_names for p in presented)
