"""The console over HTTP (the browser tests in tests/console drive it in Chromium): who may see
and do what with which token, CDR search and CSV, trunks with their health, the policy."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.js import JetStreamContext

from tandem import bus
from tandem.callstate.service import Service
from tandem.config import parse_config
from tandem.pb import tandem_pb2 as pb
from tandem.policy.store import import_policy
from tests.callstate.conftest import Callstates, eventually, settled
from tests.callstate.edge import FakeEdge

WRITE, READ = "write-token-5f2a9c", "read-token-81d7e3"


@pytest.fixture
async def guarded(
    callstates: Callstates, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    monkeypatch.setenv("TANDEM_API_READ_TOKEN", READ)
    service = await callstates.start(token=WRITE)
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callstate") as client:
        yield service, client


async def login(client: httpx.AsyncClient, token: str) -> httpx.Response:
    client.cookies.clear()
    return await client.post(
        "/console/login",
        content=f"token={token}&next=/console/calls",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )


async def test_read_token_sees_write_token_hangs_up_and_neither_shows(
    guarded: tuple[Service, httpx.AsyncClient], edge: FakeEdge
) -> None:
    service, client = guarded
    await edge.answer_hangups()
    await edge.call("c1", end=False)
    await eventually(lambda: "c1" in service.calls and service.calls["c1"].last_seq == 8)

    away = await client.get("/console/calls")
    assert away.status_code == 303
    assert away.headers["location"] == "/console/login?next=/console/calls"
    wrong = await login(client, "guess")
    assert wrong.status_code == 401 and "wrong token" in wrong.text

    bodies = []
    reading = await login(client, READ)
    assert reading.status_code == 303 and reading.headers["location"] == "/console/calls"
    cookie = reading.cookies["tandem_console"]
    assert READ not in cookie and WRITE not in cookie
    assert "httponly" in reading.headers["set-cookie"].lower()
    page = await client.get("/console/calls")
    bodies.append(page.text)
    assert page.status_code == 200 and 'href="/console/calls/c1"' in page.text
    assert "Hang up</button>" not in page.text  # read-only: no hang-up offered
    assert (await client.post("/console/calls/c1/hangup")).status_code == 403
    assert edge.hangups == []

    await login(client, WRITE)
    page = await client.get("/console/calls/c1")
    bodies.append(page.text)
    assert 'id="hangup"' in page.text
    elsewhere = {"origin": "http://attacker.example"}
    assert (await client.post("/console/calls/c1/hangup", headers=elsewhere)).status_code == 403
    assert edge.hangups == []
    done = await client.post("/console/calls/c1/hangup", headers={"origin": "http://callstate"})
    assert done.status_code == 303 and [h.call_id for h in edge.hangups] == ["c1"]
    for body in bodies:
        assert READ not in body and WRITE not in body

    # the API takes the read token for reads only
    client.cookies.clear()
    as_reader = {"authorization": f"Bearer {READ}"}
    assert (await client.get("/v1/calls", headers=as_reader)).status_code == 200
    assert (await client.delete("/v1/calls/c1", headers=as_reader)).status_code == 401
    assert (await client.get("/console/trunks", headers=as_reader)).status_code == 200


async def test_cdr_search_by_number_trunk_and_status_with_csv(
    api: httpx.AsyncClient, callstate: Service, edge: FakeEdge
) -> None:
    await edge.call("answered", talk_ms=1000)
    await edge.call("busy", egress=("gw1",), failures=(486,), answer=False)
    await eventually(lambda: callstate.cdrs_written == 2)
    await settled(callstate)

    page = await api.get("/console/cdrs", params={"status": "486"})
    assert page.status_code == 200
    assert "/console/calls/busy" in page.text and "/console/calls/answered" not in page.text
    page = await api.get("/console/cdrs", params={"number": "2071234", "trunk": "gw2"})
    assert "/console/calls/answered" in page.text and "/console/calls/busy" not in page.text
    none = await api.get("/console/cdrs", params={"number": "999999"})
    assert "No call record matches" in none.text

    reply = await api.get("/console/cdrs.csv", params={"trunk": "gw2"})
    assert reply.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert [r["call_id"] for r in rows] == ["answered"]
    assert rows[0]["attempts"] == "gw1:503 gw2:200"

    ended = await api.get("/console/calls/busy")  # a finished call's page: its CDR
    assert ended.status_code == 200 and "Busy Here" in ended.text
    assert (await api.get("/console/calls/never")).status_code == 404


async def test_trunks_show_health_load_and_figures_and_the_policy_its_routes(
    api: httpx.AsyncClient, callstate: Service, edge: FakeEdge, js: JetStreamContext
) -> None:
    config = parse_config(
        {
            "trunks": [
                {"id": "pbx", "peer": "127.0.0.2:5060", "sources": ["127.0.0.2"]}
                | {"edge": "edge-a", "pstn_usages": ["Local"], "max_concurrent_calls": 10},
                {"id": "gw1", "edge": "edge-b", "peer": "127.0.0.3:5060", "sources": ["127.0.0.3"]},
                {"id": "gw2", "edge": "edge-b", "peer": "127.0.0.4:5060", "sources": ["127.0.0.4"]},
            ],
            "routes": [
                {"id": "local", "number_pattern": r"^\+1425\d{7}$", "pstn_usages": ["Local"]}
                | {"trunks": ["gw1", "gw2"]}
            ],
        }
    )
    await import_policy(js, config.policy)
    health = await js.key_value(bus.TRUNK_HEALTH_BUCKET)
    probe = pb.TrunkHealth(
        trunk="gw1", edge="edge-b", up=False, reason="3 probes unanswered", failed_probes=3
    )
    probe.last_probe_unix_ms = int(time.time() * 1000)
    await health.put("gw1", probe.SerializeToString())
    await edge.call("live", end=False)
    await eventually(lambda: "live" in callstate.calls and callstate.calls["live"].last_seq == 8)

    trunks = {t["trunk"]: t for t in (await api.get("/v1/trunks")).json()["trunks"]}
    assert trunks["gw1"]["health"]["up"] is False
    assert trunks["gw1"]["health"]["reason"] == "3 probes unanswered"
    assert trunks["gw1"]["failures"] == {"503": 1} and trunks["gw1"]["asr"] == 0.0
    assert (trunks["pbx"]["active"], trunks["pbx"]["max_concurrent_calls"]) == (1, 10)
    assert trunks["gw2"]["health"] is None and trunks["gw2"]["asr"] == 1.0
    page = (await api.get("/console/trunks")).text
    assert "3 probes unanswered" in page and "1 / 10" in page

    policy = (await api.get("/console/policy")).text
    assert 'id="trunk-pbx"' in policy and "^\\+1425\\d{7}$" in policy
    assert "gw1, gw2" in policy  # the route pbx's calls take, and its trunks


async def test_an_anchored_calls_page_shows_each_legs_rtp(
    api: httpx.AsyncClient, callstate: Service, edge: FakeEdge
) -> None:
    caller = pb.MediaQuality(rtpengine="10.9.0.1:2223", protocol="RTP/AVP", packets_from=1500)
    caller.packets_to, caller.mos, caller.jitter_ms = 1480, 4.4, 1.2
    callee = pb.MediaQuality(rtpengine="10.9.0.1:2223", protocol="RTP/SAVP", packets_from=1480)
    callee.crypto, callee.packets_lost, callee.loss_percent, callee.mos = (
        "AES_CM_128_HMAC_SHA1_80",
        20,
        1.33,
        3.4,
    )
    await edge.call("q1", quality=(caller, callee))
    await eventually(lambda: callstate.cdrs_written == 1)
    page = (await api.get("/console/calls/q1", params={"since_ms": 1_699_999_999_000})).text
    assert "Media quality" in page and 'id="media"' in page
    rows = page.split('id="media"')[1].split("</table>")[0]
    assert "pbx (caller)" in rows and "gw2 (attempt 2)" in rows
    assert "AES_CM_128_HMAC_SHA1_80" in rows and "20 (1.33 %)" in rows and "4.4" in rows
    assert 'class="failed"' in rows  # MOS 3.4: a bad leg stands out
    assert 'id="media-mode">anchored' in page
