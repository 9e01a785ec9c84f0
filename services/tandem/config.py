"""The configuration file: a local deployment (NATS, APIs, edges) and its routing policy.

Validated once, here, with pydantic; the rest of tandem trusts these typed objects. An
invalid file is refused with every error's field path and reason before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tandem.policy.model import Id, Policy, Strict, host_port, unique
from tandem.sip.uri import DEFAULT_PORT


class ApiService(Strict):
    api: str = "127.0.0.1:8080"

    @field_validator("api")
    @classmethod
    def _api(cls, value: str) -> str:
        return host_port(value, None)


class Callstate(ApiService):
    edge_lost_s: float = Field(default=10.0, gt=0, le=3600)  # no heartbeat this long: edge lost


class Edge(ApiService):
    id: Id
    sip: str
    advertise: str | None = None  # the address trunks reach us at, when not the sip host

    @field_validator("sip")
    @classmethod
    def _sip(cls, value: str) -> str:
        return host_port(value, DEFAULT_PORT)


class Telemetry(Strict):
    mask_numbers: bool = False  # numbers in spans and logs: full, or all but the last 4 masked
    # where `tandem up` receives the spans of its children when no OTEL endpoint is set
    collector: str | None = "127.0.0.1:4318"

    @field_validator("collector")
    @classmethod
    def _collector(cls, value: str | None) -> str | None:
        return None if value is None else host_port(value, None)


class Capture(Strict):
    """SIP capture: every message in and out of each edge, by call, in TANDEM_SIP."""

    enabled: bool = True
    max_age_s: float = Field(default=3600.0, gt=0)  # the stream's limits: the oldest go first
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=64 * 1024)
    bodies: bool = True  # false: bodies (SDP) are left out
    hep: str | None = None  # also send HEP v3 to Homer / heplify-server: "udp:host:port"
    hep_password: str | None = Field(default=None, repr=False)  # heplify-server's auth key
    queue: int = Field(default=10_000, ge=1)  # messages waiting for the bus; more are dropped

    @field_validator("hep")
    @classmethod
    def _hep(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, _, address = value.partition(":")
        if scheme != "udp":
            raise ValueError(f"capture.hep must be udp:host:port, not {value!r}")
        host_port(address, 9060)
        return value


class Console(Strict):
    """The operator's console (/console on the callstate API)."""

    # where the console reaches the router's API for the route tester (default: router.api)
    router_url: str | None = None
    # a link to a tracing UI for a call's trace, e.g. http://jaeger:16686/trace/{trace_id}
    trace_url: str | None = None

    @field_validator("trace_url")
    @classmethod
    def _trace_url(cls, value: str | None) -> str | None:
        if value is not None and "{trace_id}" not in value:
            raise ValueError("console.trace_url must contain {trace_id}")
        return value


class Config(Policy):
    """A whole deployment: where NATS and the APIs are, the edges, and the routing policy."""

    nats: str = "nats://127.0.0.1:4222"
    api_token: str | None = Field(default=None, repr=False)
    api_read_token: str | None = Field(default=None, repr=False)  # read-only API and console
    router: ApiService = ApiService(api="127.0.0.1:8081")
    callstate: Callstate = Callstate(api="127.0.0.1:8082")
    edges: list[Edge] = Field(default_factory=list)
    telemetry: Telemetry = Telemetry()
    capture: Capture = Capture()
    console: Console = Console()

    @model_validator(mode="after")
    def _edges(self) -> Config:
        unique([e.id for e in self.edges], "edge id")
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
