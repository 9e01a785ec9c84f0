"""The edge as its own process and on the bus: live policy, heartbeat, `tandem edge` and SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from nats.aio.msg import Msg

from tandem import bus
from tandem.edge import service as edge_service
from tandem.pb import tandem_pb2 as pb
from tandem.policy.store import write_policy
from tests.conftest import NatsServer, free_port
from tests.edge.conftest import LOCAL, MakeSystem
from tests.edge.phones import SDP, Phone
from tests.edge.test_admission import options


async def test_a_policy_change_applies_without_restart(make_system: MakeSystem) -> None:
    system = await make_system()
    disabled = system.config.policy.model_copy(
        update={
            "trunks": [
                t.model_copy(update={"enabled": False}) if t.id == "pbx" else t
                for t in system.config.trunks
            ]
        }
    )
    await write_policy(system.js, disabled)
    async with asyncio.timeout(5):
        while system.edge_a.trunks["pbx"].enabled:  # noqa: ASYNC110 (the watcher applies it)
            await asyncio.sleep(0.05)
    system.pbx.invite(system.a, LOCAL)
    refused = await system.pbx.final()
    assert refused.status == 503 and refused.headers.get("retry-after")


async def test_the_heartbeat_names_the_calls_the_edge_owns(make_system: MakeSystem) -> None:
    system = await make_system()
    beats: asyncio.Queue[pb.EdgeHeartbeat] = asyncio.Queue()

    async def on_beat(msg: Msg) -> None:
        await beats.put(pb.EdgeHeartbeat.FromString(msg.data))

    await system.nc.subscribe(bus.edge_heartbeat("edge-a"), cb=on_beat)
    system.pbx.invite(system.a, LOCAL)
    out, addr = await system.gw1.request("INVITE")
    system.gw1.answer(out, 200, addr, body=SDP)
    await system.pbx.response(200)
    started = (await system.call_events(last="answered"))[0]
    async with asyncio.timeout(5):
        beat = await beats.get()
        while started.call_id not in beat.calls:
            beat = await beats.get()
    assert beat.edge == "edge-a" and beat.active_calls == 1 and not beat.draining


async def test_tandem_edge_serves_sip_and_exits_on_sigterm(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    pbx = await Phone.open("127.0.0.2")
    sip_port, api_port = free_port(), free_port()
    config = {
        "nats": nats_server.url,
        "edges": [{"id": "edge-x", "sip": f"127.0.0.1:{sip_port}", "api": f"127.0.0.1:{api_port}"}],
        "trunks": [
            {
                "id": "pbx",
                "edge": "edge-x",
                "peer": pbx.address,
                "sources": ["127.0.0.2"],
                "options_interval_s": 0,
            }
        ],
    }
    path = tmp_path / "tandem.yaml"
    path.write_text(yaml.safe_dump(config))
    tandem = Path(sys.executable).with_name("tandem")
    proc = await asyncio.create_subprocess_exec(
        str(tandem), "edge", "--id", "edge-x", "--config", str(path), "--grace", "5"
    )
    try:
        async with httpx.AsyncClient() as api, asyncio.timeout(20):
            while True:
                try:
                    if (await api.get(f"http://127.0.0.1:{api_port}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        edge = ("127.0.0.1", sip_port)
        pbx.send(options(pbx, edge), edge)
        assert (await pbx.final("OPTIONS")).status == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        pbx.close()


@pytest.mark.parametrize("lost", ["egress", "ingress"])
async def test_a_lost_edge_takes_its_half_of_the_call_down(
    make_system: MakeSystem, lost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_service, "HEARTBEAT_S", 0.1)
    system = await make_system()
    await asyncio.sleep(0.3)  # each edge has heard the other
    invite = system.pbx.invite(system.a, LOCAL)
    out, addr = await system.gw1.request("INVITE")
    system.gw1.answer(out, 200, addr, body=SDP)
    await system.pbx.response(200)
    silent = system.edge_b if lost == "egress" else system.edge_a
    silent._loops[0].cancel()  # its heartbeat stops, as a crashed edge's would
    if lost == "egress":  # the caller's side is ended by the edge that owns the call
        bye, _ = await system.pbx.request("BYE", within=3)
        assert bye.call_id == invite.call_id
        assert (await system.call_events())[-1].ended_by == "edge_lost"
    else:  # the callee's side is ended by the edge that runs its leg
        bye, _ = await system.gw1.request("BYE", within=3)
        assert bye.call_id == out.call_id
