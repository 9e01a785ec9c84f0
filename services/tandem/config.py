"""The configuration file: a local deployment (NATS, APIs, edges) and its routing policy.

Validated once, here, with pydantic; the rest of tandem trusts these typed objects. An
invalid file is refused with every error's field path and reason before anything starts.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from tandem.policy.model import Id, Policy, SecretError, Strict, host_port, unique
from tandem.sip.uri import DEFAULT_PORT, format_host_port, split_host_port
from tandem.tls import TlsContexts, TlsError

DEFAULT_TLS_PORT = 5061  # RFC 3261 26.2
DNS_PORT = 53
DNS_TIMEOUT_S = 2.0
NG_PORT = 2223  # rtpengine's NG control port, as its packaging and Kamailio's examples use


class ApiService(Strict):
    api: str = "127.0.0.1:8080"

    @field_validator("api")
    @classmethod
    def _api(cls, value: str) -> str:
        return host_port(value, None)


class Callstate(ApiService):
    edge_lost_s: float = Field(default=10.0, gt=0, le=3600)  # no heartbeat this long: edge lost


class TlsFiles(Strict):
    """PEM files: the edge's certificate (chain), its key, and the CA bundle for peers.

    Paths, read when connections are made and read again when they change (a rotated
    Kubernetes Secret); without `ca` the system's CA store verifies peers.
    """

    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)
    ca: str | None = Field(default=None, min_length=1)


class Edge(ApiService):
    id: Id
    sip: str
    advertise: str | None = None  # the address trunks reach us at, when not the sip host
    sip_tls: str | None = None  # the TLS listener, host[:port] (5061 by default)
    tls: TlsFiles | None = None  # the certificate for sip_tls, and for mutual TLS outbound
    # A worker of several edges on one `sip` address (SO_REUSEPORT): the kernel hands each
    # new request to one of them by the sender's address and port; this port of its own,
    # in its Via and Contact, brings the responses and in-dialog requests back to it.
    own_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("sip")
    @classmethod
    def _sip(cls, value: str) -> str:
        return host_port(value, DEFAULT_PORT)

    @field_validator("sip_tls")
    @classmethod
    def _sip_tls(cls, value: str | None) -> str | None:
        return None if value is None else host_port(value, DEFAULT_TLS_PORT)

    @model_validator(mode="after")
    def _tls_files(self) -> Edge:
        if self.sip_tls is not None and self.tls is None:
            raise ValueError("sip_tls needs tls: {cert, key}")
        if self.own_port is not None and self.own_port == split_host_port(self.sip, 0)[1]:
            raise ValueError("own_port must differ from the sip port")
        return self

    @property
    def sip_tls_address(self) -> tuple[str, int] | None:
        return None if self.sip_tls is None else split_host_port(self.sip_tls, DEFAULT_TLS_PORT)


class Dns(Strict):
    """Where RFC 3263 lookups go: nameservers as ip[:port]; none means /etc/resolv.conf."""

    nameservers: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=DNS_TIMEOUT_S, gt=0, le=30)

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, value: list[str]) -> list[str]:
        for text in value:
            host, _ = split_host_port(text, DNS_PORT)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"{text!r}: a nameserver is an IP address[:port]") from None
        return value

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [split_host_port(text, DNS_PORT) for text in self.nameservers]


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


class Media(Strict):
    """rtpengine, for the trunks that anchor media: the instances the edges control (NG over
    UDP, host[:port]), and how `tandem up` runs a local one when none answers."""

    rtpengine: list[str] = Field(default_factory=lambda: [f"127.0.0.1:{NG_PORT}"], min_length=1)
    interface: str = "127.0.0.1"  # the local one's media address; `IP!PUBLIC` advertises another
    port_min: int = Field(default=30000, ge=1024, le=65535)
    port_max: int = Field(default=39999, ge=1024, le=65535)

    @field_validator("rtpengine")
    @classmethod
    def _instances(cls, value: list[str]) -> list[str]:
        addresses = [format_host_port(*split_host_port(text, NG_PORT)) for text in value]
        unique(addresses, "rtpengine instance")
        return value

    @field_validator("interface")
    @classmethod
    def _interface(cls, value: str) -> str:
        for part in value.split("!"):
            try:
                ipaddress.ip_address(part)
            except ValueError:
                raise ValueError(f"{value!r}: an IP address, or IP!PUBLIC-IP") from None
        return value

    @model_validator(mode="after")
    def _ports(self) -> Media:
        if self.port_max - self.port_min < 3:
            raise ValueError("port_max must be above port_min, with room for one call (4 ports)")
        return self

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [split_host_port(text, NG_PORT) for text in self.rtpengine]


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

    nats: Nats = Nats()
    # `tandem up` starts this many local nats-server processes as one JetStream cluster
    nats_cluster: Literal[1, 3, 5] = 1
    api_token: str | None = Field(default=None, repr=False)
    api_read_token: str | None = Field(default=None, repr=False)  # read-only API and console
    # what the edges derive their digest nonce key from, so any edge verifies any edge's
    # nonces (better: TANDEM_DIGEST_SECRET); without one, the API token
    digest_secret: str | None = Field(default=None, repr=False)
    router: ApiService = ApiService(api="127.0.0.1:8081")
    callstate: Callstate = Callstate(api="127.0.0.1:8082")
    edges: list[Edge] = Field(default_factory=list)
    telemetry: Telemetry = Telemetry()
    dns: Dns = Dns()
    capture: Capture = Capture()
    console: Console = Console()
    media: Media = Media()

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
        for sip in {e.sip for e in self.edges}:
            sharing = [e for e in self.edges if e.sip == sip]
            if len(sharing) > 1 and any(e.own_port is None for e in sharing):
                raise ValueError(
                    f"edges {', '.join(e.id for e in sharing)} share sip {sip}: "
                    "each needs an own_port"
                )
        own = [f"{e.sip.rpartition(':')[0]}:{e.own_port}" for e in self.edges if e.own_port]
        unique(own, "edge own_port")
        if taken := sorted(set(own) & {e.sip for e in self.edges}):
            raise ValueError(f"an edge's own_port is another edge's sip address: {taken}")
        if self.edges:
            edges = {e.id: e for e in self.edges}
            for trunk in self.trunks:
                for edge_id in trunk.edges:
                    edge = edges.get(edge_id)
                    if edge is None:
                        raise ValueError(f"trunk {trunk.id!r} names unknown edge {edge_id!r}")
                    if trunk.tls_names and edge.sip_tls is None:
                        raise ValueError(
                            f"trunk {trunk.id!r} has tls_names but edge {edge.id!r} has no sip_tls"
                        )
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


def _readable(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return f"cannot read {path!r}: {exc.strerror or exc}"
    return None


def file_errors(config: Config) -> list[str]:
    """What the process that uses them would find wrong in the files and secrets named.

    Not part of validation: a router never sees the edges' certificates nor the trunks'
    passwords, so only `tandem check-config` and the processes that use them ask.
    """
    lines = []
    for i, edge in enumerate(config.edges):
        if edge.tls is None:
            continue
        where = f"edges.{i}.tls"
        unreadable = [
            f"  {where}.{name}: {error}"
            for name in ("cert", "key", "ca")
            if (path := getattr(edge.tls, name)) is not None and (error := _readable(path))
        ]
        lines += unreadable
        if unreadable:
            continue
        try:  # as the edge will load them
            TlsContexts(edge.tls.cert, edge.tls.key, edge.tls.ca).server()
        except TlsError as exc:
            lines.append(f"  {where}: {exc}")
    for i, trunk in enumerate(config.trunks):
        if trunk.auth is None:
            continue
        field = "password_env" if trunk.auth.password_env is not None else "password_file"
        try:
            trunk.auth.password()
        except SecretError as exc:
            lines.append(f"  trunks.{i}.auth.{field}: {exc}")
    return lines


def check_files(config: Config, source: str = "config") -> Config:
    """The config, once `file_errors` finds nothing; else ConfigError."""
    errors = file_errors(config)
    if errors:
        raise ConfigError(source, errors)
    return config


def load_config(path: str | Path) -> Config:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), [f"  (file): {exc}"]) from None
    return parse_config(data, str(path))
