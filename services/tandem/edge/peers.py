"""Where the trunks an edge serves are, and what talking to them takes: a trunk's peer as
the places to try (RFC 3263 through `tandem.edge.resolver`; an IP address needs no
lookup), the name a TLS connection to each one verifies and sends as SNI (the trunk's
FQDN, RFC 5922; with `tls_verify: false`, none is checked), and the trunk's digest
credentials, read from where they are kept when they are needed (a rotated Secret is seen).
"""

from __future__ import annotations

import ipaddress
import logging

from tandem.edge.resolver import DEFAULT_PORTS, Resolver
from tandem.edge.transport import Peer
from tandem.policy import Trunk
from tandem.policy.model import SecretError
from tandem.sip.digest import Credentials
from tandem.sip.uri import split_host_port

log = logging.getLogger("tandem.edge.peers")

MAX_TLS_PEERS = 4096  # TLS addresses whose name is remembered (DNS may hand out new ones)


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def domain(trunk: Trunk) -> tuple[str, int]:
    """The trunk's peer as its URIs name it: host and port (0: none given)."""
    return split_host_port(trunk.peer, 0)


class Peers:
    """The edge's view of its trunks' peers; `tls_of` serves the transports' connects."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self._tls: dict[Peer, tuple[str | None, bool]] = {}

    def fixed(self, trunk: Trunk) -> list[Peer] | None:
        """The one target of a peer that is an address; None when it is a name to resolve."""
        host, port = domain(trunk)
        if not is_address(host):
            return None
        port = port or DEFAULT_PORTS[trunk.transport]
        return [self._known(trunk, Peer(trunk.transport, host, port))]

    async def resolve(self, trunk: Trunk) -> list[Peer]:
        """The targets of the trunk's peer in the order to try; raises ResolveError."""
        fixed = self.fixed(trunk)
        if fixed is not None:
            return fixed
        found = await self.resolver.resolve(trunk.peer, trunk.transport)
        return [self._known(trunk, peer) for peer in found]

    async def resolve_uri(self, trunk: Trunk, host: str, port: int, transport: str) -> Peer:
        """Where a URI of the trunk's that names a host (a Contact, a Route) leads: the
        first of its targets (RFC 3263 4.3); raises ResolveError."""
        name = f"{host}:{port}" if port else host
        first = (await self.resolver.resolve(name, transport))[0]
        return self._known(trunk, first)

    def _known(self, trunk: Trunk, peer: Peer) -> Peer:
        if peer.transport == "tls":
            if len(self._tls) >= MAX_TLS_PEERS and peer not in self._tls:
                del self._tls[next(iter(self._tls))]
            self._tls[peer] = (server_name(trunk), trunk.tls_verify)
        return peer

    def tls_of(self, peer: Peer) -> tuple[str | None, bool]:
        """The name a new TLS connection to `peer` verifies (None: its address), and
        whether it verifies at all."""
        return self._tls.get(peer, (None, True))

    @staticmethod
    def credentials(trunk: Trunk) -> Credentials | None:
        """The trunk's digest credentials, or None (none configured, or unreadable: said)."""
        auth = trunk.auth
        if auth is None:
            return None
        try:
            password = auth.password()
        except SecretError as exc:
            log.warning("trunk %s: %s; its challenges cannot be answered", trunk.id, exc)
            return None
        return Credentials(auth.username, password, auth.realm)


def server_name(trunk: Trunk) -> str | None:
    """What a TLS connection to the trunk verifies: its FQDN (None for an address)."""
    host, _ = domain(trunk)
    return None if is_address(host) else host
