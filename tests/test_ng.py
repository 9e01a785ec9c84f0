"""The NG protocol: bencode both ways, and the client's cookies, retransmissions and timeout
against a UDP peer that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandem.ng import NgClient, NgError, NgTimeout, decode, encode

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
VALUES = st.recursive(
    st.integers(-(2**40), 2**40) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def test_bencode_as_rtpengine_writes_it() -> None:
    assert encode({"command": "ping"}) == b"d7:command4:pinge"
    assert encode({"b": [1, "x"], "a": True}) == b"d1:ai1e1:bli1e1:xee"  # keys sorted
    assert decode(b"d6:result4:ponge") == {"result": "pong"}
    assert decode(b"d3:sdp5:v=0\r\ne") == {"sdp": "v=0\r\n"}


@given(VALUES)
def test_bencode_round_trips(value: Any) -> None:
    assert decode(encode(value)) == value


@pytest.mark.parametrize("data", [b"", b"i12", b"l1:a", b"5:abc", b"d1:ae", b"i1ei2e", b"x"])
def test_malformed_bencode_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


class Peer(asyncio.DatagramProtocol):
    """An rtpengine stand-in: drops the first `drop` copies of each request, then answers
    (with the request's cookie) what `reply` says."""

    def __init__(self, drop: int, reply: dict[str, Any]) -> None:
        self.drop, self.reply = drop, reply
        self.seen: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append(data)
        if len(self.seen) <= self.drop:
            return
        cookie = data.partition(b" ")[0]
        assert self.transport is not None
        self.transport.sendto(cookie + b" " + encode(self.reply), addr)


async def peer(drop: int, reply: dict[str, Any]) -> tuple[Peer, int]:
    protocol = Peer(drop, reply)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: protocol, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    return protocol, transport.get_extra_info("sockname")[1]


async def test_a_lost_request_is_sent_again_with_its_cookie() -> None:
    server, port = await peer(drop=1, reply={"result": "ok", "sdp": "v=0\r\n"})
    client = NgClient("127.0.0.1", port, retransmit_s=0.05, tries=3)
    try:
        reply = await client.request("offer", **{"call-id": "c1", "sdp": "v=0\r\n"})
    finally:
        client.close()
    assert reply["sdp"] == "v=0\r\n"
    assert len(server.seen) == 2 and server.seen[0] == server.seen[1]  # the same bytes


async def test_no_reply_after_every_try_is_a_timeout() -> None:
    server, port = await peer(drop=10, reply={"result": "ok"})
    client = NgClient("127.0.0.1", port, retransmit_s=0.05, tries=3)
    try:
        with pytest.raises(NgTimeout):
            await client.request("ping")
    finally:
        client.close()
    assert len(server.seen) == 3
    assert client.waiting == {}  # nothing left behind


async def test_an_error_result_raises_with_its_reason() -> None:
    _, port = await peer(drop=0, reply={"result": "error", "error-reason": "Unknown call-id"})
    client = NgClient("127.0.0.1", port, retransmit_s=0.05)
    try:
        with pytest.raises(NgError, match="Unknown call-id"):
            await client.request("query", **{"call-id": "nope"})
    finally:
        client.close()


async def test_concurrent_requests_get_their_own_replies() -> None:
    _, port = await peer(drop=0, reply={"result": "pong"})
    client = NgClient("127.0.0.1", port, retransmit_s=0.2)
    try:
        replies = await asyncio.gather(*(client.request("ping") for _ in range(20)))
    finally:
        client.close()
    assert [r["result"] for r in replies] == ["pong"] * 20
