"""TLS and mutual TLS on the edge's transports (tandem.edge.transport, tandem.edge.tls):
real handshakes over loopback with certificates the tests make."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from tandem.edge.transport import Peer, Transports
from tandem.policy import Trunk
from tandem.tls import (
    TlsContexts,
    TlsError,
    admits,
    certificate_names,
    name_matches,
)
from tests.conftest import free_port
from tests.edge.certs import Ca, serial_of

MSG = (
    b"OPTIONS sip:sbc.carrier.test SIP/2.0\r\nVia: SIP/2.0/TLS edge;branch=z9hG4bK1\r\n"
    b"From: <sip:edge>;tag=1\r\nTo: <sip:sbc.carrier.test>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)
WAIT_S = 5.0
SERVER_NAME = "sbc.carrier.test"


class Edge:
    """One edge's Transports, with what they received (and the sender's names) and failed."""

    def __init__(
        self,
        tls: TlsContexts | None = None,
        *,
        listen: bool = False,
        keepalive_s: float = 30.0,
    ) -> None:
        self.received: asyncio.Queue[tuple[bytes, Peer, tuple[str, ...]]] = asyncio.Queue()
        self.errors: asyncio.Queue[Peer] = asyncio.Queue()
        self.tls_port = free_port()
        self.transports = Transports(
            "127.0.0.1",
            free_port(),
            self._receive,
            self.errors.put_nowait,
            tls=tls,
            tls_listen=("127.0.0.1", self.tls_port) if listen else None,
            keepalive_s=keepalive_s,
        )

    @property
    def tls_peer(self) -> Peer:
        return Peer("tls", "127.0.0.1", self.tls_port)

    def _receive(self, data: bytes, peer: Peer) -> None:
        self.received.put_nowait((data, peer, self.transports.certificate_names(peer)))

    async def next_message(self) -> tuple[bytes, Peer, tuple[str, ...]]:
        return await asyncio.wait_for(self.received.get(), WAIT_S)

    async def next_error(self) -> Peer:
        return await asyncio.wait_for(self.errors.get(), WAIT_S)


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return Ca(tmp_path / "pki")


def contexts(ca: Ca, stem: str, names: list[str], **kwargs: object) -> TlsContexts:
    issued = ca.issue(stem, names)
    return TlsContexts(str(issued.cert), str(issued.key), str(ca.bundle), **kwargs)  # type: ignore[arg-type]


async def mutual_tls(ca: Ca) -> None:
    sbc = Edge(contexts(ca, "sbc", [SERVER_NAME]), listen=True)
    edge = Edge(contexts(ca, "edge", ["edge-b.tandem.test"]))
    await sbc.transports.start()
    await edge.transports.start()
    try:
        edge.transports.send(MSG, sbc.tls_peer, server_name=SERVER_NAME)
        edge.transports.send(MSG + MSG, sbc.tls_peer, server_name=SERVER_NAME)  # while connecting
        data, peer, names = await sbc.next_message()
        assert (data, peer.transport, names) == (MSG, "tls", ("edge-b.tandem.test",))
        for _ in range(2):
            assert (await sbc.next_message())[:2] == (MSG, peer)
        # the answer goes back on the same connection, and carries the server's names
        sbc.transports.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", peer)
        data, back, names = await edge.next_message()
        assert (back, names) == (sbc.tls_peer, (SERVER_NAME,))
        assert data.startswith(b"SIP/2.0 200 OK")
        # reused, not reopened
        edge.transports.send(MSG, sbc.tls_peer, server_name=SERVER_NAME)
        assert (await sbc.next_message())[1] == peer
        assert list(edge.transports.connections) == [sbc.tls_peer]
        stream = edge.transports.connections[sbc.tls_peer]
        assert stream.tls is not None and stream.tls.version() in ("TLSv1.2", "TLSv1.3")
        assert edge.transports.last_failure(sbc.tls_peer) is None
        assert sbc.transports.listeners[-1] == f"tls:127.0.0.1:{sbc.tls_port}"
    finally:
        await edge.transports.stop()
        await sbc.transports.stop()


async def test_mutual_tls_between_two_edges(ca: Ca) -> None:
    await mutual_tls(ca)


def test_mutual_tls_on_uvloop(ca: Ca) -> None:
    """The processes run on uvloop, whose TLS is its own implementation."""
    uvloop.run(mutual_tls(ca))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda ca, other: ca.issue("wrong", ["other.test"]), "Hostname mismatch"),
        (lambda ca, other: ca.issue("old", [SERVER_NAME], expired=True), "certificate has expired"),
        (lambda ca, other: other.issue("stranger", [SERVER_NAME]), "unable to get local issuer"),
    ],
    ids=["wrong-name", "expired", "unknown-ca"],
)
async def test_bad_server_certificates_fail_with_the_reason(
    ca: Ca, tmp_path: Path, make: Callable[[Ca, Ca], object], reason: str
) -> None:
    issued = make(ca, Ca(tmp_path / "other", "another CA"))
    sbc = Edge(TlsContexts(str(issued.cert), str(issued.key), str(ca.bundle)), listen=True)  # type: ignore[attr-defined]
    edge = Edge(contexts(ca, "edge", ["edge-b.tandem.test"]))
    await sbc.transports.start()
    await edge.transports.start()
    try:
        edge.transports.send(MSG, sbc.tls_peer, server_name=SERVER_NAME)
        assert await edge.next_error() == sbc.tls_peer
        failure = edge.transports.last_failure(sbc.tls_peer)
        assert failure is not None and failure.startswith("tls: certificate verify failed")
        assert reason in failure
        assert sbc.received.empty() and not edge.transports.connections
        # tls_verify: false connects all the same (to a peer that asks for nothing better)
        edge.transports.send(MSG, sbc.tls_peer, server_name=SERVER_NAME, verify=False)
        assert (await sbc.next_message())[0] == MSG
        assert edge.transports.last_failure(sbc.tls_peer) is None
    finally:
        await edge.transports.stop()
        await sbc.transports.stop()


async def test_a_client_certificate_from_an_unknown_ca_is_refused(ca: Ca, tmp_path: Path) -> None:
    stranger = Ca(tmp_path / "other", "another CA").issue("edge", ["edge-b.tandem.test"])
    sbc = Edge(contexts(ca, "sbc", [SERVER_NAME]), listen=True)
    edge = Edge(TlsContexts(str(stranger.cert), str(stranger.key), str(ca.bundle)))
    await sbc.transports.start()
    await edge.transports.start()
    try:
        edge.transports.send(MSG, sbc.tls_peer, server_name=SERVER_NAME)
        assert await edge.next_error() == sbc.tls_peer  # TLS 1.3: after our side's handshake
        assert "unknown ca" in (edge.transports.last_failure(sbc.tls_peer) or "")
        [(inbound, failure)] = sbc.transports.failures.items()
        assert inbound.transport == "tls" and inbound.host == "127.0.0.1"
        assert "certificate verify failed: unable to get local issuer" in failure
        assert sbc.received.empty()
    finally:
        await edge.transports.stop()
        await sbc.transports.stop()


async def test_a_client_without_certificate_gives_no_names(ca: Ca) -> None:
    sbc = Edge(contexts(ca, "sbc", [SERVER_NAME]), listen=True)
    edge = Edge(TlsContexts(ca=str(ca.bundle)))
    await sbc.transports.start()
    await edge.transports.start()
    try:
        edge.transports.send(MSG, sbc.tls_peer, server_name=SERVER_NAME)
        _, _, names = await sbc.next_message()
        assert names == ()
    finally:
        await edge.transports.stop()
        await sbc.transports.stop()


async def test_connect_failures_have_a_reason(ca: Ca) -> None:
    edge = Edge(TlsContexts(ca=str(ca.bundle)))
    await edge.transports.start()
    nobody = Peer("tls", "127.0.0.1", free_port())
    try:
        edge.transports.send(MSG, nobody, server_name=SERVER_NAME)
        assert await edge.next_error() == nobody
        assert edge.transports.last_failure(nobody) == "connection refused"
    finally:
        await edge.transports.stop()


async def open_tls(
    port: int, ca: Ca, **context: object
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Python's own TLS client, as a peer that is not tandem."""
    ctx = ssl.create_default_context(cafile=str(ca.bundle))
    for name, value in context.items():
        setattr(ctx, name, value)
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=SERVER_NAME), WAIT_S
    )


async def test_pings_are_answered_and_swallowed(ca: Ca) -> None:
    sbc = Edge(contexts(ca, "sbc", [SERVER_NAME]), listen=True)
    await sbc.transports.start()
    try:
        reader, writer = await open_tls(sbc.tls_port, ca)
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), WAIT_S) == b"\r\n"
        writer.write(MSG[:30])
        writer.write(b"")
        writer.write(MSG[30:] + b"\r\n\r\n\r\n\r\n")
        assert (await sbc.next_message())[0] == MSG  # the keepalives were no message
        assert await asyncio.wait_for(reader.readexactly(4), WAIT_S) == b"\r\n\r\n"  # two pongs
        writer.close()
    finally:
        await sbc.transports.stop()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_below_1_2_is_refused(ca: Ca) -> None:
    sbc = Edge(contexts(ca, "sbc", [SERVER_NAME]), listen=True)
    await sbc.transports.start()
    try:
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(ca.bundle))
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError):
            await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", sbc.tls_port, ssl=old, server_hostname=SERVER_NAME
                ),
                WAIT_S,
            )
        await _until(lambda: bool(sbc.transports.failures))
        [failure] = sbc.transports.failures.values()
        assert failure == "tls: unsupported protocol"
    finally:
        await sbc.transports.stop()


async def _until(condition: Callable[[], bool]) -> None:
    """Poll what a callback-driven transport changed (it has no event to wait on)."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def _python_server(
    ca: Ca, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
) -> tuple[asyncio.Server, Peer]:
    issued = ca.issue("py", [SERVER_NAME])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(issued.cert), str(issued.key))
    port = free_port()
    server = await asyncio.start_server(handler, "127.0.0.1", port, ssl=ctx)
    return server, Peer("tls", "127.0.0.1", port)


async def test_a_flow_whose_pongs_stop_is_failed(ca: Ca) -> None:
    """RFC 5626 4.4.1: a peer that answered pings and stops answering has a dead flow."""
    pings: list[bytes] = []

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readuntil(b"\r\n\r\n") == MSG
        pings.append(await reader.readexactly(4))
        writer.write(b"\r\n")  # one pong, then silence (a peer that hung)
        await reader.read()

    server, peer = await _python_server(ca, answer_once)
    edge = Edge(TlsContexts(ca=str(ca.bundle)), keepalive_s=0.2)
    await edge.transports.start()
    try:
        edge.transports.send(MSG, peer, server_name=SERVER_NAME)
        assert await edge.next_error() == peer
        assert pings == [b"\r\n\r\n"]
        assert edge.transports.last_failure(peer) == "keepalive: no pong"
        assert peer not in edge.transports.connections
    finally:
        await edge.transports.stop()
        server.close()


async def test_a_peer_that_never_answers_pings_is_kept(ca: Ca) -> None:
    received = bytearray()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            received.extend(data)

    server, peer = await _python_server(ca, swallow)
    edge = Edge(TlsContexts(ca=str(ca.bundle)), keepalive_s=0.1)
    await edge.transports.start()
    try:
        edge.transports.send(MSG, peer, server_name=SERVER_NAME)
        await _until(lambda: received.count(b"\r\n\r\n") >= 4)  # MSG's own, then 3 pings
        assert edge.errors.empty() and peer in edge.transports.connections
    finally:
        await edge.transports.stop()
        server.close()


async def test_rotated_files_are_used_for_new_connections(
    ca: Ca, caplog: pytest.LogCaptureFixture
) -> None:
    first = ca.issue("sbc", [SERVER_NAME])
    tls = TlsContexts(str(first.cert), str(first.key), str(ca.bundle), check_interval_s=0)
    sbc = Edge(tls, listen=True)
    await sbc.transports.start()

    async def served_serial() -> int:
        _, writer = await open_tls(sbc.tls_port, ca)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return serial_of(der)

    try:
        assert await served_serial() == first.serial
        # a half-done rotation: the new certificate beside the old key; the old pair stays
        old_key = first.key.read_bytes()
        second = ca.issue("sbc", [SERVER_NAME])  # rewrites sbc.pem and sbc.key
        new_key = second.key.read_bytes()
        second.key.write_bytes(old_key)
        with caplog.at_level(logging.WARNING, "tandem.tls"):
            assert await served_serial() == first.serial
        assert "do not load" in caplog.text
        second.key.write_bytes(new_key)
        assert await served_serial() == second.serial
        assert tls.generation == 2
    finally:
        await sbc.transports.stop()


def test_files_are_checked_at_most_every_interval(ca: Ca) -> None:
    now = [0.0]
    first = ca.issue("sbc", [SERVER_NAME])
    tls = TlsContexts(str(first.cert), str(first.key), check_interval_s=2, clock=lambda: now[0])
    before = tls.server()
    ca.issue("sbc", [SERVER_NAME])
    now[0] = 1.0
    assert tls.server() is before
    now[0] = 2.5
    assert tls.server() is not before and tls.generation == 2


def test_unusable_files_are_refused_with_the_file(ca: Ca, tmp_path: Path) -> None:
    issued = ca.issue("sbc", [SERVER_NAME])
    other = ca.issue("other", ["other.test"])
    with pytest.raises(TlsError, match="needs its key"):
        TlsContexts(cert=str(issued.cert))
    with pytest.raises(TlsError, match=r"sbc\.pem with .*other\.key"):
        TlsContexts(str(issued.cert), str(other.key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsError, match=r"garbage\.pem: no certificate or crl found"):
        TlsContexts(ca=str(garbage))
    with pytest.raises(TlsError, match="cannot accept TLS"):
        TlsContexts().server()


async def test_listening_without_a_certificate_is_refused() -> None:
    edge = Edge(TlsContexts(), listen=True)
    with pytest.raises(TlsError, match="cannot accept TLS"):
        await edge.transports.start()
    await edge.transports.stop()


@pytest.mark.parametrize(
    ("presented", "reference", "matches"),
    [
        ("sbc.example.com", "sbc.example.com", True),
        ("SBC.Example.COM.", "sbc.example.com", True),
        ("*.example.com", "sbc.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.sbc.example.com", False),
        ("*.com", "example.com", False),
        ("sbc*.example.com", "sbc1.example.com", False),  # left-most label wildcard only
        ("a.*.example.com", "a.b.example.com", False),
        ("sbc.example.com", "sbc2.example.com", False),
    ],
)
def test_name_matching(presented: str, reference: str, matches: bool) -> None:
    assert name_matches(presented, reference) is matches


def test_certificate_names_and_admission() -> None:
    cert = {
        "subject": ((("commonName", "ignored.example.com"),),),
        "subjectAltName": (
            ("DNS", "SBC.example.com"),
            ("URI", "sip:sbc2.example.com;transport=tls"),
            ("IP Address", "127.0.0.1"),
        ),
    }
    assert certificate_names(cert) == ("sbc.example.com", "sbc2.example.com")
    assert certificate_names({"subject": ((("commonName", "cn.example.com"),),)}) == (
        "cn.example.com",
    )
    assert certificate_names(None) == ()
    trunk = Trunk(
        id="teams", edge="e", peer="sbc.example.com:5061", transport="tls",
        sources=["127.0.0.0/8"], tls_names=["sbc.example.com"],
    )  # fmt: skip
    assert admits(trunk, ["sbc.example.com"])
    assert admits(trunk, ["*.example.com"])
    assert not admits(trunk, ["other.example.com"])
    assert not admits(trunk, [])
    open_trunk = trunk.model_copy(update={"tls_names": []})
    assert admits(open_trunk, [])


async def test_a_tcp_probe_of_the_tls_port_is_no_failure_but_garbage_is(ca: Ca) -> None:
    sbc = Edge(contexts(ca, "sbc", [SERVER_NAME]), listen=True)
    await sbc.transports.start()
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", sbc.tls_port)
        writer.close()  # as a Kubernetes TCP probe does
        reader, writer = await asyncio.open_connection("127.0.0.1", sbc.tls_port)
        writer.write(MSG)  # plain SIP on the TLS port
        assert await asyncio.wait_for(reader.read(), WAIT_S) == b""  # closed on us
        await _until(lambda: bool(sbc.transports.failures))
        [failure] = sbc.transports.failures.values()
        assert failure.startswith("tls: ") and sbc.received.empty()
    finally:
        await sbc.transports.stop()


def test_contexts_from_the_edge_config(ca: Ca) -> None:
    from tandem.config import TlsFiles

    issued = ca.issue("edge", ["edge-a.tandem.test"])
    files = TlsFiles(cert=str(issued.cert), key=str(issued.key), ca=str(ca.bundle))
    served = TlsContexts.from_config(files).server()
    assert served.minimum_version is ssl.TLSVersion.TLSv1_2
    assert served.verify_mode is ssl.CERT_OPTIONAL  # a client certificate is asked for
    client_only = TlsContexts.from_config(None)
    assert client_only.client().verify_mode is ssl.CERT_REQUIRED
    assert client_only.client().check_hostname
    assert client_only.client(verify=False).verify_mode is ssl.CERT_NONE
