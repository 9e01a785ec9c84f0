"""A stand-in for an edge in callstate's tests: it publishes call events and heartbeats over a
real NATS exactly as an edge does, and answers hang-up requests as the ingress edge would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from tandem import bus
from tandem.pb import tandem_pb2 as pb

T0 = 1_700_000_000_000  # a fixed clock for calls whose times the tests check
FAILOVER_CODES = (408, 503, 504)
REASONS = {486: "Busy Here", 503: "Service Unavailable", 404: "Not Found"}


class FakeEdge:
    def __init__(self, nc: Client, js: JetStreamContext, edge: str = "edge-a") -> None:
        self.nc, self.js, self.edge = nc, js, edge
        self.seq: defaultdict[str, int] = defaultdict(int)
        self.calls: set[str] = set()  # the calls this edge owns now
        self.ingress: dict[str, str] = {}
        self.hangups: list[pb.Hangup] = []
        self._beats: asyncio.Task[None] | None = None
        self._hangup_sub: Subscription | None = None

    async def event(self, call_id: str, kind: str, **fields: Any) -> pb.CallEvent:
        """Publish the call's next event (seq, Nats-Msg-Id "<call>.<seq>") on TANDEM_CALLS."""
        self.seq[call_id] += 1
        fields.setdefault("time_unix_ms", int(time.time() * 1000))
        event = pb.CallEvent(
            call_id=call_id,
            kind=pb.CallEvent.Kind.Value(kind.upper()),
            seq=self.seq[call_id],
            edge=self.edge,
            ingress_trunk=self.ingress.get(call_id, fields.pop("ingress_trunk", "pbx")),
            trace_id=f"trace-{call_id}",
            **fields,
        )
        if kind == "started":
            self.calls.add(call_id)
            self.ingress[call_id] = event.ingress_trunk
        elif kind == "ended":
            self.calls.discard(call_id)
        await bus.publish_event(
            self.js, bus.call_event(call_id, event.kind), event, f"{call_id}.{event.seq}"
        )
        return event

    async def republish(self, event: pb.CallEvent) -> None:
        """The same event again under a new message id: JetStream cannot drop it, callstate must."""
        await bus.publish_event(
            self.js, bus.call_event(event.call_id, event.kind), event, f"again.{time.time_ns()}"
        )

    async def call(
        self,
        call_id: str,
        *,
        ingress: str = "pbx",
        egress: tuple[str, ...] = ("gw1", "gw2"),
        failures: tuple[int, ...] = (503,),
        answer: bool = True,
        talk_ms: int = 60_000,
        end: bool = True,
        t0: int = T0,
        quality: tuple[pb.MediaQuality, pb.MediaQuality] | None = None,
    ) -> list[pb.CallEvent]:
        """A realistic call: each failure fails one attempt over to the next trunk.

        The default: started, routed, leg_attempt gw1, leg_failed 503, leg_attempt gw2,
        leg_progress 180, leg_answered, answered, ended (caller hangs up after `talk_ms`).
        With `quality` (the caller's and the callee's RTP) the media was anchored.
        """
        media = "anchored" if quality else ""
        sent = [
            await self.event(
                call_id,
                "started",
                time_unix_ms=t0,
                ingress_trunk=ingress,
                sip_call_id=f"in-{call_id}@pbx",
                called="5551234",
                calling="201",
            ),
            await self.event(
                call_id,
                "routed",
                time_unix_ms=t0 + 5,
                usage="international",
                route="to-pstn",
                normalized_called="+15551234",
            ),
        ]
        t, final, answered = t0 + 10, 0, False
        for attempt, trunk in enumerate(egress, start=1):
            leg = f"{call_id}-leg{attempt}"
            sent.append(
                await self.event(
                    call_id,
                    "leg_attempt",
                    time_unix_ms=t,
                    leg_id=leg,
                    trunk=trunk,
                    attempt=attempt,
                    called="+15551234",
                    calling="+442071234567",
                    sip_call_id=f"out-{leg}@tandem",
                )
            )
            if attempt <= len(failures):
                final = failures[attempt - 1]
                sent.append(
                    await self.event(
                        call_id,
                        "leg_failed",
                        time_unix_ms=t + 100,
                        leg_id=leg,
                        trunk=trunk,
                        status=final,
                        reason=REASONS.get(final, "Failed"),
                    )
                )
                t += 200
                if final in FAILOVER_CODES:
                    continue
                break  # any other failure ends the call with it
            progress = await self.event(
                call_id, "leg_progress", time_unix_ms=t + 50, leg_id=leg, status=180
            )
            sent.append(progress)
            if not answer:
                return sent
            t += 1000
            sent.append(
                await self.event(
                    call_id,
                    "leg_answered",
                    time_unix_ms=t,
                    leg_id=leg,
                    trunk=trunk,
                    status=200,
                    media=media,
                )
            )
            sent.append(
                await self.event(call_id, "answered", time_unix_ms=t, leg_id=leg, media=media)
            )
            if quality:
                caller, callee = (pb.MediaQuality(), pb.MediaQuality())
                caller.CopyFrom(quality[0])
                callee.CopyFrom(quality[1])
                caller.leg_id, callee.leg_id = "", leg
                quality = (caller, callee)
            answered, t = True, t + talk_ms
            break
        if end:
            ended = await self.event(
                call_id,
                "ended",
                time_unix_ms=t,
                ended_by="caller" if answered else "system",
                status=0 if answered else final,
                reason="" if answered else REASONS.get(final, "Failed"),
                media=media,
                quality=list(quality or ()) if answered else [],
            )
            sent.append(ended)
        return sent

    # ---- heartbeats and hang-up ------------------------------------------------------------
    async def heartbeat(self) -> None:
        beat = pb.EdgeHeartbeat(
            edge=self.edge,
            time_unix_ms=int(time.time() * 1000),
            active_calls=len(self.calls),
            calls=sorted(self.calls),
        )
        await self.nc.publish(bus.edge_heartbeat(self.edge), beat.SerializeToString())

    def start_heartbeats(self, interval_s: float = 0.2) -> None:
        async def beat() -> None:
            while True:
                await self.heartbeat()
                await asyncio.sleep(interval_s)

        self._beats = asyncio.create_task(beat())

    async def stop_heartbeats(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beats

    async def answer_hangups(self) -> None:
        """Reply ok to hang-up requests for our calls, then end the call as the edge would."""

        async def on_hangup(msg: Msg) -> None:
            request = pb.Hangup.FromString(msg.data)
            if request.call_id not in self.calls:
                return  # not ours: the owning edge answers
            self.hangups.append(request)
            await msg.respond(pb.CommandReply(ok=True).SerializeToString())
            await self.event(request.call_id, "ended", ended_by="api", reason="hung up by API")

        self._hangup_sub = await self.nc.subscribe(bus.call_hangup("*"), cb=on_hangup)

    async def close(self) -> None:
        await self.stop_heartbeats()
        if self._hangup_sub is not None:
            await self._hangup_sub.unsubscribe()
