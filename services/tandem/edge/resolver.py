"""Where a trunk's peer is, by RFC 3263: NAPTR, SRV (RFC 2782 order), A/AAAA, cached by TTL.

`Resolver.resolve(peer, transport)` answers the ordered list of places to try, as `Peer`s
(transport, IP, port); the caller tries every one before the next trunk of the route. An
IP is used as it is; an FQDN with a port is looked up by A/AAAA only; an FQDN without a
port goes through NAPTR (SIP+D2U, SIP+D2T, SIPS+D2T), then SRV, then A/AAAA. A
`transport` keeps only that transport's NAPTR records and SRV name. IPv4 addresses come
before IPv6 ones, as the edge's sockets are usually IPv4.

Lookups go through dnspython's asyncio resolver to the configured nameservers. Answers
are kept for their TTL, empty answers for NEGATIVE_TTL_S, a nameserver that failed for
FAILURE_TTL_S (so a dead DNS server costs one timeout, not one per call), all on an
injected clock; identical lookups in flight are made once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from tandem.config import DNS_TIMEOUT_S, Dns
from tandem.edge.transport import Peer
from tandem.sip.uri import split_host_port

# NAPTR services of RFC 3263 (and RFC 3261 26.2 for SIPS) -> our transport names
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
TRANSPORTS = ("udp", "tcp", "tls")  # SRV queried in this order when there is no NAPTR

NEGATIVE_TTL_S = 30.0  # NXDOMAIN or no records of that type
FAILURE_TTL_S = 5.0  # the nameservers timed out or refused
MAX_TTL_S = 86400.0
MAX_CACHE = 4096


class ResolveError(Exception):
    """No place to send to: the caller's transport failure, with health reason `dns`."""

    reason = "dns"

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"dns: {name}: {detail}")
        self.name = name
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


def srv_order(records: Iterable[Srv], rng: random.Random) -> list[Srv]:
    """RFC 2782: lowest priority first; within one, a weighted random draw per position."""
    ordered: list[Srv] = []
    remaining = sorted(records, key=lambda r: (r.priority, r.weight != 0))
    while remaining:
        priority = remaining[0].priority
        group = [r for r in remaining if r.priority == priority]  # weight 0 first
        remaining = remaining[len(group) :]
        while group:
            draw = rng.randint(0, sum(r.weight for r in group))
            running = 0
            for i, record in enumerate(group):
                running += record.weight
                if running >= draw:
                    ordered.append(group.pop(i))
                    break
    return ordered


@dataclass(frozen=True, slots=True)
class _Answer:
    records: tuple[Any, ...]
    nxdomain: bool = False


class Resolver:
    """RFC 3263 lookups through the given nameservers (none: the system's resolv.conf)."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] = (),
        timeout_s: float = DNS_TIMEOUT_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._dns = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._dns.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
        self._dns.timeout = self._dns.lifetime = timeout_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._cache: dict[tuple[str, str], tuple[float, _Answer | ResolveError]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Task[_Answer]] = {}

    @classmethod
    def from_config(cls, config: Dns, **kwargs: Any) -> Resolver:
        return cls(config.addresses, config.timeout_s, **kwargs)

    async def resolve(self, peer: str, transport: str | None = None) -> list[Peer]:
        """The targets for `peer` (host or host:port), in the order to try them."""
        host, port = split_host_port(peer, 0)  # 0: no port given
        host = host.rstrip(".").lower()
        if transport is not None and transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        chosen = transport or "udp"  # RFC 3263 4.1: an IP or an explicit port means UDP
        try:
            ipaddress.ip_address(host)
            return [Peer(chosen, host, port or DEFAULT_PORTS[chosen])]
        except ValueError:
            pass
        if port:
            return [Peer(chosen, ip, port) for ip in await self._addresses_of(host)]
        targets: list[Peer] = []
        srv_found = False
        for kind, name in await self._services(host, transport):
            answer = await self._query(name, "SRV")
            records = [Srv(r.priority, r.weight, r.port, _name(r.target)) for r in answer.records]
            srv_found = srv_found or bool(records)
            for srv in srv_order(records, self._rng):
                if srv.target == "":  # target "." means: decidedly not here (RFC 2782)
                    continue
                # a target without an address is skipped: the others may do
                targets += [Peer(kind, ip, srv.port) for ip in await self._addresses(srv.target)]
        if srv_found:
            if not targets:
                raise ResolveError(host, "no SRV target has an address")
            return targets
        return [Peer(chosen, ip, DEFAULT_PORTS[chosen]) for ip in await self._addresses_of(host)]

    async def _services(self, host: str, transport: str | None) -> list[tuple[str, str]]:
        """(transport, SRV name) to query in order: from NAPTR, else the RFC 3263 names."""
        answer = await self._query(host, "NAPTR")
        naptrs = sorted(answer.records, key=lambda r: (r.order, r.preference))
        services = []
        for record in naptrs:
            kind = NAPTR_SERVICES.get(record.service.decode(errors="replace").upper())
            if kind is None or record.flags.lower() != b"s":
                continue
            if transport in (None, kind):
                services.append((kind, _name(record.replacement)))
        if services:
            return services
        kinds = [transport] if transport else list(TRANSPORTS)
        return [(kind, f"{SRV_PREFIX[kind]}.{host}") for kind in kinds]

    async def _addresses(self, host: str) -> list[str]:
        answers = await asyncio.gather(
            self._query(host, "A"), self._query(host, "AAAA"), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer  # both were awaited: neither failure goes unretrieved
        return [r.address for answer in answers for r in cast(_Answer, answer).records]

    async def _addresses_of(self, host: str) -> list[str]:
        """The addresses of the peer itself: there, none is an error."""
        addresses = await self._addresses(host)
        if not addresses:
            nxdomain = (await self._query(host, "A")).nxdomain  # cached by now
            raise ResolveError(host, "no such domain" if nxdomain else "no A/AAAA records")
        return addresses

    async def _query(self, name: str, rdtype: str) -> _Answer:
        key = (name, rdtype)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], ResolveError):
                raise ResolveError(cached[1].name, cached[1].detail)
            return cached[1]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lookup(name, rdtype))
            self._inflight[key] = task
            task.add_done_callback(self._landed)
        return await asyncio.shield(task)

    def _landed(self, task: asyncio.Task[_Answer]) -> None:
        self._inflight = {k: t for k, t in self._inflight.items() if t is not task}
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone (cancelled) meanwhile

    async def _lookup(self, name: str, rdtype: str) -> _Answer:
        outcome: _Answer | ResolveError
        try:
            answer = await self._dns.resolve(name, rdtype, search=False)
            assert answer.rrset is not None  # raise_on_no_answer (the default) ensures it
            outcome, ttl = _Answer(tuple(answer)), min(float(answer.rrset.ttl), MAX_TTL_S)
        except dns.resolver.NXDOMAIN:
            outcome, ttl = _Answer((), nxdomain=True), NEGATIVE_TTL_S
        except dns.resolver.NoAnswer:
            outcome, ttl = _Answer(()), NEGATIVE_TTL_S
        except dns.exception.Timeout:
            outcome, ttl = (
                ResolveError(name, f"nameservers did not answer ({rdtype})"),
                FAILURE_TTL_S,
            )
        except dns.resolver.NoNameservers as exc:
            detail = f"nameservers failed ({rdtype}): {str(exc)[-80:]}"
            outcome, ttl = ResolveError(name, detail), FAILURE_TTL_S
        except dns.exception.DNSException as exc:  # a name that cannot be, a bad answer
            outcome, ttl = ResolveError(name, f"{exc.__class__.__name__} ({rdtype})"), FAILURE_TTL_S
        if len(self._cache) >= MAX_CACHE:
            self._cache.clear()
        self._cache[(name, rdtype)] = (self._clock() + ttl, outcome)
        if isinstance(outcome, ResolveError):
            raise outcome
        return outcome


def _name(name: Any) -> str:
    """A dnspython name as text without the root dot; the root itself is ""."""
    return str(name.to_text(omit_final_dot=True)).lower().rstrip(".")
