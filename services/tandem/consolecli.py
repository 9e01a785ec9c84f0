"""The console in a terminal: `tandem calls`, `cdrs`, `trunks`, `hangup` and `ladder`, against
callstate's API (the address in the config, or --api), each with --json for scripts.

The token is TANDEM_API_TOKEN (or the read token, TANDEM_API_READ_TOKEN, for all but hangup),
else the config's; it is sent as a bearer header and never printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from typing import Any

import httpx

from tandem.config import Config
from tandem.http import api_read_token, api_token
from tandem.ladder import build, clock, render_text

COMMANDS = ("calls", "cdrs", "trunks", "hangup", "ladder")
URL_ENV = "TANDEM_CALLSTATE_URL"
TIMEOUT_S = 10.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parsers(sub: Any, default_config: str) -> None:
    """The five commands, as subparsers of `tandem`."""

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.add_argument("--config", default=os.environ.get("TANDEM_CONFIG", default_config))
        p.add_argument(
            "--api", default=os.environ.get(URL_ENV), help=f"callstate's URL (env {URL_ENV})"
        )
        p.add_argument("--json", action="store_true", help="print the API's answer as JSON")
        return p

    p = command("calls", "calls in progress")
    p.add_argument("--trunk", help="only calls that entered or left by this trunk")
    p = command("cdrs", "finished calls")
    p.add_argument("--since", default="1h", help="a duration back from now (30m, 1h, 2d) or a time")
    p.add_argument("--until", help="a time (ISO 8601)")
    p.add_argument("--trunk", help="ingress or attempted trunk")
    p.add_argument("--status", type=int, help="final SIP status")
    p.add_argument("--limit", type=int, default=100)
    command("trunks", "trunk health, load and figures")
    p = command("hangup", "end a call in progress (CANCEL before answer, BYE after)")
    p.add_argument("call", help="the tandem call id")
    p = command("ladder", "a call's SIP messages as a ladder, as sngrep draws it")
    p.add_argument("call", help="the tandem call id")
    p.add_argument("--messages", action="store_true", help="print every message after it")


class Api:
    def __init__(self, base: str, token: str | None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base, headers=headers, timeout=TIMEOUT_S)

    def call(self, method: str, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        reply = self.http.request(method, path, params=query)
        if reply.status_code >= 400:
            try:
                detail = reply.json().get("detail", reply.text)
            except ValueError:
                detail = reply.text
            raise ApiError(f"{method} {path}: {reply.status_code} {detail}")
        return reply.json()


class ApiError(Exception):
    pass


def since_time(text: str, now: datetime.datetime) -> str:
    found = _DURATION.match(text)
    if found:
        back = datetime.timedelta(seconds=float(found[1]) * _UNITS[found[2]])
        return (now - back).isoformat()
    return datetime.datetime.fromisoformat(text).isoformat()


def run(args: argparse.Namespace, config: Config) -> int:
    base = args.api or f"http://{config.callstate.api}"
    write = api_token(config.api_token)
    read = api_read_token(config.api_read_token)
    api = Api(base, write if args.command == "hangup" else (write or read))
    try:
        answer, text = HANDLERS[args.command](api, args)
    except ApiError as exc:
        print(exc, file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"callstate does not answer at {base}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else text)
    return 0


def _calls(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("GET", "/v1/calls", trunk=args.trunk)
    rows = [
        [
            c["call_id"],
            c["state"],
            _ms(c["invite_unix_ms"]),
            c["calling"],
            c["called"],
            c["ingress_trunk"],
            c["legs"][-1]["trunk"] if c["legs"] else "",
        ]
        for c in answer["calls"]
    ]
    head = ["CALL", "STATE", "STARTED", "CALLING", "CALLED", "FROM", "TO"]
    return answer, table(head, rows) + f"\n{answer['count']} call(s) in progress"


def _cdrs(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    since = since_time(args.since, datetime.datetime.now(datetime.UTC))
    cdrs: list[dict[str, Any]] = []
    after = 0
    while len(cdrs) < args.limit:
        page = api.call(
            "GET",
            "/v1/cdrs",
            since=since,
            until=args.until,
            trunk=args.trunk,
            status=args.status,
            after=after or None,
            limit=min(args.limit - len(cdrs), 1000),
        )
        cdrs += page["cdrs"]
        if not page.get("next"):
            break
        after = page["next"]
    rows = [
        [
            c["call_id"],
            _ms(c["invite_unix_ms"]),
            c["calling_received"],
            c["called_received"],
            c["ingress_trunk"],
            c["egress_trunk"] or "-",
            f"{c['final_status'] or '-'} {c['final_reason']}".strip(),
            f"{c['duration_s']:.1f}",
            " ".join(f"{a['trunk']}:{a['status']}" for a in c["attempts"]),
        ]
        for c in cdrs
    ]
    head = ["CALL", "INVITE", "CALLING", "CALLED", "FROM", "TO", "FINAL", "SECONDS", "ATTEMPTS"]
    return {"cdrs": cdrs}, table(head, rows) + f"\n{len(cdrs)} call record(s)"


def _trunks(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("GET", "/v1/trunks")
    rows = []
    for t in answer["trunks"]:
        health = t["health"]
        state = "-" if health is None else ("up" if health["up"] else "down")
        limit = t["max_concurrent_calls"] or "-"
        rows.append(
            [
                t["trunk"],
                t["edge"],
                state + (f" ({health['reason']})" if health and health["reason"] else ""),
                f"{t['active']}/{limit}",
                t["attempts"],
                _pct(t["asr"]),
                _pct(t["ner"]),
                "-" if t["acd_s"] is None else f"{t['acd_s']:.1f}s",
                " ".join(f"{code}:{n}" for code, n in t["failures"].items()),
            ]
        )
    head = ["TRUNK", "EDGE", "HEALTH", "ACTIVE", "ATTEMPTS", "ASR", "NER", "ACD", "FAILURES"]
    return answer, table(head, rows)


def _hangup(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("DELETE", f"/v1/calls/{args.call}")
    return answer, f"hang-up of call {args.call} requested"


def _ladder(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("GET", f"/v1/calls/{args.call}/sip")
    messages = answer["messages"]
    if not messages:
        return answer, f"no SIP message kept for call {args.call}"
    text = render_text(build(messages))
    if args.messages:
        for m in messages:
            where = f"{m['src']} -> {m['dst']} ({m['transport']}, {m['edge']})"
            text += f"\n\n{clock(m['time_unix_us'])} {where}\n{m['text'].rstrip()}"
    return answer, text


HANDLERS = {
    "calls": _calls,
    "cdrs": _cdrs,
    "trunks": _trunks,
    "hangup": _hangup,
    "ladder": _ladder,
}


def table(head: list[str], rows: list[list[Any]]) -> str:
    cells = [head, *[[str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _ms(unix_ms: int) -> str:
    return datetime.datetime.fromtimestamp(unix_ms / 1000, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"
