"""RFC 3263 resolution (tandem.edge.resolver) against a real dnsmasq on a loopback port."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.config import Dns
from tandem.edge.resolver import FAILURE_TTL_S, ResolveError, Resolver, Srv, srv_order
from tandem.edge.transport import Peer
from tests.edge.dnsmasq import Dnsmasq

RECORDS = [
    # carrier.test: NAPTR prefers TLS, then UDP; each SRV has one target
    "--naptr-record=carrier.test,10,50,s,SIPS+D2T,,_sips._tcp.carrier.test",
    "--naptr-record=carrier.test,20,50,s,SIP+D2U,,_sip._udp.carrier.test",
    "--naptr-record=carrier.test,30,50,,SIP+D2T,,_sip._tcp.ignored.test",  # no "s" flag
    "--srv-host=_sips._tcp.carrier.test,sbc1.carrier.test,5061,10,10",
    "--srv-host=_sip._udp.carrier.test,sbc2.carrier.test,5060,10,10",
    "--host-record=sbc1.carrier.test,127.0.0.11",
    "--host-record=sbc2.carrier.test,127.0.0.12,::1",
    # srv.test: no NAPTR; two UDP targets at priority 10 (weights 60/20), a backup at 20
    "--srv-host=_sip._udp.srv.test,primary.srv.test,5060,10,60",
    "--srv-host=_sip._udp.srv.test,second.srv.test,5070,10,20",
    "--srv-host=_sip._udp.srv.test,backup.srv.test,5080,20,0",
    "--srv-host=_sip._udp.srv.test,gone.srv.test,5090,30,0",  # a target with no address
    "--host-record=primary.srv.test,127.0.0.21",
    "--host-record=second.srv.test,127.0.0.22",
    "--host-record=backup.srv.test,127.0.0.23",
    # plain.test: addresses only
    "--host-record=plain.test,127.0.0.31,::1",
    # broken.test: SRV whose only target has no address
    "--srv-host=_sip._udp.broken.test,nowhere.broken.test,5060,10,0",
]


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(RECORDS, tmp_path / "dnsmasq.log", ttl=60)
    server.start()
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(server: Dnsmasq, clock: Clock | None = None, seed: int = 1) -> Resolver:
    dns = Dns(nameservers=[f"127.0.0.1:{server.port}"], timeout_s=2)
    return Resolver.from_config(dns, clock=clock or Clock(), rng=random.Random(seed))


async def test_naptr_then_srv_then_addresses(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    assert await resolver.resolve("carrier.test") == [
        Peer("tls", "127.0.0.11", 5061),
        Peer("udp", "127.0.0.12", 5060),
        Peer("udp", "::1", 5060),
    ]
    assert await resolver.resolve("Carrier.Test.", "udp") == [
        Peer("udp", "127.0.0.12", 5060),
        Peer("udp", "::1", 5060),
    ]


async def test_a_transport_the_naptr_lacks_uses_its_own_srv_name(dnsmasq: Dnsmasq) -> None:
    with pytest.raises(ResolveError, match=r"carrier\.test: no A/AAAA records") as caught:
        await resolver_for(dnsmasq).resolve("carrier.test", "tcp")
    assert caught.value.reason == "dns"
    assert dnsmasq.queries("SRV", "_sip._tcp.carrier.test") == 1
    assert dnsmasq.queries("SRV", "_sip._tcp.ignored.test") == 0


async def test_srv_priority_and_weight_order(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq, seed=7)
    firsts: Counter[str] = Counter()
    for _ in range(200):
        targets = await resolver.resolve("srv.test")
        assert [t.port for t in targets[2:]] == [5080]  # the backup last; gone.srv.test skipped
        assert {t.host for t in targets[:2]} == {"127.0.0.21", "127.0.0.22"}
        assert all(t.transport == "udp" for t in targets)
        firsts[targets[0].host] += 1
    # weights 60:20 put the primary first three times in four (RFC 2782)
    assert 125 <= firsts["127.0.0.21"] <= 175
    assert dnsmasq.queries("SRV", "_sip._udp.srv.test") == 1  # the rest came from the cache


async def test_no_naptr_tries_every_transport_in_order(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    await resolver.resolve("srv.test")
    for name in ("_sip._udp.srv.test", "_sip._tcp.srv.test", "_sips._tcp.srv.test"):
        assert dnsmasq.queries("SRV", name) == 1


async def test_address_fallback_and_explicit_ports(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    assert await resolver.resolve("plain.test") == [
        Peer("udp", "127.0.0.31", 5060),
        Peer("udp", "::1", 5060),
    ]
    assert (await resolver.resolve("plain.test", "tls"))[0] == Peer("tls", "127.0.0.31", 5061)
    # a port: A/AAAA only, even where SRV records exist
    assert await resolver.resolve("primary.srv.test:5099", "tcp") == [
        Peer("tcp", "127.0.0.21", 5099)
    ]
    assert dnsmasq.queries("NAPTR", "primary.srv.test") == 0
    assert dnsmasq.queries("SRV", "_sip._tcp.primary.srv.test") == 0


async def test_an_ip_is_used_as_it_is() -> None:
    resolver = Resolver([("127.0.0.1", 9)], timeout_s=0.1)  # never asked
    assert await resolver.resolve("127.0.0.5") == [Peer("udp", "127.0.0.5", 5060)]
    assert await resolver.resolve("[::1]:5070", "tcp") == [Peer("tcp", "::1", 5070)]
    assert await resolver.resolve("127.0.0.5", "tls") == [Peer("tls", "127.0.0.5", 5061)]


@pytest.mark.parametrize(
    ("peer", "detail"),
    [
        ("nope.test", "nope.test: no such domain"),
        ("nope.test:5060", "nope.test: no such domain"),
        ("broken.test", "broken.test: no SRV target has an address"),
    ],
)
async def test_names_that_lead_nowhere(dnsmasq: Dnsmasq, peer: str, detail: str) -> None:
    with pytest.raises(ResolveError, match=detail) as caught:
        await resolver_for(dnsmasq).resolve(peer)
    assert str(caught.value).startswith("dns: ")


async def test_a_silent_dns_server_times_out_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        clock = Clock()
        resolver = Resolver([silent.getsockname()], timeout_s=0.3, clock=clock)
        with pytest.raises(ResolveError, match="nameservers did not answer"):
            await resolver.resolve("carrier.test")
        asked = _drain(silent)
        assert asked >= 1
        # within FAILURE_TTL_S the failure is remembered: no second wait, no new query
        with pytest.raises(ResolveError, match="nameservers did not answer"):
            await resolver.resolve("carrier.test")
        assert _drain(silent) == 0
        clock.now += FAILURE_TTL_S + 1
        with pytest.raises(ResolveError, match="nameservers did not answer"):
            await resolver.resolve("carrier.test")
        assert _drain(silent) >= 1


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            return count
        count += 1


async def test_a_port_nobody_listens_on() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resolver = Resolver([("127.0.0.1", port)], timeout_s=0.3)
    with pytest.raises(ResolveError, match=r"dns: carrier\.test: nameservers"):
        await resolver.resolve("carrier.test")


async def test_answers_are_kept_for_their_ttl(tmp_path: Path) -> None:
    server = Dnsmasq(["--host-record=plain.test,127.0.0.31"], tmp_path / "dnsmasq.log", ttl=30)
    server.start()
    clock = Clock()
    resolver = Resolver([server.address], timeout_s=0.3, clock=clock)
    try:
        first = await resolver.resolve("plain.test:5060")
    finally:
        server.stop()
    clock.now += 29  # the server is gone; the answer is still good
    assert await resolver.resolve("plain.test:5060") == first == [Peer("udp", "127.0.0.31", 5060)]
    clock.now += 2
    with pytest.raises(ResolveError, match="nameservers"):
        await resolver.resolve("plain.test:5060")


async def test_concurrent_lookups_are_made_once(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    results = await asyncio.gather(*(resolver.resolve("srv.test") for _ in range(20)))
    assert all(len(r) == 3 for r in results)
    assert dnsmasq.queries("SRV", "_sip._udp.srv.test") == 1
    assert dnsmasq.queries("A", "primary.srv.test") == 1


def test_srv_order_rules() -> None:
    rng = random.Random(3)
    a, b = Srv(10, 0, 1, "a"), Srv(10, 0, 2, "b")
    high, low = Srv(5, 100, 3, "high"), Srv(20, 100, 4, "low")
    for _ in range(20):
        ordered = srv_order([low, a, b, high], rng)
        assert ordered[0] == high and ordered[-1] == low
        assert set(ordered[1:3]) == {a, b}
    # a weight-0 record can still come first, but rarely, beside a heavy one
    heavy = Srv(10, 1000, 5, "heavy")
    firsts = Counter(srv_order([a, heavy], rng)[0].target for _ in range(500))
    assert firsts["heavy"] > 480 and sum(firsts.values()) == 500
    assert srv_order([], rng) == []


async def test_a_bad_transport_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown transport"):
        await Resolver([("127.0.0.1", 9)]).resolve("carrier.test", "sctp")
