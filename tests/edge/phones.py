"""SIP peers for the edge tests: a trunk's PBX or gateway as a UDP socket on its own loopback
address, with just enough UA behaviour to place, answer, cancel and end calls by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from typing import cast

from tandem.edge.transport import Peer, Transports
from tandem.sip import ParseError, Request, Response, make_response, parse
from tandem.tls import TlsContexts
from tests.edge.dnsmasq import free_udp_and_tcp_port

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
Message = Request | Response


def branch() -> str:
    return "z9hG4bK" + os.urandom(6).hex()


class Phone(asyncio.DatagramProtocol):
    """One trunk's end: everything it receives is queued, parsed."""

    VIA = "UDP"  # the transport its Via names
    PARAMS = ""  # its URIs' parameters (";transport=tls")

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.inbox: asyncio.Queue[tuple[Message, tuple[str, int]]] = asyncio.Queue()
        self.cseq = 0
        self.invite_cseq = 0  # the CSeq our next ACK repeats

    @classmethod
    async def open(cls, host: str) -> Phone:
        phone = cls(host)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: phone, local_addr=(host, 0))
        return phone

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(ParseError):  # the edge's own output is tested elsewhere
            self.inbox.put_nowait((parse(data), addr))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, message: Message | bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(message if isinstance(message, bytes) else bytes(message), to)

    async def wait(
        self, match: Callable[[Message], bool], within: float = 3.0
    ) -> tuple[Message, tuple[str, int]]:
        """The next message that matches; others (retransmissions, 100s) are skipped."""
        async with asyncio.timeout(within):
            while True:
                message, addr = await self.inbox.get()
                if match(message):
                    return message, addr

    async def request(self, method: str, within: float = 3.0) -> tuple[Request, tuple[str, int]]:
        message, addr = await self.wait(
            lambda m: isinstance(m, Request) and m.method == method, within
        )
        assert isinstance(message, Request)
        return message, addr

    async def response(self, status: int, method: str = "INVITE", within: float = 3.0) -> Response:
        message, _ = await self.wait(
            lambda m: isinstance(m, Response) and m.status == status and m.cseq.method == method,
            within,
        )
        assert isinstance(message, Response)
        return message

    async def final(self, method: str = "INVITE", within: float = 3.0) -> Response:
        message, _ = await self.wait(
            lambda m: isinstance(m, Response) and m.status >= 200 and m.cseq.method == method,
            within,
        )
        assert isinstance(message, Response)
        return message

    async def silent(self, match: Callable[[Message], bool], seconds: float) -> bool:
        """True if nothing matching arrives within `seconds`."""
        try:
            await self.wait(match, seconds)
        except TimeoutError:
            return True
        return False

    # ---- as the caller --------------------------------------------------------------------

    def invite(
        self,
        edge: tuple[str, int],
        called: str,
        calling: str = "+14255550100",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = SDP,
        scheme: str = "sip",
        request_uri: str | None = None,
    ) -> Request:
        self.cseq = self.invite_cseq = 1
        request = Request(
            "INVITE",
            request_uri or f"{scheme}:{called}@{edge[0]}:{edge[1]}",
            [
                ("Via", f"SIP/2.0/{self.VIA} {self.address};branch={branch()}"),
                ("Max-Forwards", "70"),
                ("From", f'"Alice" <sip:{calling}@{self.host}>;tag={os.urandom(4).hex()}'),
                ("To", f"<sip:{called}@{edge[0]}>"),
                ("Call-ID", f"{os.urandom(8).hex()}@{self.host}"),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:alice@{self.address}{self.PARAMS}>"),
                *headers,
                ("Content-Type", "application/sdp"),
            ],
            body,
        )
        self.send(request, edge)
        return request

    def again(self, invite: Request, edge: tuple[str, int], *headers: tuple[str, str]) -> Request:
        """The INVITE sent again after a final response (a challenge): CSeq + 1, a new
        branch, `headers` added (its credentials)."""
        dropped = ("via", "cseq", "authorization", "proxy-authorization")
        fields = [(n, v) for n, v in invite.headers if n.lower() not in dropped]
        self.cseq = self.invite_cseq = invite.cseq.number + 1
        fields = [
            ("Via", f"SIP/2.0/{self.VIA} {self.address};branch={branch()}"),
            ("CSeq", f"{self.cseq} INVITE"),
            *fields,
            *headers,
        ]
        request = Request("INVITE", invite.uri, fields, invite.body)
        self.send(request, edge)
        return request

    def ack_final(self, invite: Request, response: Response, edge: tuple[str, int]) -> None:
        """The ACK of a non-2xx final response (RFC 3261 17.1.1.3): the INVITE's branch."""
        fields = [(n, v) for n, v in invite.headers if n.lower() in ("via", "from", "call-id")]
        fields += [
            ("To", response.headers.get("to") or ""),
            ("CSeq", f"{invite.cseq.number} ACK"),
            ("Max-Forwards", "70"),
        ]
        self.send(Request("ACK", invite.uri, fields), edge)

    def cancel(self, invite: Request, edge: tuple[str, int]) -> None:
        fields = [
            (n, v) for n, v in invite.headers if n.lower() in ("via", "from", "to", "call-id")
        ]
        fields += [("CSeq", f"{invite.cseq.number} CANCEL"), ("Max-Forwards", "70")]
        self.send(Request("CANCEL", invite.uri, fields), edge)

    def in_dialog(
        self,
        invite: Request,
        answer: Response,
        method: str,
        edge: tuple[str, int],
        body: bytes = b"",
        content_type: str = "application/sdp",
        headers: list[tuple[str, str]] | None = None,
    ) -> Request:
        """ACK, BYE, re-INVITE... in the dialog the answer set up (as the caller)."""
        cseq = self.invite_cseq if method == "ACK" else self._next_cseq()
        if method == "INVITE":
            self.invite_cseq = cseq
        fields = [
            ("Via", f"SIP/2.0/{self.VIA} {self.address};branch={branch()}"),
            ("Max-Forwards", "70"),
            ("From", invite.headers.get("from") or ""),
            ("To", answer.headers.get("to") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:alice@{self.address}{self.PARAMS}>"),
            *(headers or []),
        ]
        if body:
            fields.append(("Content-Type", content_type))
        request = Request(method, str(answer.contacts[0].uri), fields, body)
        self.send(request, edge)
        return request

    def _next_cseq(self) -> int:
        self.cseq += 1
        return self.cseq

    # ---- as the callee ------------------------------------------------------------------------

    def answer(
        self,
        request: Request,
        status: int,
        addr: tuple[str, int],
        tag: str = "gw",
        body: bytes = b"",
    ) -> Response:
        headers = [("Contact", f"<sip:gw@{self.address}{self.PARAMS}>")]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        response = make_response(request, status, to_tag=tag, headers=headers, body=body)
        self.send(response, addr)
        return response

    def callee_request(
        self, invite: Request, method: str, to: tuple[str, int], tag: str = "gw", body: bytes = b""
    ) -> Request:
        """BYE, re-INVITE... from the callee in the dialog of the INVITE it answered."""
        fields = [
            ("Via", f"SIP/2.0/{self.VIA} {self.address};branch={branch()}"),
            ("Max-Forwards", "70"),
            ("From", f"{invite.headers.get('to')};tag={tag}"),
            ("To", invite.headers.get("from") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{100 + self._next_cseq()} {method}"),
            ("Contact", f"<sip:gw@{self.address}{self.PARAMS}>"),
        ]
        if body:
            fields.append(("Content-Type", "application/sdp"))
        request = Request(method, str(invite.contacts[0].uri), fields, body)
        self.send(request, to)
        return request


class TlsPhone(Phone):
    """A trunk's end over TLS (an SBC, a carrier): tandem's own transports with a TLS
    listener and a certificate; what it receives is queued with the sender's certificate
    names (`names`), and it answers on the connection a request came on."""

    VIA = "TLS"
    PARAMS = ";transport=tls"

    def __init__(self, host: str, port: int, tls: TlsContexts, *, serve: bool = True) -> None:
        super().__init__(host)
        self.port = port
        self.names: dict[tuple[str, int], tuple[str, ...]] = {}  # by sender
        self.failures: asyncio.Queue[Peer] = asyncio.Queue()
        plain = free_udp_and_tcp_port(host)  # its UDP and TCP listeners, unused
        self.tls = Transports(
            host,
            plain,
            self._received,
            self.failures.put_nowait,
            tls=tls,
            tls_listen=(host, port) if serve else None,  # a client without a certificate
        )

    @classmethod
    async def listen(cls, host: str, port: int, tls: TlsContexts, serve: bool = True) -> TlsPhone:
        phone = cls(host, port, tls, serve=serve)
        await phone.tls.start()
        return phone

    def _received(self, data: bytes, peer: Peer) -> None:
        self.names[peer.addr] = self.tls.certificate_names(peer)
        self.datagram_received(data, peer.addr)

    def send(
        self, message: Message | bytes, to: tuple[str, int], server_name: str | None = None
    ) -> None:
        data = message if isinstance(message, bytes) else bytes(message)
        self.tls.send(data, Peer("tls", *to), server_name=server_name)

    async def stop(self) -> None:
        await self.tls.stop()
