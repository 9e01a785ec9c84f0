"""The call-control API over FastAPI: calls, hang-up through an edge, CDRs, CSV, statistics."""

from __future__ import annotations

import csv
import datetime
import io

import httpx
import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from tandem.callstate import api as callstate_api
from tandem.callstate.service import Service
from tandem.http import ApiServer
from tandem.pb import tandem_pb2 as pb
from tests.callstate.conftest import Callstates, cdrs, eventually, settled
from tests.callstate.edge import T0, FakeEdge
from tests.conftest import free_port


def iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat()


async def test_calls_listed_inspected_and_hung_up_through_the_edge(
    api: httpx.AsyncClient, callstate: Service, edge: FakeEdge, js: JetStreamContext
) -> None:
    await edge.answer_hangups()
    await edge.call("c1", end=False)
    await edge.call("c2", ingress="pstn", egress=("pbx",), failures=(), end=False)
    await eventually(lambda: len(callstate.calls) == 2 and callstate.calls["c1"].last_seq == 8)

    listed = (await api.get("/v1/calls")).json()
    assert [c["call_id"] for c in listed["calls"]] == ["c1", "c2"]
    by_gw2 = (await api.get("/v1/calls", params={"trunk": "gw2"})).json()
    assert [c["call_id"] for c in by_gw2["calls"]] == ["c1"]
    one = (await api.get("/v1/calls/c1")).json()
    assert one["state"] == "answered"
    assert [(leg["trunk"], leg["status"]) for leg in one["legs"]] == [("gw1", 503), ("gw2", 200)]
    assert [e["kind"] for e in one["timeline"]] == [
        "started",
        "routed",
        "leg_attempt",
        "leg_failed",
        "leg_attempt",
        "leg_progress",
        "leg_answered",
        "answered",
    ]
    assert (await api.get("/v1/calls/nope")).status_code == 404

    response = await api.delete("/v1/calls/c1")
    assert response.status_code == 202
    assert [h.call_id for h in edge.hangups] == ["c1"]
    await eventually(lambda: "c1" not in callstate.calls)
    await settled(callstate)
    [cdr] = await cdrs(js)
    assert (cdr.call_id, cdr.ended_by) == ("c1", "api")
    assert (await api.delete("/v1/calls/c1")).status_code == 404
    assert (await api.delete("/v1/calls/unknown")).status_code == 404


async def test_hangup_with_no_edge_to_answer_is_504(
    api: httpx.AsyncClient, callstate: Service, edge: FakeEdge
) -> None:
    await edge.call("c1", end=False)
    await eventually(lambda: "c1" in callstate.calls)
    assert (await api.delete("/v1/calls/c1")).status_code == 504
    assert "c1" in callstate.calls


async def known_traffic(edge: FakeEdge, callstate: Service) -> None:
    """Five calls from pbx, one still ringing, with figures worked out by hand below."""
    await edge.call("a-answered", egress=("gw1",), failures=(), talk_ms=60_000, t0=T0)
    await edge.call("b-failover", talk_ms=30_000, t0=T0 + 60_000)
    await edge.call("c-busy", failures=(486,), t0=T0 + 120_000)
    await edge.call("d-all-fail", failures=(503, 503), t0=T0 + 180_000)
    await edge.call("e-ringing", egress=("gw1",), failures=(), answer=False, t0=T0 + 240_000)
    await eventually(lambda: callstate.cdrs_written == 4 and "e-ringing" in callstate.calls)


async def test_stats_and_metrics_with_known_figures(
    api: httpx.AsyncClient, callstate: Service, edge: FakeEdge
) -> None:
    await known_traffic(edge, callstate)
    stats = {t["trunk"]: t for t in (await api.get("/v1/stats")).json()["trunks"]}
    assert set(stats) == {"pbx", "gw1", "gw2"}
    pbx, gw1, gw2 = stats["pbx"]["inbound"], stats["gw1"], stats["gw2"]
    # pbx: 5 calls in, 2 answered; NER adds the busy one; ACD (60 + 30) / 2
    assert pbx == {
        "attempts": 5,
        "answered": 2,
        "asr": 0.4,
        "ner": 0.6,
        "acd_s": 45.0,
        "failures": {"486": 1, "503": 1},
        "media": None,  # no call was anchored
    }
    assert (stats["pbx"]["active_in"], stats["pbx"]["peak"]) == (1, 1)
    # gw1: a, b (503), c (486), d (503), e (ringing)
    assert (gw1["attempts"], gw1["answered"], gw1["asr"], gw1["ner"]) == (5, 1, 0.2, 0.4)
    assert (gw1["acd_s"], gw1["failures"], gw1["active_out"]) == (60.0, {"486": 1, "503": 2}, 1)
    # gw2: b answered, d 503
    assert (gw2["attempts"], gw2["answered"], gw2["asr"], gw2["ner"]) == (2, 1, 0.5, 0.5)
    assert (gw2["acd_s"], gw2["failures"], gw2["active"]) == (30.0, {"503": 1}, 0)

    def metric(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert metric("tandem_trunk_attempts_total", trunk="gw1", direction="out") == 5
    assert metric("tandem_trunk_failures_total", trunk="gw1", direction="out", code="503") == 2
    assert metric("tandem_trunk_active_calls", trunk="pbx", direction="in") == 1
    assert metric("tandem_trunk_asr", trunk="gw2") == 0.5
    assert metric("tandem_trunk_acd_seconds", trunk="gw1") == 60.0
    text = (await api.get("/metrics")).text
    assert 'tandem_trunk_ner{trunk="gw1"} 0.4' in text


async def test_cdrs_filtered_paginated_and_as_csv(
    api: httpx.AsyncClient, callstate: Service, edge: FakeEdge
) -> None:
    await known_traffic(edge, callstate)
    every = (await api.get("/v1/cdrs")).json()
    assert [c["call_id"] for c in every["cdrs"]] == [
        "a-answered",
        "b-failover",
        "c-busy",
        "d-all-fail",
    ]
    assert every["next"] is None

    first = (await api.get("/v1/cdrs", params={"limit": 3})).json()
    assert len(first["cdrs"]) == 3
    rest = (await api.get("/v1/cdrs", params={"limit": 3, "after": first["next"]})).json()
    assert [c["call_id"] for c in rest["cdrs"]] == ["d-all-fail"]
    assert rest["next"] is None

    async def ids(**params: object) -> list[str]:
        page = (await api.get("/v1/cdrs", params=params)).json()  # type: ignore[arg-type]
        return [c["call_id"] for c in page["cdrs"]]

    assert await ids(trunk="gw2") == ["b-failover", "d-all-fail"]
    assert await ids(status=503) == ["d-all-fail"]
    assert await ids(status=200, trunk="gw1") == ["a-answered", "b-failover"]  # any leg
    assert await ids(since=iso(T0 + 60_000), until=iso(T0 + 180_000)) == ["b-failover", "c-busy"]

    response = await api.get("/v1/cdrs.csv", params={"trunk": "gw2"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["call_id"], r["final_status"], r["attempts"]) for r in rows] == [
        ("b-failover", "200", "gw1:503 gw2:200"),
        ("d-all-fail", "503", "gw1:503 gw2:503"),
    ]
    b = rows[0]
    assert (b["duration_s"], b["egress_trunk"], b["failover_count"]) == ("30.000", "gw2", "1")
    assert b["invite_time"] == "2023-11-14T22:14:20.000+00:00"
    assert (b["calling_received"], b["called_sent"]) == ("201", "+15551234")


async def test_cdr_pages_cut_short_by_the_scan_limit_say_where_to_go_on(
    api: httpx.AsyncClient, callstate: Service, edge: FakeEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    await known_traffic(edge, callstate)
    monkeypatch.setattr(callstate_api, "SCAN_MAX", 2)  # as 200,000 among millions of CDRs
    found, after, pages = [], 0, 0
    while after is not None:
        page = (await api.get("/v1/cdrs", params={"status": 503, "after": after})).json()
        found += [c["call_id"] for c in page["cdrs"]]
        after, pages = page["next"], pages + 1
        assert pages < 10
    assert found == ["d-all-fail"]  # the only match, found past the first page's scan
    first = (await api.get("/v1/cdrs", params={"status": 503})).json()
    assert first == {"cdrs": [], "next": 2}  # nothing yet, but more to read: not the end


async def test_the_csv_export_streams(
    callstate: Service, edge: FakeEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    await known_traffic(edge, callstate)
    monkeypatch.setattr(callstate_api, "CSV_CHUNK", 1)  # a chunk per row
    server = ApiServer(callstate.app, f"127.0.0.1:{free_port()}")  # real HTTP: real chunks
    await server.start()
    chunks = []
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http,
            http.stream("GET", "/v1/cdrs.csv") as response,
        ):
            assert response.headers["transfer-encoding"] == "chunked"  # not built whole first
            async for chunk in response.aiter_raw():
                chunks.append(chunk.decode())
    finally:
        await server.stop()
    rows = list(csv.DictReader(io.StringIO("".join(chunks))))
    assert [r["call_id"] for r in rows] == ["a-answered", "b-failover", "c-busy", "d-all-fail"]


async def test_every_v1_route_needs_the_token(callstates: Callstates) -> None:
    service = await callstates.start(token="s3cret")
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callstate") as client:
        for method, path in [
            ("GET", "/v1/calls"),
            ("GET", "/v1/calls/x"),
            ("DELETE", "/v1/calls/x"),
            ("GET", "/v1/cdrs"),
            ("GET", "/v1/cdrs.csv"),
            ("GET", "/v1/stats"),
        ]:
            assert (await client.request(method, path)).status_code == 401, path
        ok = await client.get("/v1/stats", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        paths = (await client.get("/openapi.json")).json()["paths"]  # what /docs shows
        assert {"/v1/calls", "/v1/calls/{call_id}", "/v1/cdrs", "/v1/cdrs.csv", "/v1/stats"} <= set(
            paths
        )


async def test_openapi_lists_every_operation(api: httpx.AsyncClient) -> None:
    # the whole set: an endpoint dropped (or added) by accident fails here
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert {(method.upper(), path) for path, ops in paths.items() for method in ops} == {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/v1/calls"),
        ("GET", "/v1/calls/{call_id}"),
        ("DELETE", "/v1/calls/{call_id}"),
        ("GET", "/v1/cdrs"),
        ("GET", "/v1/cdrs.csv"),
        ("GET", "/v1/stats"),
        ("GET", "/v1/calls/{call_id}/sip"),  # the console's: captured SIP, trunks
        ("GET", "/v1/trunks"),
    }


def rtp(packets: int, lost: int, mos: float, jitter_ms: float) -> pb.MediaQuality:
    return pb.MediaQuality(
        rtpengine="127.0.0.1:2223",
        protocol="RTP/AVP",
        packets_from=packets,
        bytes_from=packets * 172,
        packets_to=packets,
        packets_lost=lost,
        loss_percent=100 * lost / (packets + lost),
        jitter_ms=jitter_ms,
        mos=mos,
    )


async def test_an_anchored_calls_rtp_in_its_cdr_stats_and_metrics(
    api: httpx.AsyncClient, callstate: Service, edge: FakeEdge
) -> None:
    """Two anchored calls pbx -> gw2 (after gw1's 503) and a bypassed one: each leg's RTP in
    the CDR, the JSON and the CSV, and summed per trunk in /v1/stats and Prometheus."""
    await edge.call("m1", quality=(rtp(1000, 0, 4.4, 1.0), rtp(990, 10, 4.0, 3.0)))
    await edge.call("m2", quality=(rtp(500, 0, 4.2, 2.0), rtp(500, 0, 4.4, 1.0)), t0=T0 + 1)
    await edge.call("m3", t0=T0 + 2)
    await eventually(lambda: callstate.cdrs_written == 3)
    by_id = {c["call_id"]: c for c in (await api.get("/v1/cdrs")).json()["cdrs"]}
    m1 = by_id["m1"]
    assert m1["media"] == "anchored" and m1["media_note"] is None
    assert (m1["ingress_media"]["packets_from"], m1["ingress_media"]["mos"]) == (1000, 4.4)
    failed, answered = m1["attempts"]
    assert failed["media"] is None  # gw1's 503: no RTP
    assert (answered["media"]["packets_lost"], answered["media"]["loss_percent"]) == (10, 1.0)
    assert by_id["m3"]["media"] == "bypassed" and by_id["m3"]["ingress_media"] is None

    stats = {t["trunk"]: t for t in (await api.get("/v1/stats")).json()["trunks"]}
    assert stats["pbx"]["inbound"]["media"] == {
        "anchored_legs": 2,
        "packets": 1500,
        "packets_lost": 0,
        "loss_percent": 0.0,
        "mos": 4.3,
        "jitter_ms": 1.5,
    }
    gw2 = stats["gw2"]["outbound"]["media"]
    assert (gw2["packets"], gw2["packets_lost"], gw2["loss_percent"]) == (1490, 10, 0.667)
    assert (gw2["mos"], gw2["jitter_ms"]) == (4.2, 2.0)
    assert stats["gw1"]["outbound"]["media"] is None

    def metric(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert metric("tandem_trunk_media_packets_total", trunk="gw2", direction="out") == 1490
    assert metric("tandem_trunk_media_packets_lost_total", trunk="gw2", direction="out") == 10
    assert metric("tandem_trunk_media_mos", trunk="pbx", direction="in") == 4.3
    assert metric("tandem_trunk_media_jitter_seconds", trunk="gw2", direction="out") == 0.002

    rows = {
        r["call_id"]: r for r in csv.DictReader(io.StringIO((await api.get("/v1/cdrs.csv")).text))
    }
    assert (rows["m1"]["media"], rows["m1"]["caller_packets"], rows["m1"]["callee_lost"]) == (
        "anchored",
        "1000",
        "10",
    )
    assert (rows["m3"]["media"], rows["m3"]["caller_mos"]) == ("bypassed", "")
