"""The edge's registration to a carrier trunk (a trunk with `register`): the sans-I/O
`tandem.sip.registration.Registration` moved over the edge's transactions to the trunk's
peer (resolved as a call's is; on to its next target after a failure), woken by one timer,
its state the trunk's health (`Probe.registration`), its binding removed when the edge
stops. The Contact's user part is the AOR's, so the INVITEs the carrier sends to it find
the trunk (`Inbound`)."""

from __future__ import annotations

import asyncio
import logging

from tandem.b2bua.local import Local, uri_transport
from tandem.edge.health import Probe, Prober
from tandem.edge.resolver import ResolveError
from tandem.edge.transactions import TRANSPORT_ERROR
from tandem.edge.transport import Peer
from tandem.policy import Trunk
from tandem.sip import Response
from tandem.sip.registration import Action, Changed, Registration, Send, State
from tandem.sip.uri import URI, format_host_port

log = logging.getLogger("tandem.edge.register")

REGISTER_TIMEOUT_S = 32.0  # timer F


def aor_user(trunk: Trunk) -> str | None:
    """The user part of the AOR a trunk registers (None: it does not register)."""
    if trunk.registration is None:
        return None
    return URI.parse(trunk.registration.aor).user


class Registering:
    """One trunk's registration, as the edge runs it."""

    def __init__(self, prober: Prober, probe: Probe, trunk: Trunk, local: Local) -> None:
        assert trunk.registration is not None
        self.prober = prober
        self.probe = probe
        self.trunk = trunk
        user = aor_user(trunk)
        hostport = format_host_port(local.host, local.port)
        contact = f"<sip:{user}@{hostport}{uri_transport(local.transport)}>"
        self.registration = Registration(
            trunk.registration.aor,
            contact,
            trunk.registration.expires,
            prober.peers.credentials(trunk),
        )
        self.targets: list[Peer] = []
        self.hop = 0  # the target the next REGISTER goes to
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def start(self) -> None:
        self.prober.spawn(self._do(self.registration.start(self.loop.time())))

    def stop(self) -> None:
        """Remove the binding (best effort: its answer is not waited for)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self.registration.state is not State.UNREGISTERED:
            self.prober.spawn(self._do(self.registration.stop(self.loop.time())))

    @property
    def state(self) -> str:
        return self.registration.state.value

    async def _do(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Changed):
                self._changed(action)
            elif isinstance(action, Send):
                await self._send(action)
        self._arm()

    def _changed(self, changed: Changed) -> None:
        up = changed.state is State.REGISTERED
        reason = "registered" if up else f"register: {changed.reason}"
        if not up and changed.state is not State.UNREGISTERED:
            log.warning("trunk %s: registration failed: %s", self.trunk.id, changed.reason)
        self.probe.registration(up, reason)

    async def _send(self, send: Send) -> None:
        try:
            if not self.targets:
                self.targets = await self.prober.peers.resolve(self.trunk)
                self.hop = 0
        except ResolveError as exc:
            await self._do(self.registration.timeout(self.loop.time(), str(exc)))
            return
        peer = self.targets[self.hop % len(self.targets)]

        def on_response(response: Response | None, failure: str) -> None:
            if response is not None and response.status < 200:
                return
            now = self.loop.time()
            if response is None:
                why = self.prober.transport_failure(peer) if failure == TRANSPORT_ERROR else None
                self.hop += 1  # the next attempt goes to the next target
                if self.hop >= len(self.targets):
                    self.targets = []  # and after the last one, to a fresh lookup
                actions = self.registration.timeout(now, why or failure)
            else:
                actions = self.registration.receive(response, now)
            self.prober.spawn(self._do(actions))

        self.prober.transactions.send_request(
            send.request, peer, on_response, give_up_s=REGISTER_TIMEOUT_S
        )

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.registration.get_timer()
        if when is not None and not self._stopped:
            self._timer = self.loop.call_at(when, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self.prober.spawn(self._do(self.registration.handle_timer(self.loop.time())))
