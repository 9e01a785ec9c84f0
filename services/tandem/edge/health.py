"""OPTIONS keepalive of the trunks an edge serves, and their up/down state on the bus.

A trunk is down after 3 failed probes in a row (no answer, 408 or 503) and up again after
one good one (any other response, 501 included). A probe that cannot reach the trunk at
all says more than a lost datagram, and puts it down at once with the reason: its name
does not resolve (`dns: ...`), the TLS connection fails (`tls: ...`, the handshake's or
the certificate's reason), or it refuses tandem's digest credentials (`auth: ...`). A
probe resolves the peer as a call does (RFC 3263) and tries its targets in order until one
answers; a challenge is answered once, with the trunk's credentials. A trunk that registers
(`register`) is not probed: its health is its registration's state (`tandem.edge.register`).
A trunk that registers to tandem (`registrar`) is down until it does, and when its binding
lapses; while bound, its probes go where it registered from (keeping a NAT binding open).

Every result is put in KV TANDEM_TRUNK_HEALTH (its time, failed count and reason move with
each probe, so the record is never stale); the first result and each up/down change are
also published on `tandem.trunk.<trunk>.health`. A trunk served by several edges is probed
by one of them at a time, the holder of its lease in KV TANDEM_LEASES (renewed at each
probe; when its holder dies, another edge takes it after three probe intervals): one
record per trunk, whichever edge writes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from tandem import bus
from tandem.b2bua.auth import CHALLENGES, Auth, again
from tandem.b2bua.local import ACCEPT, USER_AGENT, Local, new_id, new_tag, uri_transport
from tandem.edge.metrics import EdgeMetrics
from tandem.edge.peers import Peers, domain
from tandem.edge.resolver import ResolveError
from tandem.edge.transactions import TRANSPORT_ERROR, Transactions
from tandem.edge.transport import Peer
from tandem.lease import Lease
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Trunk
from tandem.sip import Request, Response
from tandem.sip.uri import format_host_port

log = logging.getLogger("tandem.edge.health")

DOWN_AFTER = 3
FAILED_CODES = (408, 503)
PROBE_TIMEOUT_S = 32.0  # timer F; a shorter probe interval gives up sooner
# the lease on probing a trunk several edges serve: it lapses after this many probe
# intervals without a renewal (its holder died), and another edge probes
LEASE_PROBES = 3
LEASE_MIN_S = 6.0


@dataclass(frozen=True)
class Prober:
    """What the probes need of their edge."""

    edge: str
    transactions: Transactions
    locals: dict[str, Local]
    metrics: EdgeMetrics
    nc: Client
    js: JetStreamContext
    spawn: Callable[[Coroutine[Any, Any, Any]], None]
    peers: Peers
    transport_failure: Callable[[Peer], str | None]  # why a connection to a peer failed
    bound: Callable[[str], Peer | None]  # where a registrar trunk's PBX registered from


class Probe:
    """The probe loop of one trunk and what it has found."""

    def __init__(self, prober: Prober, trunk: Trunk) -> None:
        self.prober = prober
        self.trunk = trunk
        self.up = True
        self.reported = False  # nothing published yet
        self.failed = 0
        self.last_probe_ms = 0
        self.reason = "not probed yet"
        self.task: asyncio.Task[None] | None = None
        self._kv: KeyValue | None = None
        self.lease: Lease | None = None  # of a trunk several edges serve: who probes it
        self._writing = asyncio.Lock()  # the records are put in the order of the probes

    def start(self) -> None:
        if self.trunk.registration is not None:
            self.reason = "not registered yet"
        else:
            if self.trunk.registrar:  # down until the PBX registers
                self.registration(False, "not registered")
            if self.trunk.options_interval_s > 0:
                self.task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.lease is not None and self.lease.revision:
            self.prober.spawn(self.lease.release())  # another edge probes from its next round

    async def _run(self) -> None:
        interval = self.trunk.options_interval_s
        while True:
            try:
                if await self._probing():
                    self.record(*await self.probe(min(interval, PROBE_TIMEOUT_S)))
            except Exception:
                log.exception("probe of trunk %s failed", self.trunk.id)
            await asyncio.sleep(interval)

    async def _probing(self) -> bool:
        """Whether this edge probes the trunk now: always when it alone serves it; of several,
        the one holding the trunk's lease (the others show what its probes found)."""
        if len(self.trunk.edges) == 1:
            return True
        if self.lease is None:
            kv = await self.prober.js.key_value(bus.LEASES_BUCKET)
            ttl_s = max(LEASE_MIN_S, LEASE_PROBES * self.trunk.options_interval_s)
            self.lease = Lease(kv, self.prober.edge, self.trunk.id, ttl_s)
        if await (self.lease.renew() if self.lease.held else self.lease.try_acquire()):
            return True
        await self._follow()
        return False

    async def _follow(self) -> None:
        """The health the probing edge found, as this edge's view of the trunk."""
        if self._kv is None:
            self._kv = await self.prober.js.key_value(bus.TRUNK_HEALTH_BUCKET)
        try:
            entry = await self._kv.get(self.trunk.id)
        except KeyNotFoundError:
            return
        health = pb.TrunkHealth.FromString(entry.value or b"")
        if health.edge != self.prober.edge:
            self.up, self.failed = health.up, health.failed_probes
            self.reason = f"{health.reason} (probed by {health.edge})"
            self.last_probe_ms = health.last_probe_unix_ms
            self.prober.metrics.trunk_up(self.trunk.id, self.up)

    async def probe(self, wait_s: float) -> tuple[Response | None, str | None]:
        """One probe: the answer of the first target that gives one (None: none did), or
        why the trunk cannot be reached at all (the reason that puts it down at once)."""
        if self.trunk.registrar:  # its binding, which the probes also keep open through NAT
            bound = self.prober.bound(self.trunk.id)
            if bound is None:
                return None, "not registered"
            targets = [bound]
        else:
            try:
                targets = await self.prober.peers.resolve(self.trunk)
            except ResolveError as exc:
                return None, str(exc)
        why = None
        for peer in targets:
            response, why = await self._probe(peer, wait_s)
            if response is not None:
                return response, why
        return None, why

    async def _probe(self, peer: Peer, wait_s: float) -> tuple[Response | None, str | None]:
        trunk = self.trunk
        local = self.prober.locals[peer.transport]
        host, port = domain(trunk)
        hostport = format_host_port(host, port) if port else host
        uri = f"sip:{hostport}{uri_transport(peer.transport)}"
        request = Request(
            "OPTIONS",
            uri,
            [
                ("Max-Forwards", "70"),
                ("From", f"<sip:tandem@{local.host}>;tag={new_tag()}"),
                ("To", f"<sip:{hostport}>"),
                ("Call-ID", new_id()),
                ("CSeq", "1 OPTIONS"),
                ("Contact", local.contact),
                ("Accept", ACCEPT),
                ("User-Agent", USER_AGENT),
            ],
        )
        auth = Auth(self.prober.peers.credentials(trunk)) if trunk.auth is not None else None
        for answered in range(3):
            response, failure = await self._send(request, peer, wait_s)
            if response is None:
                why = self.prober.transport_failure(peer) if failure == TRANSPORT_ERROR else None
                return None, why
            if auth is None or response.status not in CHALLENGES:
                return response, None
            header = auth.answer(request, response, answered)
            if isinstance(header, str):
                return response, f"auth: {header}"
            request = again(request, request.cseq.number + 1, header)
        return response, "auth: too many challenges"

    async def _send(
        self, request: Request, peer: Peer, wait_s: float
    ) -> tuple[Response | None, str]:
        answer: asyncio.Future[tuple[Response | None, str]] = (
            asyncio.get_running_loop().create_future()
        )

        def on_response(response: Response | None, failure: str) -> None:
            if (response is None or response.status >= 200) and not answer.done():
                answer.set_result((response, failure))

        self.prober.transactions.send_request(request, peer, on_response, give_up_s=wait_s)
        return await answer

    def record(self, response: Response | None, why: str | None = None) -> None:
        """One probe's result: the answer (None: none came), or why the trunk could not be
        reached at all, which puts it down at once."""
        self.last_probe_ms = bus.now_ms()
        if why is not None:
            self.failed += 1
            self.reason = why
            change = self.up
            self.up = False
        elif response is None or response.status in FAILED_CODES:
            self.failed += 1
            self.reason = (
                "no answer" if response is None else f"{response.status} {response.reason}"
            )
            change = self.up and self.failed >= DOWN_AFTER
            if change:
                self.up = False
        else:
            self.failed = 0
            self.reason = f"{response.status} {response.reason}"
            change = not self.up
            self.up = True
        self._announce(change)

    def registration(self, up: bool, reason: str) -> None:
        """A registering trunk's health: its registration's state, as it changes."""
        self.last_probe_ms = bus.now_ms()
        self.failed = 0 if up else self.failed + 1
        self.reason = reason
        change = up != self.up
        self.up = up
        self._announce(change)

    def _announce(self, change: bool) -> None:
        announce = change or not self.reported
        if announce:
            self.reported = True
            log.info("trunk %s is %s (%s)", self.trunk.id, "up" if self.up else "down", self.reason)
            self.prober.metrics.trunk_up(self.trunk.id, self.up)
        self.prober.spawn(self.publish(announce))

    @property
    def health(self) -> pb.TrunkHealth:
        return pb.TrunkHealth(
            trunk=self.trunk.id,
            edge=self.prober.edge,
            up=self.up,
            reason=self.reason,
            last_probe_unix_ms=self.last_probe_ms,
            failed_probes=self.failed,
        )

    async def publish(self, announce: bool) -> None:
        """The KV first: whoever hears the change can read the bucket and find it there."""
        data = self.health.SerializeToString()
        async with self._writing:
            if self._kv is None:
                self._kv = await self.prober.js.key_value(bus.TRUNK_HEALTH_BUCKET)
            await self._kv.put(self.trunk.id, data)
        if announce:
            await self.prober.nc.publish(
                bus.trunk_health(self.trunk.id), data, headers=bus.headers()
            )
