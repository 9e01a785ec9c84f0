"""A running system for the edge tests: a real nats-server, the real router, two edges and a
SIP peer per trunk, each trunk on its own loopback address.

Trunks: `pbx` (127.0.0.2) on edge-a calls out; `gw1` (127.0.0.3) and `gw2` (127.0.0.4) on
edge-b are the route `local` (+1425..., in order); `gw3` (127.0.0.5) on edge-a is the
route `same-edge` (+1206...), so that call never leaves edge-a; `private` (+1999...) goes
to gw2 with the caller ID suppressed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from tandem import bus, telemetry
from tandem.config import Config, parse_config
from tandem.edge.service import Service as EdgeService
from tandem.pb import tandem_pb2 as pb
from tandem.policy.store import import_policy
from tandem.process import Context
from tandem.router.service import Service as RouterService
from tandem.sip import Request, Response
from tests.conftest import sip_port
from tests.edge.phones import Phone

LOCAL = "+14255550123"  # routed to gw1 then gw2
SAME_EDGE = "+12065550123"  # routed to gw3, on the ingress edge itself
PRIVATE = "+19995550123"  # routed to gw2 with the caller ID suppressed


@dataclass
class System:
    config: Config
    nc: Client
    js: JetStreamContext
    pbx: Phone
    gw1: Phone
    gw2: Phone
    gw3: Phone
    edge_a: EdgeService
    edge_b: EdgeService
    router: RouterService
    stranger: Phone
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    edge_c: EdgeService | None = None  # with make_system(edge_c=True): a third edge

    @property
    def a(self) -> tuple[str, int]:
        return "127.0.0.1", self.edge_a.transports.port

    async def ack_and_hang_up(self, invite: Request, answer: Response) -> None:
        """The PBX ACKs the answer and hangs up; gw1 takes the ACK and answers the BYE."""
        self.pbx.in_dialog(invite, answer, "ACK", self.a)
        await self.gw1.request("ACK")
        self.pbx.in_dialog(invite, answer, "BYE", self.a)
        assert (await self.pbx.final("BYE")).status == 200
        bye, addr = await self.gw1.request("BYE")
        self.gw1.answer(bye, 200, addr)

    async def call_events(self, last: str = "ended", within: float = 5.0) -> list[pb.CallEvent]:
        """The call events in the stream, in order, up to the first of kind `last`."""
        sub = await self.js.subscribe("tandem.call.>", ordered_consumer=True)
        events: list[pb.CallEvent] = []
        try:
            async with asyncio.timeout(within):
                while True:
                    msg = await sub.next_msg(timeout=within)
                    event = pb.CallEvent.FromString(msg.data)
                    events.append(event)
                    if bus.CALL_EVENT_KINDS[event.kind] == last:
                        return events
        finally:
            await sub.unsubscribe()


MakeSystem = Callable[..., Awaitable[System]]


@pytest.fixture
async def make_system(nc: Client, js: JetStreamContext) -> AsyncIterator[MakeSystem]:
    """Build the system; keyword arguments override trunk settings: gw1={...}, pbx={...};
    `settings` adds top-level config (capture, telemetry, dns), `edges` edge settings by id
    ({"edge-b": {"sip_tls": ..., "tls": ...}}); `edge_c` adds a third edge, edge-c, that
    serves no trunk unless one names it."""
    telemetry.setup_tracing("edge-test")
    systems: list[System] = []

    async def make(
        settings: dict[str, Any] | None = None,
        edges: dict[str, dict[str, Any]] | None = None,
        edge_c: bool = False,
        **overrides: dict[str, Any],
    ) -> System:
        phones = [await Phone.open(f"127.0.0.{n}") for n in (2, 3, 4, 5, 9)]
        pbx, gw1, gw2, gw3, stranger = phones
        quiet = {"options_interval_s": 0}

        def trunk(id: str, edge: str, phone: Phone, **more: Any) -> dict[str, Any]:
            spec = {"id": id, "edge": edge, "peer": phone.address, "sources": [phone.host]}
            return spec | quiet | more | overrides.get(id, {})

        config = parse_config(
            {
                "edges": [
                    {"id": edge_id, "sip": f"127.0.0.1:{sip_port()}"}
                    | (edges or {}).get(edge_id, {})
                    for edge_id in ("edge-a", "edge-b", "edge-c")[: 3 if edge_c else 2]
                ],
                "trunks": [
                    trunk("pbx", "edge-a", pbx, pstn_usages=["Local"]),
                    trunk("gw1", "edge-b", gw1, failover_timer_s=1.0),
                    trunk("gw2", "edge-b", gw2),
                    trunk("gw3", "edge-a", gw3),
                ],
                "routes": [
                    {
                        "id": "local",
                        "number_pattern": r"^\+1425\d{7}$",
                        "pstn_usages": ["Local"],
                        "trunks": ["gw1", "gw2"],
                        "spread": "ordered",
                    },
                    {
                        "id": "same-edge",
                        "number_pattern": r"^\+1206\d{7}$",
                        "pstn_usages": ["Local"],
                        "trunks": ["gw3"],
                    },
                    {
                        "id": "private",
                        "number_pattern": r"^\+1999\d{7}$",
                        "pstn_usages": ["Local"],
                        "trunks": ["gw2"],
                        "suppress_caller_id": True,
                        "alternate_caller_id": "+14255550000",
                    },
                ],
            }
            | (settings or {})
        )
        await import_policy(js, config.policy)
        router = RouterService(Context("router", config, nc, js, None))
        await router.start()
        edges = [
            EdgeService(Context(f"edge:{e.id}", config, nc, js, None), e) for e in config.edges
        ]
        for edge in edges:
            await edge.start()
        system = System(config, nc, js, pbx, gw1, gw2, gw3, edges[0], edges[1], router, stranger)
        system.edge_c = edges[2] if edge_c else None
        system.closers = [*(edge.stop for edge in edges), router.stop]
        for phone in phones:
            system.closers.append(closer(phone))
        systems.append(system)
        return system

    yield make
    for system in systems:
        for close in system.closers:
            await close()


def closer(phone: Phone) -> Callable[[], Awaitable[None]]:
    """What closes a phone when the system is torn down."""

    async def close() -> None:
        phone.close()

    return close
