"""The configuration file: a local deployment (NATS, APIs, edges) and its routing policy.

Validated once, here, with pydantic; the rest of tandem trusts these typed objects. An
invalid file is refused with every error's field path and reason before anything starts.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tandem.router.patterns import PatternError, check_translation, compile_pattern

DEFAULT_SIP_PORT = 5060
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_ALTERNATE_CALLER_ID = re.compile(r"^(\+)?[1-9]\d*(;ext=[1-9]\d*)?$")

Id = Annotated[str, Field(pattern=_ID)]
Usage = Annotated[str, Field(min_length=1, max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


def _host_port(value: str, default_port: int | None) -> str:
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


class Trunk(Strict):
    id: Id
    edge: Id
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
    forward_pai: bool = False
    forward_call_history: bool = False
    options_interval_s: float = Field(default=30.0, ge=0, le=3600)  # 0: no probes
    enabled: bool = True

    @field_validator("peer")
    @classmethod
    def _peer(cls, value: str) -> str:
        return _host_port(value, DEFAULT_SIP_PORT)

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                Source.parse(text)
            except ValueError as exc:
                raise ValueError(f"{text!r} is not an IP, CIDR or IP:port ({exc})") from None
        return value

    @field_validator("failover_response_codes")
    @classmethod
    def _codes(cls, value: list[int]) -> list[int]:
        bad = [code for code in value if not 300 <= code <= 699]
        if bad:
            raise ValueError(f"not final SIP failure codes: {bad}")
        return value

    @field_validator("pstn_usages")
    @classmethod
    def _unique_usages(cls, value: list[str]) -> list[str]:
        return _unique(value, "usage")

    @property
    def admitted(self) -> list[Source]:
        return [Source.parse(text) for text in self.sources]

    @property
    def peer_address(self) -> tuple[str, int]:
        return split_host_port(self.peer, DEFAULT_SIP_PORT)


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
        return _unique(value, "trunk")

    @model_validator(mode="after")
    def _consistent(self) -> Route:
        if self.suppress_caller_id and not self.alternate_caller_id:
            raise ValueError("alternate_caller_id is required when suppress_caller_id is true")
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
        _unique([t.id for t in self.trunks], "trunk id")
        _unique([r.id for r in self.routes], "route id")
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


class ApiService(Strict):
    api: str = "127.0.0.1:8080"

    @field_validator("api")
    @classmethod
    def _api(cls, value: str) -> str:
        return _host_port(value, None)


class Callstate(ApiService):
    edge_lost_s: float = Field(default=10.0, gt=0, le=3600)  # no heartbeat this long: edge lost


class Edge(ApiService):
    id: Id
    sip: str
    advertise: str | None = None  # the address trunks reach us at, when not the sip host

    @field_validator("sip")
    @classmethod
    def _sip(cls, value: str) -> str:
        return _host_port(value, DEFAULT_SIP_PORT)


class Telemetry(Strict):
    mask_numbers: bool = False  # numbers in spans and logs: full, or all but the last 4 masked
    # where `tandem up` receives the spans of its children when no OTEL endpoint is set
    collector: str | None = "127.0.0.1:4318"

    @field_validator("collector")
    @classmethod
    def _collector(cls, value: str | None) -> str | None:
        return None if value is None else _host_port(value, None)


class Config(Policy):
    """A whole deployment: where NATS and the APIs are, the edges, and the routing policy."""

    nats: str = "nats://127.0.0.1:4222"
    api_token: str | None = Field(default=None, repr=False)
    router: ApiService = ApiService(api="127.0.0.1:8081")
    callstate: Callstate = Callstate(api="127.0.0.1:8082")
    edges: list[Edge] = []
    telemetry: Telemetry = Telemetry()

    @model_validator(mode="after")
    def _edges(self) -> Config:
        _unique([e.id for e in self.edges], "edge id")
        if self.edges:
            known = {e.id for e in self.edges}
            for trunk in self.trunks:
                if trunk.edge not in known:
                    raise ValueError(f"trunk {trunk.id!r} names unknown edge {trunk.edge!r}")
        return self

    @property
    def policy(self) -> Policy:
        return Policy(pstn_usages=self.pstn_usages, trunks=self.trunks, routes=self.routes)

    def edge(self, edge_id: str) -> Edge:
        for edge in self.edges:
            if edge.id == edge_id:
                return edge
        raise KeyError(edge_id)


def _unique(values: Iterable[str], what: str) -> list[str]:
    values = list(values)
    if len(set(values)) == len(values):  # the usual case, quickly (100,000 routes load)
        return values
    dup = sorted(v for v, n in Counter(values).items() if n > 1)
    if dup:
        raise ValueError(f"duplicate {what}: {dup}")
    return values


class ConfigError(Exception):
    """An invalid configuration: one line per error, each with its field path and reason."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{source}: invalid configuration\n" + "\n".join(errors))


def format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"]) or "(top)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {message}")
    return lines


def parse_config(data: Any, source: str = "config") -> Config:
    try:
        return Config.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(source, format_errors(exc)) from None


def load_config(path: str | Path) -> Config:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), [f"  (file): {exc}"]) from None
    return parse_config(data, str(path))
