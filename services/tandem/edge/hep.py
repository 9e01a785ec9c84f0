"""HEP v3 (the Homer Encapsulation Protocol): one captured SIP message as one datagram.

A packet is "HEP3", its total length, then chunks of (vendor 0, type, length, value), all
in network byte order; the types are those of the HEP3 specification that heplify-server,
Homer and sngrep read.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

IP_FAMILY, IP_PROTO = 0x0001, 0x0002
IPV4_SRC, IPV4_DST, IPV6_SRC, IPV6_DST = 0x0003, 0x0004, 0x0005, 0x0006
SRC_PORT, DST_PORT = 0x0007, 0x0008
TIME_S, TIME_US = 0x0009, 0x000A
PROTO_TYPE, CAPTURE_ID, AUTH_KEY, PAYLOAD, CORRELATION_ID = 0x000B, 0x000C, 0x000E, 0x000F, 0x0011
AF_INET, AF_INET6 = 2, 10
IPPROTO = {"udp": 17, "tcp": 6}
SIP = 1  # protocol type of the payload


@dataclass(frozen=True, slots=True)
class Packet:
    """What HEP says of one message: where it went, when, and the message itself."""

    transport: str  # udp or tcp
    src: tuple[str, int]
    dst: tuple[str, int]
    time_unix_us: int
    payload: bytes
    correlation_id: str = ""  # Homer groups by it: the SIP Call-ID
    capture_id: int = 0  # which capture agent (edge) sent it
    password: str | None = None


def _chunk(kind: int, value: bytes) -> bytes:
    return struct.pack("!HHH", 0, kind, 6 + len(value)) + value


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a name (an advertised FQDN): HEP carries addresses only
        return ipaddress.IPv4Address(0)


def encode(packet: Packet) -> bytes:
    src, dst = _address(packet.src[0]), _address(packet.dst[0])
    if src.version != dst.version:  # one family per packet: map the IPv4 side into IPv6
        src, dst = (
            ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst)
        )
    v6 = src.version == 6
    seconds, micros = divmod(packet.time_unix_us, 1_000_000)
    chunks = [
        _chunk(IP_FAMILY, bytes([AF_INET6 if v6 else AF_INET])),
        _chunk(IP_PROTO, bytes([IPPROTO.get(packet.transport, 17)])),
        _chunk(IPV6_SRC if v6 else IPV4_SRC, src.packed),
        _chunk(IPV6_DST if v6 else IPV4_DST, dst.packed),
        _chunk(SRC_PORT, struct.pack("!H", packet.src[1])),
        _chunk(DST_PORT, struct.pack("!H", packet.dst[1])),
        _chunk(TIME_S, struct.pack("!I", seconds)),
        _chunk(TIME_US, struct.pack("!I", micros)),
        _chunk(PROTO_TYPE, bytes([SIP])),
        _chunk(CAPTURE_ID, struct.pack("!I", packet.capture_id)),
    ]
    if packet.password:
        chunks.append(_chunk(AUTH_KEY, packet.password.encode()))
    if packet.correlation_id:
        chunks.append(_chunk(CORRELATION_ID, packet.correlation_id.encode()))
    chunks.append(_chunk(PAYLOAD, packet.payload))
    body = b"".join(chunks)
    return b"HEP3" + struct.pack("!H", 6 + len(body)) + body
