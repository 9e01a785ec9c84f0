"""The routing policy's objects as Lync and Teams name them: trunks, voice routes, rules.

Validated once, when they are read (a config file, an API body, a stored key), with every
error's field path and reason; the router, the edges and `tandem up` trust them after that.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tandem.policy.patterns import PatternError, check_translation, compile_pattern
from tandem.sip.uri import DEFAULT_PORT, URI, split_host_port

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_ALTERNATE_CALLER_ID = re.compile(r"^(\+)?[1-9]\d*(;ext=[1-9]\d*)?$")
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Id = Annotated[str, Field(pattern=_ID)]
Usage = Annotated[str, Field(min_length=1, max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def host_port(value: str, default_port: int | None) -> str:
    split_host_port(value, default_port)
    return value


class Source(BaseModel):
    """One admitted source of a trunk: an IP network, optionally with a port."""

    model_config = ConfigDict(frozen=True)
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Source:
        port: int | None = None
        if "/" not in text and ("]:" in text or text.count(":") == 1):
            text, port = split_host_port(text)
        return cls(network=ipaddress.ip_network(text.strip("[]"), strict=False), port=port)

    def matches(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        return ip in self.network and self.port in (None, port)

    @property
    def specificity(self) -> tuple[int, int]:
        return self.network.prefixlen, int(self.port is not None)


class Rule(Strict):
    """A normalization or translation rule: the first rule whose pattern matches applies."""

    pattern: str
    translation: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compile_pattern(value)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _groups(self) -> Rule:
        try:
            check_translation(self.translation, compile_pattern(self.pattern))
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return self


class SecretError(Exception):
    """A configured secret that cannot be read; says where it was looked for, never its value."""


class TrunkAuth(Strict):
    """Digest credentials of a trunk: the password is named (a variable or a file), not held.

    Only the name travels (config store, exports, API answers); `password()` reads the
    value where it is used, so no model dump, repr or log line can carry it.
    """

    username: str = Field(min_length=1, max_length=128)
    password_env: str | None = None
    password_file: str | None = None
    realm: str | None = Field(default=None, min_length=1, max_length=255)
    challenge: bool = False  # inbound: this trunk must authenticate to tandem

    @field_validator("username", "realm")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable (no control characters or line breaks)")
        return value

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> TrunkAuth:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("give exactly one of password_env and password_file")
        return self

    @property
    def password_source(self) -> str:
        """Where the password is read from, for messages: never the password."""
        if self.password_env is not None:
            return f"environment variable {self.password_env}"
        return f"file {self.password_file}"

    def password(self) -> str:
        """The password, read now (a rotated Secret is seen); raises SecretError."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if not value:
                raise SecretError(f"{self.password_source} is not set")
            return value
        assert self.password_file is not None
        try:
            text = Path(self.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise SecretError(
                f"cannot read {self.password_source}: {exc.__class__.__name__}"
            ) from None
        value = text.rstrip("\r\n")  # a Secret file often ends with a newline
        if not value:
            raise SecretError(f"{self.password_source} is empty")
        return value


class Registration(Strict):
    """Tandem registers to the trunk (a carrier) as this address-of-record."""

    aor: str
    expires: int = Field(default=600, ge=60, le=86400)  # seconds asked for

    @field_validator("aor")
    @classmethod
    def _aor(cls, value: str) -> str:
        try:
            uri = URI.parse(value)
        except ValueError as exc:
            raise ValueError(f"not a SIP URI ({exc})") from None
        if uri.scheme not in ("sip", "sips") or not uri.user:
            raise ValueError("must be a sip: or sips: URI with a user part")
        return value


class Trunk(Strict):
    model_config = ConfigDict(serialize_by_alias=True)  # merged with Strict's

    id: Id
    edge: Id | list[Id]  # the edge that serves it, or several: any admits, a live one sends
    peer: str
    transport: Literal["udp", "tcp", "tls"] = "udp"
    sources: list[str] = Field(min_length=1)
    pstn_usages: list[Usage] = []
    inbound_rules: list[Rule] = []
    inbound_calling_rules: list[Rule] = []
    outbound_called_rules: list[Rule] = []
    outbound_calling_rules: list[Rule] = []
    max_concurrent_calls: int | None = Field(default=None, ge=1)
    failover_timer_s: float = Field(default=10.0, gt=0, le=300)
    failover_response_codes: list[int] = [408, 503, 504]
    forward_pai: bool = False  # the wave-1 name of `trusted` (read as trusted: true)
    forward_call_history: bool = False
    options_interval_s: float = Field(default=30.0, ge=0, le=3600)  # 0: no probes
    enabled: bool = True
    # in the trust domain (RFC 3325): its P-Asserted-Identity is believed, ours is sent to it
    trusted: bool = False
    session_expires_s: int = Field(default=1800, ge=0, le=86400)  # RFC 4028; 0: no timer
    min_se_s: int = Field(default=90, ge=90, le=86400)
    max_ring_s: float = Field(default=180.0, ge=0, le=3600)  # 0: rings as long as it likes
    max_call_s: float = Field(default=14400.0, ge=0, le=7 * 86400)  # 0: no limit
    refer: Literal["handle", "relay", "reject"] = "handle"
    redirect: Literal["relay", "follow"] = "relay"
    response_map: dict[int, int] = {}  # its final codes as tandem passes them on: {404: 503}
    tls_verify: bool = True  # outbound TLS: the peer's certificate must name the peer's host
    tls_names: list[str] = []  # inbound TLS: one of these must be in the certificate's SAN
    auth: TrunkAuth | None = None
    # tandem registers to this trunk; `register` in the config, a name BaseModel (an ABC) owns
    registration: Registration | None = Field(default=None, alias="register")
    registrar: bool = False  # this trunk (a PBX) registers to tandem
    # media: passed through as the trunks send it (bypass), or through rtpengine (anchor);
    # a call is anchored when either of its trunks anchors, and then this trunk's side of
    # it gets SRTP and ICE as below
    media: Literal["bypass", "anchor"] = "bypass"
    srtp: Literal["off", "sdes", "dtls", "optional"] = "off"
    ice: Literal["remove", "force"] = "remove"
    media_timeout_s: float = Field(default=60.0, ge=0, le=3600)  # no RTP from it: BYE; 0: never
    media_fallback: Literal["reject", "bypass"] = "reject"  # rtpengine unreachable: 503, or bypass

    @field_validator("edge")
    @classmethod
    def _edge(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("names no edge: give one, or a list of them")
            return unique(value, "edge")
        return value

    @field_validator("peer")
    @classmethod
    def _peer(cls, value: str) -> str:
        return host_port(value, DEFAULT_PORT)

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                Source.parse(text)
            except ValueError as exc:
                raise ValueError(f"{text!r} is not an IP, CIDR or IP:port ({exc})") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _forward_pai_is_trusted(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("forward_pai") and "trusted" not in data:
            return {**data, "trusted": True}
        return data

    @field_validator("response_map")
    @classmethod
    def _response_map(cls, value: dict[int, int]) -> dict[int, int]:
        bad = sorted(code for pair in value.items() for code in pair if not 300 <= code <= 699)
        if bad:
            raise ValueError(f"maps final SIP codes only (300-699), not {bad}")
        return value

    @model_validator(mode="after")
    def _session_timer(self) -> Trunk:
        if self.session_expires_s and self.session_expires_s < self.min_se_s:
            raise ValueError(
                f"session_expires_s ({self.session_expires_s}) is below min_se_s "
                f"({self.min_se_s}): 0 disables the timer"
            )
        return self

    @field_validator("failover_response_codes")
    @classmethod
    def _codes(cls, value: list[int]) -> list[int]:
        bad = [code for code in value if not 300 <= code <= 699]
        if bad:
            raise ValueError(f"not final SIP failure codes: {bad}")
        return value

    @field_validator("tls_names")
    @classmethod
    def _tls_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not _DNS_NAME.match(name)]
        if bad:
            raise ValueError(f"not DNS names: {bad}")
        return unique(value, "name")

    @model_validator(mode="after")
    def _consistent(self) -> Trunk:
        if self.tls_names and self.transport != "tls":
            raise ValueError("tls_names needs transport: tls")
        if self.registration is not None and self.registrar:
            raise ValueError("a trunk either registers to its peer (register) or is a registrar")
        if self.registrar and (self.auth is None or not self.auth.challenge):
            raise ValueError("registrar: true needs auth with challenge: true")
        if (self.registrar or self.registration is not None) and len(self.edges) > 1:
            raise ValueError("a trunk that registers (register, registrar) has one edge")
        if self.media == "bypass" and (self.srtp != "off" or self.ice != "remove"):
            raise ValueError(
                "srtp and ice apply to anchored media: set media: anchor (rtpengine does them)"
            )
        return self

    @field_validator("pstn_usages")
    @classmethod
    def _unique_usages(cls, value: list[str]) -> list[str]:
        return unique(value, "usage")

    @property
    def edges(self) -> tuple[str, ...]:
        """The edges that serve it, in the order given."""
        return (self.edge,) if isinstance(self.edge, str) else tuple(self.edge)

    @property
    def admitted(self) -> list[Source]:
        return [Source.parse(text) for text in self.sources]

    @property
    def peer_address(self) -> tuple[str, int]:
        return split_host_port(self.peer, DEFAULT_PORT)


class Route(Strict):
    """A voice route: calls whose normalized number matches go out through its trunks."""

    id: Id
    number_pattern: str
    pstn_usages: list[Usage] = Field(min_length=1)
    trunks: list[Id] = Field(min_length=1)
    priority: int = 0
    suppress_caller_id: bool = False
    alternate_caller_id: str | None = None
    spread: Literal["round_robin", "random", "weighted", "ordered"] = "round_robin"
    weights: dict[str, int] = {}
    description: str = ""

    @field_validator("number_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return Rule._compiles(value)

    @field_validator("alternate_caller_id")
    @classmethod
    def _alternate(cls, value: str | None) -> str | None:
        if value is not None and not _ALTERNATE_CALLER_ID.match(value):
            raise ValueError(r"must match (\+)?[1-9]\d*(;ext=[1-9]\d*)?")
        return value

    @field_validator("trunks")
    @classmethod
    def _unique_trunks(cls, value: list[str]) -> list[str]:
        return unique(value, "trunk")

    @model_validator(mode="after")
    def _consistent(self) -> Route:
        if self.spread == "weighted":
            missing = [t for t in self.trunks if self.weights.get(t, 0) <= 0]
            if missing:
                raise ValueError(f"weighted spread needs a positive weight for {missing}")
        stray = sorted(set(self.weights) - set(self.trunks))
        if stray:
            raise ValueError(f"weights name trunks not in this route: {stray}")
        return self


class Policy(Strict):
    """The routing policy: what lives in the TANDEM_CONFIG store and every router watches."""

    pstn_usages: list[Usage] = []  # the usage catalogue, besides the trunks' own usages
    trunks: list[Trunk] = []
    routes: list[Route] = []

    @model_validator(mode="after")
    def _references(self) -> Policy:
        return self.checked()

    def checked(self) -> Policy:
        """Self, once ids are unique and routes name only known trunks and usages."""
        unique([t.id for t in self.trunks], "trunk id")
        unique([r.id for r in self.routes], "route id")
        trunks = {t.id for t in self.trunks}
        usages = self.usages
        for route in self.routes:
            unknown = [t for t in route.trunks if t not in trunks]
            if unknown:
                raise ValueError(f"route {route.id!r} names unknown trunks {unknown}")
            unknown = [u for u in route.pstn_usages if u not in usages]
            if unknown:
                raise ValueError(f"route {route.id!r} names unknown PSTN usages {unknown}")
        return self

    @property
    def usages(self) -> set[str]:
        return set(self.pstn_usages).union(*(t.pstn_usages for t in self.trunks))


def unique(values: Iterable[str], what: str) -> list[str]:
    values = list(values)
    if len(set(values)) == len(values):  # the usual case, quickly (100,000 routes load)
        return values
    dup = sorted(v for v, n in Counter(values).items() if n > 1)
    if dup:
        raise ValueError(f"duplicate {what}: {dup}")
    return values
