"""callstate's HTTP API: active calls (list, inspect, hang up), CDRs (JSON pages by cursor, and
a streamed CSV of any size), statistics."""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
from collections.abc import AsyncGenerator
from typing import Annotated, Any, Protocol

import nats.errors
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from tandem import bus
from tandem.http import AUTH
from tandem.pb import tandem_pb2 as pb

PAGE_DEFAULT = 100
PAGE_MAX = 1000
SCAN_MAX = 200_000  # CDRs read for one page at most; its cursor continues from there
CSV_CHUNK = 64 * 1024  # characters of CSV sent at a time
LONGEST_CALL = datetime.timedelta(days=1)  # a CDR is written this long after `until`, at most

Since = Annotated[datetime.datetime | None, Query(description="invite time from (ISO 8601)")]
Until = Annotated[datetime.datetime | None, Query(description="invite time before")]
Trunk = Annotated[str | None, Query(description="ingress or attempted trunk")]
Status = Annotated[int | None, Query(ge=0, le=699, description="final SIP status")]

CSV_COLUMNS = [
    "call_id",
    "invite_time",
    "answer_time",
    "end_time",
    "duration_s",
    "ingress_trunk",
    "egress_trunk",
    "calling_received",
    "called_received",
    "calling_sent",
    "called_sent",
    "final_status",
    "final_reason",
    "ended_by",
    "end_reason",
    "failover_count",
    "attempts",
    "sip_call_ids",
    "usage",
    "route",
    "edge",
    "trace_id",
    "media",
    "caller_packets",
    "caller_lost",
    "caller_mos",
    "callee_packets",
    "callee_lost",
    "callee_mos",
]


def quality_json(q: pb.MediaQuality) -> dict[str, Any]:
    """One party's RTP through rtpengine (packets from it, to it, lost, jitter, MOS)."""
    return {
        "rtpengine": q.rtpengine,
        "protocol": q.protocol,
        "crypto": q.crypto or None,
        "packets_from": q.packets_from,
        "bytes_from": q.bytes_from,
        "packets_to": q.packets_to,
        "bytes_to": q.bytes_to,
        "packets_lost": q.packets_lost,
        "loss_percent": round(q.loss_percent, 2),
        "jitter_ms": round(q.jitter_ms, 2),
        "rtt_ms": round(q.rtt_ms, 2),
        "mos": q.mos or None,
        "mos_min": q.mos_min or None,
        "errors": q.errors,
        "lost": q.lost,
    }


def attempt_json(a: pb.Attempt) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "leg_id": a.leg_id,
        "trunk": a.trunk,
        "edge": a.edge or None,
        "sip_call_id": a.sip_call_id,
        "called": a.called,
        "calling": a.calling,
        "status": a.status,
        "reason": a.reason,
        "received_status": a.received_status or None,
        "start_unix_ms": a.start_unix_ms,
        "answer_unix_ms": a.answer_unix_ms or None,
        "end_unix_ms": a.end_unix_ms or None,
        "media": quality_json(a.media) if a.HasField("media") else None,
    }


def event_json(e: pb.CallEvent) -> dict[str, Any]:
    fields = ("leg_id", "trunk", "status", "reason", "ended_by", "sip_call_id", "called")
    kind = bus.CALL_EVENT_KINDS.get(e.kind, "unknown")
    out: dict[str, Any] = {"seq": e.seq, "kind": kind, "time_unix_ms": e.time_unix_ms}
    out.update({name: getattr(e, name) for name in fields if getattr(e, name)})
    return out


def call_json(call: pb.ActiveCall, timeline: bool = False) -> dict[str, Any]:
    out = {
        "call_id": call.call_id,
        "state": pb.CallState.Name(call.state).lower(),
        "edge": call.edge,
        "ingress_trunk": call.ingress_trunk,
        "sip_call_id": call.sip_call_id,
        "calling": call.calling,
        "called": call.called,
        "normalized_called": call.normalized_called,
        "usage": call.usage,
        "route": call.route,
        "transferred_from": call.transferred_from or None,
        "invite_unix_ms": call.invite_unix_ms,
        "answer_unix_ms": call.answer_unix_ms or None,
        "trace_id": call.trace_id,
        "media": call.media or "bypassed",
        "legs": [attempt_json(a) for a in call.attempts],
    }
    if timeline:
        out["timeline"] = [event_json(e) for e in call.timeline]
    return out


def cdr_json(cdr: pb.Cdr) -> dict[str, Any]:
    return {
        "call_id": cdr.call_id,
        "sip_call_ids": list(cdr.sip_call_ids),
        "edge": cdr.edge,
        "ingress_trunk": cdr.ingress_trunk,
        "egress_trunk": cdr.egress_trunk,
        "calling_received": cdr.calling_received,
        "called_received": cdr.called_received,
        "calling_sent": cdr.calling_sent,
        "called_sent": cdr.called_sent,
        "usage": cdr.usage,
        "route": cdr.route,
        "invite_unix_ms": cdr.invite_unix_ms,
        "answer_unix_ms": cdr.answer_unix_ms or None,
        "end_unix_ms": cdr.end_unix_ms,
        "duration_s": cdr.duration_s,
        "final_status": cdr.final_status,
        "final_reason": cdr.final_reason,
        "ended_by": cdr.ended_by,
        "end_reason": cdr.end_reason,
        "transferred_from": cdr.transferred_from or None,
        "transferred_to": cdr.transferred_to or None,
        "failover_count": cdr.failover_count,
        "attempts": [attempt_json(a) for a in cdr.attempts],
        "trace_id": cdr.trace_id,
        "media": cdr.media or "bypassed",
        "media_note": cdr.media_note or None,
        "ingress_media": quality_json(cdr.ingress_media) if cdr.HasField("ingress_media") else None,
    }


def _iso(ms: int) -> str:
    if not ms:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(
        timespec="milliseconds"
    )


def cdr_row(cdr: pb.Cdr) -> list[Any]:
    callee = next((a.media for a in cdr.attempts if a.HasField("media")), None)
    parties = [cdr.ingress_media if cdr.HasField("ingress_media") else None, callee]
    quality = [
        value
        for q in parties
        for value in ((q.packets_from, q.packets_lost, q.mos or "") if q else ("", "", ""))
    ]
    return [
        cdr.call_id,
        _iso(cdr.invite_unix_ms),
        _iso(cdr.answer_unix_ms),
        _iso(cdr.end_unix_ms),
        f"{cdr.duration_s:.3f}",
        cdr.ingress_trunk,
        cdr.egress_trunk,
        cdr.calling_received,
        cdr.called_received,
        cdr.calling_sent,
        cdr.called_sent,
        cdr.final_status,
        cdr.final_reason,
        cdr.ended_by,
        cdr.end_reason,
        cdr.failover_count,
        " ".join(f"{a.trunk}:{a.status}" for a in cdr.attempts),
        " ".join(cdr.sip_call_ids),
        cdr.usage,
        cdr.route,
        cdr.edge,
        cdr.trace_id,
        cdr.media or "bypassed",
        *quality,
    ]


def _ms(when: datetime.datetime | None) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


class CdrQuery:
    """The CDR filters: invite time in [since, until), a trunk the call used, final status."""

    def __init__(
        self,
        since: datetime.datetime | None,
        until: datetime.datetime | None,
        trunk: str | None,
        status: int | None,
    ) -> None:
        self.since, self.until = since, until
        self.since_ms, self.until_ms = _ms(since), _ms(until)
        self.trunk, self.status = trunk, status

    def matches(self, cdr: pb.Cdr) -> bool:
        if self.since_ms is not None and cdr.invite_unix_ms < self.since_ms:
            return False
        if self.until_ms is not None and cdr.invite_unix_ms >= self.until_ms:
            return False
        if self.status is not None and cdr.final_status != self.status:
            return False
        trunks = {cdr.ingress_trunk, *(a.trunk for a in cdr.attempts)}
        return self.trunk is None or self.trunk in trunks

    def past_the_end(self, cdr: pb.Cdr) -> bool:
        """CDRs are in end-time order: past this one, none can have started before `until`."""
        if self.until_ms is None:
            return False
        return cdr.end_unix_ms >= self.until_ms + LONGEST_CALL.total_seconds() * 1000


class Replica(Protocol):
    """What the API asks of the callstate replica it serves, leading or standing by."""

    async def active_calls(self) -> list[pb.ActiveCall]: ...

    async def active_call(self, call_id: str) -> pb.ActiveCall | None: ...

    def read_cdrs(
        self, *, after_seq: int, since: datetime.datetime | None
    ) -> AsyncGenerator[tuple[int, pb.Cdr]]: ...

    async def hang_up(self, call_id: str, reason: str) -> pb.CommandReply:
        """The ingress edge's reply; nats' TimeoutError or NoRespondersError if none answers."""
        ...

    async def stats(self) -> list[dict[str, Any]]: ...


async def replica_of(request: Request) -> Replica:
    # async: FastAPI would run a plain function in its thread pool, for every request
    replica: Replica = request.app.state.replica
    return replica


ReplicaDep = Annotated[Replica, Depends(replica_of)]
router = APIRouter(prefix="/v1", dependencies=AUTH)


def mount(app: FastAPI, replica: Replica) -> None:
    """Serve this API on the process's app, for this replica."""
    app.state.replica = replica
    app.include_router(router)


async def matching(
    replica: Replica, query: CdrQuery, after: int = 0
) -> AsyncGenerator[tuple[int, pb.Cdr]]:
    """Every CDR the query matches after the cursor, in order, up to the last that can."""
    reader = replica.read_cdrs(after_seq=after, since=None if after else query.since)
    async with contextlib.aclosing(reader) as cdrs:
        async for seq, cdr in cdrs:
            if query.past_the_end(cdr):
                return
            if query.matches(cdr):
                yield seq, cdr


async def page_of(
    replica: Replica, query: CdrQuery, after: int, limit: int
) -> tuple[list[tuple[int, pb.Cdr]], int | None]:
    """Up to `limit` matching CDRs after the cursor, reading SCAN_MAX at most, and the cursor
    of the next page: None only once nothing further can match (the stream's end, or past
    `until`). A page cut short by SCAN_MAX may hold fewer CDRs, even none, and a cursor."""
    page: list[tuple[int, pb.Cdr]] = []
    scanned = 0
    reader = replica.read_cdrs(after_seq=after, since=None if after else query.since)
    async with contextlib.aclosing(reader) as cdrs:
        async for seq, cdr in cdrs:
            if query.past_the_end(cdr):
                return page, None
            if query.matches(cdr):
                page.append((seq, cdr))
            scanned += 1
            if len(page) >= limit or scanned >= SCAN_MAX:
                return page, seq
    return page, None


@router.get("/calls", tags=["calls"])
async def list_calls(replica: ReplicaDep, trunk: Trunk = None) -> dict[str, Any]:
    """Calls in progress, oldest first; with `trunk`, those that entered or left by it."""
    calls = await replica.active_calls()
    if trunk is not None:
        calls = [
            c
            for c in calls
            if c.ingress_trunk == trunk or any(a.trunk == trunk for a in c.attempts)
        ]
    return {"calls": [call_json(c) for c in calls], "count": len(calls)}


@router.get("/calls/{call_id}", tags=["calls"])
async def get_call(call_id: str, replica: ReplicaDep) -> dict[str, Any]:
    """One call in progress with its legs and the timeline of its events."""
    call = await replica.active_call(call_id)
    if call is None:
        raise HTTPException(404, f"no call {call_id} in progress")
    return call_json(call, timeline=True)


@router.delete("/calls/{call_id}", tags=["calls"], status_code=202)
async def hang_up(call_id: str, replica: ReplicaDep) -> dict[str, Any]:
    """Ask the ingress edge to end the call (CANCEL before answer, BYE after)."""
    if await replica.active_call(call_id) is None:
        raise HTTPException(404, f"no call {call_id} in progress")
    try:
        reply = await replica.hang_up(call_id, reason="api")
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        raise HTTPException(504, "no edge answered the hang-up request") from None
    if not reply.ok:
        raise HTTPException(409, f"the edge refused: {reply.error}")
    return {"call_id": call_id, "hangup": "requested"}


@router.get("/cdrs", tags=["cdrs"])
async def list_cdrs(
    replica: ReplicaDep,
    since: Since = None,
    until: Until = None,
    trunk: Trunk = None,
    status: Status = None,
    after: Annotated[int, Query(ge=0, description="cursor: `next` of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
) -> dict[str, Any]:
    """Finished calls, oldest end first, a page at a time: follow `next` until it is null (a
    page may be short, even empty, when few CDRs match: `next` says whether more may)."""
    query = CdrQuery(since, until, trunk, status)
    page, cursor = await page_of(replica, query, after, limit)
    return {"cdrs": [cdr_json(cdr) for _, cdr in page], "next": cursor}


@router.get("/cdrs.csv", tags=["cdrs"])
async def cdrs_csv(
    replica: ReplicaDep,
    since: Since = None,
    until: Until = None,
    trunk: Trunk = None,
    status: Status = None,
) -> StreamingResponse:
    """Every matching CDR as CSV, one row per call (attempts as `trunk:status` pairs), streamed
    as it is read: any number of rows, in constant memory."""
    query = CdrQuery(since, until, trunk, status)

    async def rows() -> AsyncGenerator[str]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        async with contextlib.aclosing(matching(replica, query)) as cdrs:
            async for _, cdr in cdrs:
                writer.writerow(cdr_row(cdr))
                if out.tell() >= CSV_CHUNK:
                    yield out.getvalue()
                    out.seek(0)
                    out.truncate()
        yield out.getvalue()

    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="cdrs.csv"'},
    )


@router.get("/stats", tags=["stats"])
async def stats(replica: ReplicaDep) -> dict[str, Any]:
    """Per trunk, both directions together and apart: attempts, answers, ASR, NER, ACD."""
    return {"trunks": await replica.stats()}
