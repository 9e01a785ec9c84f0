"""The configuration file: a local deployment (NATS, APIs, edges) and its routing policy.

Validated once, here, with pydantic; the rest of tandem trusts these typed objects. An
invalid file is refused with every error's field path and reason before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

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


class Nats(Strict):
    """Where the bus is, and how many copies JetStream keeps of each stream and bucket."""

    url: str = "nats://127.0.0.1:4222"  # or several, comma-separated: a cluster's servers
    # copies of every stream and bucket (JetStream allows 1 to 5; each needs its own server);
    # unset: as many as the local cluster `tandem up` starts has, else 1
    replicas: int | None = Field(default=None, ge=1, le=5)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        for server in value.split(","):
            parsed = urlparse(server.strip())
            if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
                raise ValueError(f"{server.strip()!r} is not a nats:// or tls:// URL")
            parsed.port  # noqa: B018  (raises ValueError on a bad port)
        return value

    @property
    def urls(self) -> list[str]:
        return [server.strip() for server in self.url.split(",")]


class Telemetry(Strict):
    mask_numbers: bool = False  # numbers in spans and logs: full, or all but the last 4 masked
    # where `tandem up` receives the spans of its children when no OTEL endpoint is set
    collector: str | None = "127.0.0.1:4318"

    @field_validator("collector")
    @classmethod
    def _collector(cls, value: str | None) -> str | None:
        return None if value is None else host_port(value, None)


class Config(Policy):
    """A whole deployment: where NATS and the APIs are, the edges, and the routing policy."""

    nats: Nats = Nats()
    # `tandem up` starts this many local nats-server processes as one JetStream cluster
    nats_cluster: Literal[1, 3, 5] = 1
    api_token: str | None = Field(default=None, repr=False)
    router: ApiService = ApiService(api="127.0.0.1:8081")
    callstate: Callstate = Callstate(api="127.0.0.1:8082")
    edges: list[Edge] = Field(default_factory=list)
    telemetry: Telemetry = Telemetry()

    @field_validator("nats", mode="before")
    @classmethod
    def _nats_url(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value  # `nats: nats://...`

    @field_validator("nats_cluster")
    @classmethod
    def _room_for_replicas(cls, value: int, info: ValidationInfo) -> int:
        nats = info.data.get("nats")
        wanted = nats.replicas if isinstance(nats, Nats) else None
        if value > 1 and wanted is not None and wanted > value:
            raise ValueError(f"{value} servers cannot keep nats.replicas: {wanted} copies")
        return value

    @property
    def replicas(self) -> int:
        """How many copies of every stream and bucket the bus keeps."""
        if self.nats.replicas is not None:
            return self.nats.replicas
        return min(self.nats_cluster, 3)

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
