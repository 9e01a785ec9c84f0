"""The configuration API over real HTTP, on two replicas sharing one real nats-server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import yaml
from nats.js import JetStreamContext

from tandem import bus
from tandem.policy.store import import_policy
from tandem.router import service

from .conftest import Replica, StartReplica
from .policies import redmond, route, trunk

POLICY_YAML = r"""
pstn_usages: [Spare]
trunks:
  - {id: pbx, edge: edge-pbx, peer: 127.0.0.2, sources: [127.0.0.2], pstn_usages: [Local],
     inbound_rules: [{pattern: '^(\d{4})$', translation: '+1425555$1'}]}
  - {id: gw, edge: edge-pstn, peer: 127.0.0.3, sources: [127.0.0.3]}
routes:
  - {id: local, number_pattern: '^\+1425\d{7}$', pstn_usages: [Local], trunks: [gw]}
"""


async def eventually(check, timeout_s: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_import_export_and_every_replica_sees_it(
    start_replica: StartReplica, http: httpx.AsyncClient
) -> None:
    one, two = await start_replica("r1"), await start_replica("r2")
    put = await http.put(
        f"{one.url}/v1/policy", content=POLICY_YAML, headers={"content-type": "application/yaml"}
    )
    assert put.status_code == 200, put.text
    assert put.json() == {"trunks": 2, "routes": 1}

    exported = yaml.safe_load((await http.get(f"{one.url}/v1/policy?format=yaml")).text)
    assert exported["routes"] == [
        {
            "id": "local",
            "number_pattern": r"^\+1425\d{7}$",
            "pstn_usages": ["Local"],
            "trunks": ["gw"],
        }
    ]
    assert exported["pstn_usages"] == ["Spare"]

    async def second_has_it() -> bool:
        return (await http.get(f"{two.url}/v1/routes")).json() != []

    await eventually(second_has_it, 1.0)
    as_json = (await http.get(f"{two.url}/v1/policy")).json()
    assert as_json == exported
    # the export imports back unchanged, as JSON
    again = await http.put(f"{two.url}/v1/policy", json=as_json)
    assert again.status_code == 200


async def test_a_write_answers_once_every_replica_has_it_in_force(
    start_replica: StartReplica, http: httpx.AsyncClient
) -> None:
    one, two, three = [await start_replica(f"r{n}") for n in range(3)]

    async def all_known() -> bool:  # each replica has heard the others say what it has
        return all(len(r.service.peers) == 3 for r in (one, two, three))

    await eventually(all_known, 5.0)
    applying = two.service.follower.on_commit

    async def slowly(revision: int) -> None:  # a replica busy elsewhere: it applies late
        await asyncio.sleep(1.0)
        await applying(revision)

    two.service.follower.on_commit = slowly
    put = await http.put(
        f"{one.url}/v1/policy", content=POLICY_YAML, headers={"content-type": "application/yaml"}
    )
    assert put.status_code == 200, put.text
    # no waiting here: the answer came after every replica had it
    for replica in (two, three):
        decision = replica.service.route_test("pbx", "0100", "")
        assert decision.route == "local", replica.service.name


async def test_a_write_a_replica_is_slow_to_apply_answers_504_and_is_stored(
    js: JetStreamContext,
    start_replica: StartReplica,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "IN_FORCE_TIMEOUT_S", 1.0)
    replica = await start_replica()
    routers = await js.key_value(bus.ROUTERS_BUCKET)

    async def stuck() -> None:  # a live replica that never applies anything
        while True:
            said = {"in_force": 1, "time": time.time()}
            await routers.put("stuck", json.dumps(said).encode())
            await asyncio.sleep(0.2)

    beating = asyncio.create_task(stuck())
    try:
        await eventually(lambda: asyncio.sleep(0, "stuck" in replica.service.peers), 3.0)
        put = await http.put(
            f"{replica.url}/v1/policy",
            content=POLICY_YAML,
            headers={"content-type": "application/yaml"},
        )
    finally:
        beating.cancel()
    assert put.status_code == 504, put.text
    detail = put.json()["detail"]
    assert detail["not_in_force_on"] == ["stuck (at revision 1)"]
    assert "not yet in force after 1s on stuck" in detail["message"]
    # stored, and in force here: a 504 is no failure
    assert detail["stored_revision"] == replica.service.in_force
    assert (await http.get(f"{replica.url}/v1/routes/local")).status_code == 200


async def test_a_bad_import_changes_nothing(
    start_replica: StartReplica, http: httpx.AsyncClient
) -> None:
    replica = await start_replica()
    await http.put(
        f"{replica.url}/v1/policy",
        content=POLICY_YAML,
        headers={"content-type": "application/yaml"},
    )
    broken = POLICY_YAML.replace("trunks: [gw]", "trunks: [gw, nowhere]")
    answer = await http.put(
        f"{replica.url}/v1/policy", content=broken, headers={"content-type": "application/yaml"}
    )
    assert answer.status_code == 422
    assert "nowhere" in str(answer.json()["detail"])
    assert (await http.get(f"{replica.url}/v1/routes/local")).json()["trunks"] == ["gw"]
    config_file = await http.put(
        f"{replica.url}/v1/policy",
        content="nats: nats://127.0.0.1:4222\nedges: []\n"
        + POLICY_YAML.replace("[gw]", "[gw, pbx]"),
        headers={"content-type": "application/yaml"},
    )
    assert config_file.status_code == 200, config_file.text
    assert (await http.get(f"{replica.url}/v1/routes/local")).json()["trunks"] == ["gw", "pbx"]
    unreadable = await http.put(
        f"{replica.url}/v1/policy",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert unreadable.status_code == 400


async def test_trunk_and_route_crud_with_referential_integrity(
    js: JetStreamContext, start_replica: StartReplica, http: httpx.AsyncClient
) -> None:
    await import_policy(js, redmond())
    url = (await start_replica()).url

    created = await http.post(f"{url}/v1/trunks", json=trunk("gw-new", ["Local"]))
    assert created.status_code == 201, created.text
    assert (await http.post(f"{url}/v1/trunks", json=trunk("gw-new"))).status_code == 409
    assert (await http.get(f"{url}/v1/trunks/gw-new")).json()["pstn_usages"] == ["Local"]
    assert (await http.get(f"{url}/v1/trunks/nope")).status_code == 404

    unknown_trunk = await http.post(
        f"{url}/v1/routes", json=route("r", r"^\+1", ["Local"], ["ghost"])
    )
    assert unknown_trunk.status_code == 422
    assert "ghost" in str(unknown_trunk.json()["detail"])
    unknown_usage = await http.post(
        f"{url}/v1/routes", json=route("r", r"^\+1", ["Martian"], ["gw-new"])
    )
    assert unknown_usage.status_code == 422
    assert "Martian" in str(unknown_usage.json()["detail"])
    bad_pattern = await http.post(
        f"{url}/v1/routes", json=route("r", r"^(\+1", ["Local"], ["gw-new"])
    )
    assert bad_pattern.status_code == 422
    assert "number_pattern" in bad_pattern.text

    ok = await http.post(f"{url}/v1/routes", json=route("r", r"^\+1972", ["Local"], ["gw-new"]))
    assert ok.status_code == 201
    assert (await http.delete(f"{url}/v1/trunks/gw-new")).status_code == 409
    changed = await http.put(
        f"{url}/v1/routes/r", json=route("r", r"^\+1972", ["Local"], ["gw-global"], priority=3)
    )
    assert changed.status_code == 200
    assert (await http.get(f"{url}/v1/routes/r")).json()["priority"] == 3
    assert (await http.delete(f"{url}/v1/trunks/gw-new")).status_code == 204
    assert (await http.delete(f"{url}/v1/routes/r")).status_code == 204
    assert (await http.delete(f"{url}/v1/routes/r")).status_code == 404
    mismatch = await http.put(
        f"{url}/v1/routes/x", json=route("y", r"^1", ["Local"], ["gw-global"])
    )
    assert mismatch.status_code == 422


async def test_a_new_usage_in_the_catalogue_may_then_be_routed(
    js: JetStreamContext, start_replica: StartReplica, http: httpx.AsyncClient
) -> None:
    await import_policy(js, redmond())
    url = (await start_replica()).url
    assert (
        await http.post(f"{url}/v1/routes", json=route("em", "^911$", ["Emergency"], ["gw-global"]))
    ).status_code == 422
    usages = await http.put(f"{url}/v1/usages", json=["RedmondLocal", "Emergency"])
    assert usages.status_code == 200
    assert "Emergency" in usages.json()["known"]
    assert (
        await http.post(f"{url}/v1/routes", json=route("em", "^911$", ["Emergency"], ["gw-global"]))
    ).status_code == 201
    assert (await http.put(f"{url}/v1/usages", json=["RedmondLocal"])).status_code == 409


async def test_route_test_answers_like_test_csintertrunkrouting(
    js: JetStreamContext, start_replica: StartReplica, http: httpx.AsyncClient
) -> None:
    await import_policy(js, redmond())
    replica = await start_replica()
    answer = (
        await http.post(f"{replica.url}/v1/route-test", json={"trunk": "pbx", "called": "0100"})
    ).json()
    assert answer["result"] == "routed" and answer["status"] is None
    assert answer["normalized_called"] == "+14255550100"
    assert (answer["usage"], answer["route"]) == ("Local", "Redmond-Local")
    assert [t["trunk"] for t in answer["targets"]] == ["gw-redmond", "gw-global"]
    assert answer["explain"]
    refused = (
        await http.post(
            f"{replica.url}/v1/route-test", json={"trunk": "branch", "called": "+19725550100"}
        )
    ).json()
    assert (refused["result"], refused["status"]) == ("no_route", 403)
    assert replica.service.answered == 0  # no call was placed


async def test_writes_from_two_replicas_at_once_all_land(
    js: JetStreamContext, start_replica: StartReplica, http: httpx.AsyncClient
) -> None:
    await import_policy(js, redmond())
    one, two = await start_replica("r1"), await start_replica("r2")

    async def add(replica: Replica, n: int) -> int:
        body = route(f"extra-{n}", rf"^\+1{n:03d}", ["Local"], ["gw-redmond"])
        return (await http.post(f"{replica.url}/v1/routes", json=body)).status_code

    codes = await asyncio.gather(*(add(one if n % 2 else two, n) for n in range(12)))
    assert codes == [201] * 12
    routes = {r["id"] for r in (await http.get(f"{one.url}/v1/routes")).json()}
    assert {f"extra-{n}" for n in range(12)} <= routes


async def test_a_token_guards_the_api(start_replica: StartReplica, http: httpx.AsyncClient) -> None:
    url = (await start_replica(token="s3cret")).url
    assert (await http.get(f"{url}/v1/routes")).status_code == 401
    assert (await http.post(f"{url}/v1/trunks", json=trunk("t"))).status_code == 401
    bearer = {"authorization": "Bearer s3cret"}
    assert (await http.post(f"{url}/v1/trunks", json=trunk("t"), headers=bearer)).status_code == 201
    assert (await http.get(f"{url}/healthz")).status_code == 200


async def test_openapi_documents_the_api(
    start_replica: StartReplica, http: httpx.AsyncClient
) -> None:
    url = (await start_replica()).url
    assert (await http.get(f"{url}/docs")).status_code == 200
    paths = (await http.get(f"{url}/openapi.json")).json()["paths"]
    assert {
        "/v1/policy",
        "/v1/trunks/{trunk_id}",
        "/v1/routes/{route_id}",
        "/v1/route-test",
    } <= set(paths)
    assert (await http.get(f"{url}/readyz")).json() == {"ready": True}


async def test_openapi_lists_every_operation(
    start_replica: StartReplica, http: httpx.AsyncClient
) -> None:
    # the whole set: an endpoint dropped (or added) by accident fails here
    url = (await start_replica()).url
    paths = (await http.get(f"{url}/openapi.json")).json()["paths"]
    assert {(method.upper(), path) for path, ops in paths.items() for method in ops} == {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/v1/policy"),
        ("PUT", "/v1/policy"),
        ("GET", "/v1/usages"),
        ("PUT", "/v1/usages"),
        ("GET", "/v1/trunks"),
        ("POST", "/v1/trunks"),
        ("GET", "/v1/trunks/{trunk_id}"),
        ("PUT", "/v1/trunks/{trunk_id}"),
        ("DELETE", "/v1/trunks/{trunk_id}"),
        ("GET", "/v1/routes"),
        ("POST", "/v1/routes"),
        ("GET", "/v1/routes/{route_id}"),
        ("PUT", "/v1/routes/{route_id}"),
        ("DELETE", "/v1/routes/{route_id}"),
        ("POST", "/v1/route-test"),
        ("GET", "/v1/status"),
    }
