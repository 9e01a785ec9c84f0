"""SIP capture: a call's messages in TANDEM_SIP by call, cleaned of secrets and numbers; HEP
copies that a real sngrep receives; the stream's size limit; a slow bus costs capture, not calls.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from tandem import bus
from tandem.callstate.sip import call_messages, read
from tandem.edge import capture
from tandem.edge.capture import clean
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request
from tests.conftest import free_port
from tests.edge.conftest import LOCAL, MakeSystem, System
from tests.edge.phones import SDP, branch
from tests.system.sipp import udp_bound

SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
AUTHORIZATION = ("Authorization", f'Digest username="pbx", realm="tandem", response="{SECRET}"')
IN, OUT = pb.SipMessage.IN, pb.SipMessage.OUT


async def full_call(system: System, headers: tuple[tuple[str, str], ...] = ()) -> str:
    """pbx -> edge-a -> edge-b -> gw1: ringing, answer, ACK, BYE from the caller; the call id."""
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL, headers=headers)
    out, addr = await gw1.request("INVITE")
    gw1.answer(out, 180, addr)
    await pbx.response(180)
    gw1.answer(out, 200, addr, body=SDP)
    answer = await pbx.response(200)
    call_id: str = system.edge_a.registry.dialogs[(invite.call_id, answer.to.tag or "")].machine.id
    await system.ack_and_hang_up(invite, answer)
    return call_id


async def captured(js: JetStreamContext, call_id: str, count: int) -> list[pb.SipMessage]:
    """The call's messages once `count` of them are in (capture flushes every 0.2 s)."""
    deadline = time.monotonic() + 5
    while True:
        messages = sorted(await call_messages(js, call_id), key=lambda m: m.time_unix_us)
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        await asyncio.sleep(0.1)


def flow(messages: list[pb.SipMessage]) -> list[tuple[int, str]]:
    return [(m.direction, str(m.status or m.method)) for m in messages]


def dropped(edge: str, reason: str) -> float:
    labels = {"edge": edge, "reason": reason}
    return REGISTRY.get_sample_value("tandem_edge_capture_dropped_total", labels) or 0.0


async def test_a_calls_messages_are_one_query_without_secrets_or_full_numbers(
    make_system: MakeSystem, js: JetStreamContext
) -> None:
    system = await make_system(settings={"telemetry": {"mask_numbers": True}})
    call_id = await full_call(system, headers=(AUTHORIZATION,))
    messages = await captured(js, call_id, 13)

    caller = [m for m in messages if not m.leg_id]
    leg = [m for m in messages if m.leg_id]
    assert {m.edge for m in caller} == {"edge-a"} and {m.edge for m in leg} == {"edge-b"}
    assert {m.trunk for m in caller} == {"pbx"} and {m.trunk for m in leg} == {"gw1"}
    assert flow(caller) == [
        (IN, "INVITE"),
        (OUT, "100"),
        (OUT, "180"),
        (OUT, "200"),
        (IN, "ACK"),
        (IN, "BYE"),
        (OUT, "200"),
    ]
    assert flow(leg) == [
        (OUT, "INVITE"),
        (IN, "180"),
        (IN, "200"),
        (OUT, "ACK"),
        (OUT, "BYE"),
        (IN, "200"),
    ]
    invite = caller[0]
    assert invite.src == system.pbx.address and invite.transport == "udp"
    assert {m.call_id for m in messages} == {call_id}
    text = b"".join(m.data for m in messages)
    assert SECRET.encode() not in text
    assert b"Authorization: <redacted>" in invite.data
    assert LOCAL.encode() not in text and b"sip:+*******0123@" in invite.data
    assert b"m=audio 40000" in invite.data  # bodies are kept unless capture.bodies is false


async def test_bodies_are_left_out_when_configured(
    make_system: MakeSystem, js: JetStreamContext
) -> None:
    system = await make_system(settings={"capture": {"bodies": False}})
    call_id = await full_call(system)
    messages = await captured(js, call_id, 13)
    invite = next(m for m in messages if m.method == "INVITE" and m.direction == IN)
    assert b"m=audio" not in invite.data
    assert invite.data.endswith(b"\r\n\r\n") and b"Content-Length: 0" in invite.data
    assert LOCAL.encode() in invite.data  # numbers are masked only with mask_numbers


def test_cleaning_keeps_no_credentials_and_masks_numbers_only() -> None:
    raw = (
        b"INVITE sip:+14255550123@10.0.0.1 SIP/2.0\r\n"
        b'From: "4255550100" <sip:4255550100@10.0.0.2>;tag=1\r\n'
        b'Authorization: Digest username="pbx",\r\n response="0123456789abcdef"\r\n'
        b'proxy-authorization: Digest response="feedface"\r\n'
        b"l: 40\r\n\r\n"
        b"o=- 53655765 2353687637 IN IP4 10.0.0.2\r\n"
    )
    kept = clean(raw, mask=True, bodies=True)
    assert b"0123456789abcdef" not in kept and b"feedface" not in kept
    assert kept.count(b": <redacted>") == 2 and b"username" not in kept
    assert b"sip:+*******0123@" in kept and b'"******0100" <sip:******0100@' in kept
    assert b"o=- 53655765 2353687637" in kept  # SDP numbers are no phone numbers
    assert clean(raw, mask=False, bodies=False).endswith(b"l: 0\r\n\r\n")


# ---- HEP to a real sngrep ------------------------------------------------------------------


@pytest.fixture
def sngrep(tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    binary = shutil.which("sngrep")
    if binary is None:  # a missing tool fails, never skips
        raise FileNotFoundError("sngrep not found: install Debian sngrep (make test does)")
    port, pcap = free_port(kind=socket.SOCK_DGRAM), tmp_path / "hep.pcap"
    argv = [binary, "-N", "-q", "-L", f"udp:127.0.0.1:{port}", "-O", str(pcap)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while not udp_bound("127.0.0.1", port):
        assert proc.poll() is None and time.monotonic() < deadline, "sngrep did not listen"
        time.sleep(0.02)
    yield port, pcap, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def pcap_udp(path: Path) -> list[tuple[str, int, str, int, bytes]]:
    """(src, sport, dst, dport, payload) of each IPv4 UDP packet of a pcap file."""
    data = path.read_bytes()
    order = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    (link,) = struct.unpack(order + "I", data[20:24])
    skip = {1: 14, 101: 0, 113: 16}[link]  # ethernet, raw IP, Linux cooked
    packets, at = [], 24
    while at + 16 <= len(data):
        _, _, length, _ = struct.unpack(order + "IIII", data[at : at + 16])
        ip = data[at + 16 + skip : at + 16 + length]
        at += 16 + length
        if ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 15) * 4 :]
        sport, dport = struct.unpack("!HH", udp[:4])
        packets.append(
            (socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport, udp[8:])
        )
    return packets


async def test_hep_copies_reach_sngrep(
    make_system: MakeSystem, sngrep: tuple[int, Path, subprocess.Popen[bytes]]
) -> None:
    port, pcap, proc = sngrep
    system = await make_system(settings={"capture": {"hep": f"udp:127.0.0.1:{port}"}})
    await full_call(system)
    await asyncio.sleep(capture.FLUSH_S * 3)
    proc.send_signal(signal.SIGINT)  # sngrep writes the pcap out as it exits
    proc.wait(10)

    packets = pcap_udp(pcap)
    first_lines = {}
    for src, _, dst, _, payload in packets:
        call = payload.split(b"Call-ID: ")[1].split(b"\r\n")[0].decode()
        first_lines.setdefault(call, []).append((src, dst, payload.split(b"\r\n")[0].decode()))
    assert len(first_lines) == 2, first_lines  # the caller's dialog and the leg's
    ingress, egress = sorted(first_lines.values(), key=lambda lines: lines[0][0] != "127.0.0.2")
    assert ingress[0] == (
        "127.0.0.2",
        "127.0.0.1",
        f"INVITE sip:{LOCAL}@{system.a[0]}:{system.a[1]} SIP/2.0",
    )
    starts = [line.split(" sip:")[0].removeprefix("SIP/2.0 ") for _, _, line in ingress]
    assert starts == ["INVITE", "100 Trying", "180 Ringing", "200 OK", "ACK", "BYE", "200 OK"]
    starts = [line.split(" sip:")[0].removeprefix("SIP/2.0 ") for _, _, line in egress]
    assert starts == ["INVITE", "180 Ringing", "200 OK", "ACK", "BYE", "200 OK"]
    assert egress[0][1] == "127.0.0.3"  # the INVITE to gw1, as edge-b sent it


# ---- limits ---------------------------------------------------------------------------------


def options(phone_host: str, phone_address: str, edge: tuple[str, int], n: int) -> Request:
    return Request(
        "OPTIONS",
        f"sip:{edge[0]}:{edge[1]}",
        [
            ("Via", f"SIP/2.0/UDP {phone_address};branch={branch()}"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:probe@{phone_host}>;tag=p{n}"),
            ("To", f"<sip:{edge[0]}>"),
            ("Call-ID", f"flood-{n}@{phone_host}"),
            ("CSeq", "1 OPTIONS"),
        ],
    )


async def test_a_flood_past_max_bytes_keeps_the_newest(
    make_system: MakeSystem, js: JetStreamContext
) -> None:
    limit, flood = 256 * 1024, 1500
    system = await make_system(settings={"capture": {"max_bytes": limit}})
    pbx = system.pbx
    for n in range(flood):
        pbx.send(options(pbx.host, pbx.address, system.a, n), system.a)
        if n % 50 == 49:
            await pbx.response(200, "OPTIONS")  # keep the socket buffers from overflowing
            await asyncio.sleep(0.01)
    subject = bus.sip_unmatched("edge-a")
    deadline = time.monotonic() + 10
    while True:
        kept = {int(m.sip_call_id.split("-")[1].split("@")[0]) for m in await read(js, subject)}
        if flood - 1 in kept or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    info = await js.stream_info(bus.SIP_STREAM)
    assert info.state.bytes <= limit
    assert flood - 1 in kept and 0 not in kept  # the newest kept, the oldest dropped
    assert kept == set(range(min(kept), flood))  # dropped from the oldest end only
    assert len(kept) < flood // 2


async def test_a_slow_bus_drops_capture_not_calls(
    make_system: MakeSystem, nc: Client, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture, "MAX_IN_FLIGHT", 2)
    monkeypatch.setattr(capture, "PUBLISH_TIMEOUT_S", 30.0)
    system = await make_system()
    await js.delete_stream(bus.SIP_STREAM)

    async def never_acks(msg: Msg) -> None:  # a JetStream that takes messages and stalls
        pass

    stalled = await nc.subscribe(bus.sip_capture(">"), cb=never_acks)
    before = dropped("edge-a", "bus_slow") + dropped("edge-b", "bus_slow")
    started = time.monotonic()
    ended = [await full_call(system) for _ in range(5)]
    assert len(set(ended)) == 5 and time.monotonic() - started < 10
    deadline = time.monotonic() + 3
    while dropped("edge-a", "bus_slow") + dropped("edge-b", "bus_slow") == before:
        assert time.monotonic() < deadline, "no capture dropped while the bus stalled"
        await asyncio.sleep(0.05)
    await stalled.unsubscribe()
