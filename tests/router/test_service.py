"""Router replicas on a real nats-server: decisions on the bus, live policy, trunk conditions."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tandem import bus, telemetry
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Policy, store
from tandem.policy.store import import_policy, policy_entries

from .conftest import StartReplica
from .policies import redmond, route, trunk


async def decide(nc: Client, trunk_id: str, called: str, calling: str = "") -> pb.RouteDecision:
    request = pb.RouteRequest(call_id="c1", ingress_trunk=trunk_id, called=called, calling=calling)
    return await bus.request(nc, bus.ROUTE_DECIDE, request, pb.RouteDecision)


def moved(policy: Policy) -> Policy:
    """The Redmond policy with Redmond Local sent to the global gateway instead."""
    data = policy.model_dump()
    data["routes"][0]["trunks"] = ["gw-global"]
    return Policy.model_validate(data)


async def test_replicas_answer_decisions_in_one_queue_group(
    js: JetStreamContext, nc: Client, start_replica: StartReplica
) -> None:
    await import_policy(js, redmond())
    first, second = await start_replica("r1"), await start_replica("r2")
    decisions = await asyncio.gather(*(decide(nc, "pbx", "0100") for _ in range(40)))
    assert {d.route for d in decisions} == {"Redmond-Local"}
    assert decisions[0].targets[0].called == "14255550100"
    assert first.service.answered + second.service.answered == 40
    assert first.service.answered > 0 and second.service.answered > 0


async def test_a_policy_change_applies_on_every_replica_within_a_second(
    js: JetStreamContext, nc: Client, start_replica: StartReplica
) -> None:
    await import_policy(js, redmond())
    replicas = [await start_replica("r1"), await start_replica("r2")]
    assert (await decide(nc, "pbx", "+14255551212")).targets[0].trunk == "gw-redmond"

    started = time.monotonic()
    await import_policy(js, moved(redmond()))
    pending = set(range(len(replicas)))
    while pending and time.monotonic() - started < 1.0:
        for i in list(pending):
            decision = replicas[i].service.route_test("pbx", "+14255551212", "")
            if decision.targets[0].trunk == "gw-global":
                pending.discard(i)
        await asyncio.sleep(0.01)
    assert not pending, f"replicas {pending} still on the old policy after 1 s"
    answers = await asyncio.gather(*(decide(nc, "pbx", "+14255551212") for _ in range(10)))
    assert {a.targets[0].trunk for a in answers} == {"gw-global"}


async def test_a_refused_stored_policy_leaves_the_last_one_in_force(
    js: JetStreamContext, nc: Client, start_replica: StartReplica
) -> None:
    await import_policy(js, redmond())
    replica = await start_replica()
    kv = await js.key_value(bus.CONFIG_BUCKET)
    await kv.put(
        "route.broken",
        b'{"id": "broken", "number_pattern": "^1", "pstn_usages": ["Nope"], "trunks": ["gw-global"]}',
    )
    revision = await kv.put("commit", b"{}")
    await replica.service.follower.applied(revision)
    assert replica.service.policy_error is not None and "Nope" in replica.service.policy_error
    assert (await decide(nc, "pbx", "+14255551212")).route == "Redmond-Local"


async def test_down_and_busy_trunks_from_the_buckets(
    js: JetStreamContext, nc: Client, start_replica: StartReplica
) -> None:
    policy = Policy.model_validate(
        {
            "trunks": [
                trunk("in", ["U"]),
                trunk("a", max_concurrent_calls=3),
                trunk("b"),
                trunk("c"),
            ],
            "routes": [route("r", r"^\+", ["U"], ["a", "b", "c"], spread="ordered")],
        }
    )
    await import_policy(js, policy)
    replica = await start_replica()
    health = await js.key_value(bus.TRUNK_HEALTH_BUCKET)
    counters = await js.key_value(bus.TRUNK_COUNTERS_BUCKET)
    await health.put(
        "b", pb.TrunkHealth(trunk="b", up=False, reason="3 OPTIONS timed out").SerializeToString()
    )
    await counters.put(
        "a", pb.TrunkCounters(trunk="a", active_in=1, active_out=2).SerializeToString()
    )
    deadline = time.monotonic() + 2
    while (replica.service.down, replica.service.active_calls) != ({"b"}, {"a": 3}):
        assert time.monotonic() < deadline, "health and counters not applied"
        await asyncio.sleep(0.01)
    decision = await decide(nc, "in", "+1")
    assert [(t.trunk, t.trunk_down) for t in decision.targets] == [("c", False), ("b", True)]

    await health.put("b", pb.TrunkHealth(trunk="b", up=True).SerializeToString())
    await counters.delete("a")
    while replica.service.down or replica.service.active_calls:
        assert time.monotonic() < deadline + 2
        await asyncio.sleep(0.01)
    assert [t.trunk for t in (await decide(nc, "in", "+1")).targets] == ["a", "b", "c"]


async def test_the_decision_is_a_child_span_of_the_callers_trace(
    js: JetStreamContext, nc: Client, start_replica: StartReplica
) -> None:
    provider = telemetry.setup_tracing("test")
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    await import_policy(js, redmond())
    await start_replica()
    with trace.get_tracer("test").start_as_current_span("call") as call:
        await decide(nc, "pbx", "+14255551212")
    caller = call.get_span_context()
    spans = [s for s in exporter.get_finished_spans() if s.name == "route.decide"]
    assert spans, "no route.decide span"
    span = spans[-1]
    assert span.context.trace_id == caller.trace_id
    assert span.parent is not None and span.parent.span_id == caller.span_id
    assert span.attributes is not None and span.attributes["tandem.route"] == "Redmond-Local"


async def test_a_malformed_request_is_answered_400(nc: Client, start_replica: StartReplica) -> None:
    await start_replica()
    reply = await nc.request(bus.ROUTE_DECIDE, b"\xff\xff\xff", timeout=2)
    assert pb.RouteDecision.FromString(reply.data).status == 400


async def test_with_no_stored_policy_every_call_gets_403(
    nc: Client, start_replica: StartReplica
) -> None:
    replica = await start_replica()
    decision = await decide(nc, "pbx", "+14255551212")
    assert (decision.result, decision.status) == (pb.RouteDecision.NO_ROUTE, 403)
    assert replica.service.loaded.is_set()


async def test_keys_without_a_commit_are_not_a_policy_yet(
    js: JetStreamContext, nc: Client, start_replica: StartReplica
) -> None:
    kv = await js.key_value(bus.CONFIG_BUCKET)
    for key, value in policy_entries(redmond()).items():  # a first import, interrupted
        await kv.put(key, value)
    replica = await start_replica()
    assert (await decide(nc, "pbx", "+14255551212")).status == 403
    await replica.service.follower.applied(await kv.put("commit", b"{}"))
    assert (await decide(nc, "pbx", "+14255551212")).route == "Redmond-Local"


async def test_an_unreadable_health_entry_does_not_stop_the_watch(
    js: JetStreamContext, start_replica: StartReplica
) -> None:
    replica = await start_replica()
    health = await js.key_value(bus.TRUNK_HEALTH_BUCKET)
    await health.put("gw-a", b"\xff\xff not protobuf")
    await health.put("gw-b", pb.TrunkHealth(trunk="gw-b", up=False).SerializeToString())
    deadline = time.monotonic() + 2
    while replica.service.down != {"gw-b"}:
        assert time.monotonic() < deadline, f"down is {replica.service.down}"
        await asyncio.sleep(0.01)


async def test_a_router_started_mid_write_serves_the_previous_whole_policy(
    js: JetStreamContext, nc: Client, start_replica: StartReplica
) -> None:
    await import_policy(js, redmond())
    kv = await js.key_value(bus.CONFIG_BUCKET)
    # a writer is half-way through the next policy: some of its keys stored, no commit yet
    await kv.put("route.Redmond-Local", policy_entries(moved(redmond()))["route.Redmond-Local"])
    await kv.delete("route.Universal")
    replica = await start_replica()
    assert replica.service.follower.from_snapshot
    assert (await decide(nc, "pbx", "+14255551212")).targets[0].trunk == "gw-redmond"
    assert (await decide(nc, "pbx", "+33123456789")).route == "Universal"  # still there
    await replica.service.follower.applied(await kv.put("commit", b"{}"))  # the write ends
    assert (await decide(nc, "pbx", "+14255551212")).targets[0].trunk == "gw-global"
    assert (await decide(nc, "pbx", "+33123456789")).status == 403


async def test_a_cold_router_reads_the_snapshot_and_verifies_it(
    js: JetStreamContext, nc: Client, start_replica: StartReplica
) -> None:
    await import_policy(js, redmond())
    replica = await start_replica()
    assert replica.service.follower.from_snapshot
    assert replica.service.policy == redmond()
    verify = next(t for t in replica.service.tasks if t.get_name() == "verify-snapshot")
    await asyncio.wait_for(verify, 10)
    assert replica.service.policy_error is None
    assert all(c._pattern is not None for c in replica.service.table.routes.values())  # warm


async def test_a_snapshot_route_that_fails_validation_is_taken_out_and_reported(
    js: JetStreamContext, nc: Client, start_replica: StartReplica
) -> None:
    await import_policy(js, redmond())
    kv = await js.key_value(bus.CONFIG_BUCKET)
    revision = (await kv.get("commit")).revision
    entries = policy_entries(redmond())
    # a snapshot no writer of ours would write: a route whose pattern no engine runs
    entries["route.Universal"] = entries["route.Universal"].replace(b'"^', b'"(^')
    await store.write_snapshot(kv, revision or 0, entries)
    replica = await start_replica()
    verify = next(t for t in replica.service.tasks if t.get_name() == "verify-snapshot")
    await asyncio.wait_for(verify, 10)
    assert "Universal" in (replica.service.policy_error or "")
    assert [r.id for r in replica.service.policy.routes] == ["Redmond-Local"]
    assert (await decide(nc, "pbx", "+33123456789")).status == 403  # no longer routed by it
