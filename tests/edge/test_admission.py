"""What reaches the edge before any call: admission by source, OPTIONS, and bad input."""

from __future__ import annotations

import asyncio
import os

from prometheus_client import REGISTRY

from tandem.sip import Request, Response, StreamFramer, parse
from tests.edge.conftest import LOCAL, MakeSystem
from tests.edge.phones import Phone, branch


def options(phone: Phone, edge: tuple[str, int], extra: str = "") -> bytes:
    return (
        f"OPTIONS sip:{edge[0]}:{edge[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {phone.address};branch={branch()}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{phone.host}>;tag={os.urandom(4).hex()}\r\n"
        f"To: <sip:{edge[0]}>\r\n"
        f"Call-ID: {os.urandom(8).hex()}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def is_response(message: Request | Response) -> bool:
    return isinstance(message, Response)


def rejects() -> float:
    labels = {"edge": "edge-a", "reason": "unknown_source"}
    return REGISTRY.get_sample_value("tandem_edge_admission_rejects_total", labels) or 0.0


async def test_options_from_a_trunk_are_answered(make_system: MakeSystem) -> None:
    system = await make_system()
    system.pbx.send(options(system.pbx, system.a), system.a)
    answer = await system.pbx.final("OPTIONS")
    assert answer.status == 200
    assert "INVITE" in (answer.headers.get("allow") or "")
    assert answer.headers.get("accept") == "application/sdp"
    assert "supported" in answer.headers
    assert (answer.headers.get("server") or "").startswith("tandem/")
    assert answer.to.tag  # RFC 3261 8.2.6.2


async def test_an_unknown_source_gets_403_and_a_flood_is_not_answered(
    make_system: MakeSystem,
) -> None:
    system = await make_system()
    stranger = system.stranger
    before = rejects()
    for _ in range(60):
        stranger.send(options(stranger, system.a), system.a)
    first = await stranger.final("OPTIONS")
    assert first.status == 403
    await asyncio.sleep(0.3)
    answered = 1 + stranger.inbox.qsize()
    assert answered <= 12  # the burst, then silence: a flood is not answered forever
    system.pbx.send(options(system.pbx, system.a), system.a)  # trunks are still served
    assert (await system.pbx.final("OPTIONS")).status == 200
    assert rejects() - before == 60  # every one counted


async def test_an_unknown_source_cannot_place_a_call(make_system: MakeSystem) -> None:
    system = await make_system()
    system.stranger.invite(system.a, LOCAL)
    assert (await system.stranger.final()).status == 403
    assert await system.gw1.silent(lambda m: isinstance(m, Request), 0.3)


async def test_malformed_requests_get_their_status_and_responses_are_dropped(
    make_system: MakeSystem,
) -> None:
    system = await make_system()
    pbx = system.pbx
    bad_cseq = options(pbx, system.a).replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    pbx.send(bad_cseq, system.a)
    assert (await pbx.final("INVITE")).status == 400  # CSeq method mismatch
    pbx.send(b"SIP/2.0 999 Broken\r\nVia: nonsense\r\n\r\n", system.a)
    pbx.send(b"\x00\xff garbage that is no SIP at all", system.a)
    pbx.send(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKstray\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n",
        system.a,
    )
    assert await pbx.silent(is_response, 0.3)  # nothing answers a response or garbage
    pbx.send(options(pbx, system.a).replace(b" SIP/2.0\r\n", b" SIP/7.0\r\n", 1), system.a)
    assert (await pbx.final("OPTIONS")).status == 505
    bad_uri = options(pbx, system.a).replace(b"OPTIONS sip:", b"OPTIONS <sip:", 1)
    pbx.send(bad_uri, system.a)  # no request line to go on: answered from the raw lines
    assert (await pbx.final("OPTIONS")).status == 400
    pbx.send(options(pbx, system.a, "Require: 100rel, gruu\r\n"), system.a)
    answer = await pbx.final("OPTIONS")
    assert answer.status == 420 and answer.headers.get("unsupported") == "gruu"
    pbx.send(options(pbx, system.a).replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), system.a)
    assert (await pbx.final("OPTIONS")).status == 483
    # and the edge still places calls
    pbx.invite(system.a, LOCAL)
    out, addr = await system.gw1.request("INVITE")
    system.gw1.answer(out, 486, addr)
    assert (await pbx.final()).status == 486


async def test_an_invite_requiring_100rel_gets_reliable_provisionals(
    make_system: MakeSystem,
) -> None:
    """RFC 3262: the 180 carries Require: 100rel and RSeq, and is resent until PRACKed."""
    system = await make_system()
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL, headers=[("Require", "100rel")])
    out, addr = await gw1.request("INVITE")
    gw1.answer(out, 180, addr)
    ringing = await pbx.response(180)
    assert ringing.headers.get("require") == "100rel"
    rseq = ringing.headers.get("rseq")
    again = await pbx.response(180)  # T1 later: no PRACK yet
    assert again.headers.get("rseq") == rseq
    pbx.in_dialog(invite, ringing, "PRACK", system.a, headers=[("RAck", f"{rseq} 1 INVITE")])
    assert (await pbx.final("PRACK")).status == 200
    gw1.answer(out, 200, addr)
    assert (await pbx.response(200)).status == 200


async def test_options_over_tcp(make_system: MakeSystem) -> None:
    system = await make_system()
    reader, writer = await asyncio.open_connection(*system.a, local_addr=("127.0.0.2", 0))
    host, port = writer.get_extra_info("sockname")[:2]
    request = options(system.pbx, system.a).replace(
        f"SIP/2.0/UDP {system.pbx.address}".encode(), f"SIP/2.0/TCP {host}:{port}".encode()
    )
    writer.write(b"\r\n\r\n" + request)  # a keep-alive first
    framer = StreamFramer()
    frames: list[bytes] = []
    async with asyncio.timeout(3):
        while not frames:
            frames = framer.feed(await reader.read(4096))
    answer = parse(frames[0])
    assert isinstance(answer, Response) and answer.status == 200
    writer.close()
