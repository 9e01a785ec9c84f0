"""The routing policy's objects as Lync and Teams name them: trunks, voice routes, rules.

Validated once, when they are read (a config file, an API body, a stored key), with every
error's field path and reason; the router, the edges and `tandem up` trust them after that.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tandem.policy.patterns import PatternError, check_translation, compile_pattern
from tandem.sip.uri import DEFAULT_PORT, split_host_port

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_ALTERNATE_CALLER_ID = re.compile(r"^(\+)?[1-9]\d*(;ext=[1-9]\d*)?$")

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
        return unique(value, "usage")

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
