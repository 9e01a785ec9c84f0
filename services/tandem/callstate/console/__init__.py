"""The operator's console at /console on the callstate API: server-rendered pages, a small
script for live updates (server-sent events) and the ladder's message pane, no build chain.

Pages: live calls (with hang-up), a call (SIP ladder, trace waterfall, CDR and attempts),
CDR search with CSV, trunks (health, load, ASR/NER/ACD, failures), the route tester and the
policy. Everything comes from what callstate serves already (its replica, TANDEM_SIP, the
health and config buckets), the router's route-test API and `tandem up`'s trace collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import io
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import jinja2
import nats.errors
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from tandem import bus
from tandem.callstate import sip
from tandem.callstate.api import (
    CSV_COLUMNS,
    SCAN_MAX,
    CdrQuery,
    Replica,
    call_json,
    cdr_json,
    cdr_row,
    matching,
)
from tandem.callstate.console.auth import COOKIE, COOKIE_MAX_AGE_S, LoginRequired, Role, Tokens
from tandem.callstate.console.auth import need as need_role
from tandem.callstate.console.drawing import ladder_svg, waterfall, when
from tandem.config import Config
from tandem.http import AUTH, api_read_token
from tandem.ladder import build as build_ladder
from tandem.pb import tandem_pb2 as pb
from tandem.policy import Policy
from tandem.policy.store import read_policy

HERE = Path(__file__).parent
LIVE_EVERY_S = 1.0  # how often the live calls are looked at for the server-sent events
KEEPALIVE_S = 15.0
PAGE = 100  # CDRs on one search page
CSV_MAX_ROWS = 100_000
LOOKUP_S = 2.0  # the router's route test and the trace collector, at most
CDR_LOOKBACK = datetime.timedelta(days=1)  # how far back a call's CDR is looked for


@dataclass
class Console:
    """What the pages read: the replica, the bus, the config, and who may do what."""

    replica: Replica
    js: JetStreamContext
    config: Config
    tokens: Tokens
    templates: jinja2.Environment

    @property
    def router_url(self) -> str:
        return self.config.console.router_url or f"http://{self.config.router.api}"

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> Response:
        role = self.tokens.role(request)
        page = self.templates.get_template(name).render(
            role=role, Role=Role, open=self.tokens.open, path=request.url.path, **values
        )
        return HTMLResponse(page, status)

    # ---- reads -------------------------------------------------------------------------

    async def policy(self) -> Policy:
        try:
            kv = await self.js.key_value(bus.CONFIG_BUCKET)
            stored = await read_policy(kv)
        except (NotFoundError, nats.errors.Error):
            stored = None
        return stored or self.config.policy

    async def health(self, trunks: list[str]) -> dict[str, pb.TrunkHealth]:
        kv = await self.js.key_value(bus.TRUNK_HEALTH_BUCKET)
        found = {}
        for trunk in trunks:
            try:
                entry = await kv.get(trunk)
            except KeyNotFoundError:
                continue
            found[trunk] = pb.TrunkHealth.FromString(entry.value or b"")
        return found

    async def cdr_of(self, call_id: str, since_ms: int | None) -> pb.Cdr | None:
        start = (
            datetime.datetime.fromtimestamp(since_ms / 1000, datetime.UTC)
            if since_ms
            else datetime.datetime.now(datetime.UTC) - CDR_LOOKBACK
        )
        reader = self.replica.read_cdrs(after_seq=0, since=start)  # CDRs are stored at the end
        async with contextlib.aclosing(reader) as cdrs:
            scanned = 0
            async for _, cdr in cdrs:
                if cdr.call_id == call_id:
                    return cdr
                scanned += 1
                if scanned >= SCAN_MAX:
                    break
        return None

    async def trace(self, key: str) -> list[dict[str, Any]] | None:
        """The call's spans from `tandem up`'s collector; None when there is none to ask."""
        collector = self.config.telemetry.collector
        if collector is None or not key:
            return None
        try:
            async with httpx.AsyncClient(timeout=LOOKUP_S) as http:
                reply = await http.get(f"http://{collector}/v1/traces/{key}")
        except httpx.HTTPError:
            return None
        if reply.status_code != 200:
            return []
        spans: list[dict[str, Any]] = reply.json()
        return spans

    async def route_test(self, trunk: str, called: str, calling: str) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {self.tokens.write}"} if self.tokens.write else {}
        body = {"trunk": trunk, "called": called, "calling": calling}
        try:
            async with httpx.AsyncClient(timeout=LOOKUP_S) as http:
                reply = await http.post(
                    f"{self.router_url}/v1/route-test", json=body, headers=headers
                )
        except httpx.HTTPError as exc:
            return {"error": f"the router at {self.router_url} did not answer: {exc}"}
        if reply.status_code != 200:
            return {"error": f"the router answered {reply.status_code}: {reply.text[:300]}"}
        answer: dict[str, Any] = reply.json()
        return answer


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(console_of)]


def reader(request: Request, console: ConsoleDep) -> Role:
    return need_role(request, console.tokens, Role.READ)


def writer(request: Request, console: ConsoleDep) -> Role:
    # the cookie is SameSite=Strict; an open (loopback) console has no cookie to lean on
    origin = request.headers.get("origin")
    if origin and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "a hang-up from another site's page")
    return need_role(request, console.tokens, Role.WRITE)


Read = Depends(reader)
Write = Depends(writer)
router = APIRouter(prefix="/console", include_in_schema=False)
api = APIRouter(prefix="/v1", dependencies=AUTH)  # the console's data for `tandem trunks`


def mount(app: FastAPI, replica: Replica, js: JetStreamContext, config: Config) -> None:
    """Serve the console (and the SIP capture API it draws from) on callstate's app."""
    tokens = Tokens(app.state.token, api_read_token(config.api_read_token))
    app.state.read_token = tokens.read
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(when=when)
    app.state.console = Console(replica, js, config, tokens, env)
    sip.mount(app, js)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
    app.include_router(api)
    app.add_exception_handler(LoginRequired, _to_login)


async def _to_login(request: Request, exc: Exception) -> Response:
    query = request.url.query
    target = urllib.parse.quote(request.url.path + (f"?{query}" if query else ""))
    return RedirectResponse(f"/console/login?next={target}", 303)


# ---- logging in --------------------------------------------------------------------------


@router.get("")
def home() -> Response:
    return RedirectResponse("/console/calls", 303)


@router.get("/login")
def login_form(request: Request, console: ConsoleDep, next: str = "/console/calls") -> Response:
    return console.render(request, "login.html", next=_local(next), error="")


@router.post("/login")
async def login(request: Request, console: ConsoleDep) -> Response:
    form = urllib.parse.parse_qs((await request.body()).decode(errors="replace"))
    token = form.get("token", [""])[0]
    target = _local(form.get("next", ["/console/calls"])[0])
    role = console.tokens.role_of_token(token) if not console.tokens.open else Role.WRITE
    if role is Role.NONE:
        return console.render(request, "login.html", 401, next=target, error="wrong token")
    response = RedirectResponse(target, 303)
    if not console.tokens.open:
        response.set_cookie(
            COOKIE,
            console.tokens.cookie(role),
            max_age=COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/console",
        )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/console/login", 303)
    response.delete_cookie(COOKIE, path="/console")
    return response


def _local(target: str) -> str:
    """Only ever send a browser back into the console after logging in."""
    return target if target.startswith("/console") and "//" not in target else "/console/calls"


# ---- live calls ----------------------------------------------------------------------------


async def _live_rows(request: Request, console: Console) -> str:
    calls = [call_json(c) for c in await console.replica.active_calls()]
    role = console.tokens.role(request)
    return console.templates.get_template("calls_rows.html").render(
        calls=calls, role=role, Role=Role, now_ms=int(time.time() * 1000)
    )


@router.get("/calls", dependencies=[Read])
async def calls(request: Request, console: ConsoleDep) -> Response:
    return console.render(request, "calls.html", rows=await _live_rows(request, console))


@router.get("/calls/stream", dependencies=[Read])
async def calls_stream(request: Request, console: ConsoleDep) -> Response:
    """Server-sent events: the rows of the live calls table whenever they change."""

    async def events() -> AsyncIterator[str]:
        last, quiet = "", 0.0
        while not await request.is_disconnected():
            rows = await _live_rows(request, console)
            if rows != last:
                last, quiet = rows, 0.0
                yield "event: calls\n" + "".join(f"data: {line}\n" for line in rows.split("\n"))
                yield "\n"
            elif quiet >= KEEPALIVE_S:
                quiet = 0.0
                yield ": keepalive\n\n"
            await asyncio.sleep(LIVE_EVERY_S)
            quiet += LIVE_EVERY_S

    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.post("/calls/{call_id}/hangup", dependencies=[Write])
async def hang_up(call_id: str, console: ConsoleDep) -> Response:
    if await console.replica.active_call(call_id) is None:
        raise HTTPException(404, f"no call {call_id} in progress")
    try:
        reply = await console.replica.hang_up(call_id, reason="console")
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        raise HTTPException(504, "no edge answered the hang-up request") from None
    if not reply.ok:
        raise HTTPException(409, f"the edge refused: {reply.error}")
    return RedirectResponse(f"/console/calls/{call_id}?hangup=requested", 303)


# ---- one call ----------------------------------------------------------------------------


@router.get("/calls/{call_id}", dependencies=[Read])
async def call(
    request: Request, call_id: str, console: ConsoleDep, since_ms: int | None = None
) -> Response:
    active = await console.replica.active_call(call_id)
    messages = await sip.messages_json(console.js, call_id)
    cdr = None
    if active is None:
        first = messages[0]["time_unix_us"] // 1000 - 1000 if messages else since_ms
        cdr = await console.cdr_of(call_id, first)
    if active is None and cdr is None and not messages:
        return console.render(request, "missing.html", 404, call_id=call_id)
    record = call_json(active, timeline=True) if active else (cdr_json(cdr) if cdr else {})
    trace_id = record.get("trace_id", "")
    spans = await console.trace(trace_id or call_id)
    trace_url = console.config.console.trace_url
    return console.render(
        request,
        "call.html",
        call_id=call_id,
        active=record if active else None,
        cdr=record if cdr else None,
        ladder=ladder_svg(build_ladder(messages)),
        bars=waterfall(spans or []),
        collector=spans is not None,
        trace_id=trace_id,
        trace_link=trace_url.replace("{trace_id}", trace_id) if trace_url and trace_id else "",
        hangup=request.query_params.get("hangup", ""),
        media=media_rows(record) if cdr else [],
    )


def media_rows(cdr: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """An anchored call's legs with their RTP figures, the caller's first."""
    rows = []
    if cdr.get("ingress_media"):
        rows.append((f"{cdr['ingress_trunk']} (caller)", cdr["ingress_media"]))
    for attempt in cdr.get("attempts", []):
        if attempt.get("media"):
            rows.append((f"{attempt['trunk']} (attempt {attempt['attempt']})", attempt["media"]))
    return rows


# ---- CDRs ----------------------------------------------------------------------------------


@dataclass
class CdrSearch:
    number: str
    trunk: str
    status: int | None
    since: datetime.datetime | None
    until: datetime.datetime | None

    @property
    def query(self) -> CdrQuery:
        return CdrQuery(self.since, self.until, self.trunk or None, self.status)

    def matches(self, cdr: pb.Cdr) -> bool:
        numbers = (cdr.calling_received, cdr.called_received, cdr.calling_sent, cdr.called_sent)
        return not self.number or any(self.number in n for n in numbers)

    async def results(
        self, replica: Replica, after: int, limit: int
    ) -> AsyncIterator[tuple[int, pb.Cdr]]:
        found = 0
        async with contextlib.aclosing(matching(replica, self.query, after)) as cdrs:
            async for seq, cdr in cdrs:
                if self.matches(cdr):
                    yield seq, cdr
                    found += 1
                    if found >= limit:
                        return


def _time(value: str) -> datetime.datetime | None:
    """A datetime-local field (read as UTC, as the console shows times) or ISO 8601."""
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"not a time: {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def cdr_search(
    number: str = "",
    trunk: str = "",
    status: str = "",
    since: str = "",
    until: str = "",
) -> CdrSearch:
    if status and not status.isdigit():
        raise HTTPException(422, f"not a SIP status: {status!r}")
    return CdrSearch(number, trunk, int(status) if status else None, _time(since), _time(until))


SearchDep = Annotated[CdrSearch, Depends(cdr_search)]


@router.get("/cdrs", dependencies=[Read])
async def cdrs(
    request: Request, console: ConsoleDep, search: SearchDep, after: int = 0
) -> Response:
    page = [pair async for pair in search.results(console.replica, after, PAGE)]
    more = (dict(request.query_params) | {"after": str(page[-1][0])}) if len(page) == PAGE else None
    return console.render(
        request,
        "cdrs.html",
        cdrs=[cdr_json(cdr) for _, cdr in page],
        form=dict(request.query_params),
        more=urllib.parse.urlencode(more) if more else "",
        csv=urllib.parse.urlencode({k: v for k, v in request.query_params.items() if v}),
        trunks=sorted(t.id for t in (await console.policy()).trunks),
    )


@router.get("/cdrs.csv", dependencies=[Read])
async def cdrs_csv(console: ConsoleDep, search: SearchDep) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    async for _, cdr in search.results(console.replica, 0, CSV_MAX_ROWS):
        writer.writerow(cdr_row(cdr))
    disposition = {"content-disposition": 'attachment; filename="tandem-cdrs.csv"'}
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=disposition)


# ---- trunks, the route tester, the policy ------------------------------------------------


async def trunk_rows(console: Console) -> list[dict[str, Any]]:
    """Each trunk of the policy: its health by the probes, its load and its figures."""
    policy = await console.policy()
    stats = {s["trunk"]: s for s in await console.replica.stats()}
    health = await console.health([t.id for t in policy.trunks])
    rows = []
    for trunk in policy.trunks:
        figures = stats.get(trunk.id, {})
        probe = health.get(trunk.id)
        rows.append(
            {
                "trunk": trunk.id,
                "edge": ", ".join(trunk.edges),
                "peer": f"{trunk.peer}/{trunk.transport}",
                "enabled": trunk.enabled,
                "probed": trunk.options_interval_s > 0,
                "health": None
                if probe is None
                else {
                    "up": probe.up,
                    "reason": probe.reason,
                    "last_probe_unix_ms": probe.last_probe_unix_ms,
                    "failed_probes": probe.failed_probes,
                },
                "active": figures.get("active", 0),
                "max_concurrent_calls": trunk.max_concurrent_calls,
                "attempts": figures.get("attempts", 0),
                "asr": figures.get("asr"),
                "ner": figures.get("ner"),
                "acd_s": figures.get("acd_s"),
                "failures": figures.get("failures", {}),
            }
        )
    return rows


@router.get("/trunks", dependencies=[Read])
async def trunks(request: Request, console: ConsoleDep) -> Response:
    return console.render(request, "trunks.html", rows=await trunk_rows(console))


@api.get("/trunks", tags=["stats"])
async def trunks_json(console: ConsoleDep) -> dict[str, Any]:
    """Per trunk of the policy: health by OPTIONS probes, active calls against the limit,
    attempts, ASR, NER, ACD and failures by code (what the console's trunk page shows)."""
    return {"trunks": await trunk_rows(console)}


@router.get("/route-test", dependencies=[Read])
async def route_test(
    request: Request, console: ConsoleDep, trunk: str = "", called: str = "", calling: str = ""
) -> Response:
    policy = await console.policy()
    answer = await console.route_test(trunk, called, calling) if trunk and called else None
    return console.render(
        request,
        "route_test.html",
        trunks=sorted(t.id for t in policy.trunks),
        form={"trunk": trunk, "called": called, "calling": calling},
        answer=answer,
    )


@router.get("/policy", dependencies=[Read])
async def policy(request: Request, console: ConsoleDep) -> Response:
    current = await console.policy()
    by_usage: dict[str, list[Any]] = {}
    for route in sorted(current.routes, key=lambda r: (r.priority, r.id)):
        for usage in route.pstn_usages:
            by_usage.setdefault(usage, []).append(route)
    trunks = [
        {
            "trunk": t,
            "usages": [(u, by_usage.get(u, [])) for u in t.pstn_usages],
            "through": [r for r in current.routes if t.id in r.trunks],
        }
        for t in current.trunks
    ]
    return console.render(request, "policy.html", trunks=trunks, routes=current.routes)
