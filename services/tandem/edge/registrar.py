"""tandem as the registrar of a PBX trunk (`registrar: true`, RFC 3261 10.3): the trunk's
REGISTERs, authenticated by digest first (`Inbound`), bind its Contact to the address they
came from (its `received`/`rport` for a PBX behind NAT, the connection for TCP or TLS);
calls to the trunk go there (`Executor.start_leg`), and its health is the binding's: up
while one is live, down when it lapses or is removed. One binding per trunk: the latest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tandem.b2bua.relay import respond
from tandem.edge.transport import Peer
from tandem.policy import Trunk
from tandem.sip import Request, Response
from tandem.sip.uri import NameAddr

log = logging.getLogger("tandem.edge.registrar")

MIN_EXPIRES_S = 60  # shorter asks get 423 (RFC 3261 10.3 step 7)
MAX_EXPIRES_S = 3600  # longer ones are granted this
DEFAULT_EXPIRES_S = 3600


@dataclass(frozen=True, slots=True)
class Binding:
    contact: NameAddr  # as the PBX gave it
    peer: Peer  # where its REGISTER came from: where its calls go
    expires_at: float  # wall clock


Health = Callable[[str, bool, str], None]  # trunk id, up, reason


class Registrar:
    """The bindings of the registrar trunks this edge serves."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self.bindings: dict[str, Binding] = {}
        self._lapses: dict[str, asyncio.TimerHandle] = {}

    def binding(self, trunk_id: str) -> Binding | None:
        """The trunk's live binding, if it has one."""
        found = self.bindings.get(trunk_id)
        return found if found is not None and found.expires_at > time.time() else None

    def register(self, request: Request, peer: Peer, trunk: Trunk) -> Response:
        """A REGISTER of the trunk, authenticated: the answer it gets."""
        try:
            contacts = request.contacts
            wildcard = request.headers.values("contact") == ["*"]
            expires = _expires(request, contacts[0] if contacts else None)
        except ValueError:
            return respond(request, 400, "Bad Contact or Expires")
        if wildcard or (contacts and expires == 0):
            if wildcard and expires != 0:
                return respond(request, 400, "Contact * needs Expires: 0")
            self._lapse(trunk.id, "removed")
            return respond(request, 200)
        if not contacts:  # a query: what is bound
            return self._bound(request, trunk.id)
        if expires < MIN_EXPIRES_S:
            return respond(request, 423, headers=[("Min-Expires", str(MIN_EXPIRES_S))])
        granted = min(expires, MAX_EXPIRES_S)
        binding = Binding(contacts[-1], peer, time.time() + granted)
        new = self.binding(trunk.id) is None
        self.bindings[trunk.id] = binding
        self._arm(trunk.id, granted)
        where = f"{peer.transport}:{peer.host}:{peer.port}"
        if new:
            log.info("trunk %s registered from %s as %s", trunk.id, where, binding.contact.uri)
        self.health(trunk.id, True, f"registered from {where}")
        return self._bound(request, trunk.id, granted)

    def _bound(self, request: Request, trunk_id: str, granted: int | None = None) -> Response:
        """200 with the binding, and how long it has left (`granted`: all of it)."""
        binding = self.binding(trunk_id)
        headers = []
        if binding is not None:
            left = granted if granted is not None else round(binding.expires_at - time.time())
            headers.append(("Contact", f"<{binding.contact.uri}>;expires={max(left, 0)}"))
        return respond(request, 200, headers=headers)

    def _arm(self, trunk_id: str, seconds: float) -> None:
        old = self._lapses.pop(trunk_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._lapses[trunk_id] = loop.call_later(seconds, self._lapse, trunk_id, "lapsed")

    def _lapse(self, trunk_id: str, why: str) -> None:
        timer = self._lapses.pop(trunk_id, None)
        if timer is not None:
            timer.cancel()
        if self.bindings.pop(trunk_id, None) is not None:
            log.info("trunk %s: registration %s", trunk_id, why)
        self.health(trunk_id, False, f"registration {why}")

    def forget(self, trunk_id: str) -> None:
        """The trunk is no longer served here (or no longer a registrar trunk)."""
        timer = self._lapses.pop(trunk_id, None)
        if timer is not None:
            timer.cancel()
        self.bindings.pop(trunk_id, None)

    def stop(self) -> None:
        for timer in self._lapses.values():
            timer.cancel()
        self._lapses.clear()


def _expires(request: Request, contact: NameAddr | None) -> int:
    """The expiry asked for: the Contact's `expires`, else Expires, else the default."""
    value = contact.param("expires") if contact is not None else None
    if value is None:
        value = request.headers.get("expires")
    if value is None:
        return DEFAULT_EXPIRES_S
    value = value.strip()
    if not value.isdigit() or len(value) > 10:
        raise ValueError(f"bad expires {value[:12]!r}")
    return int(value)
