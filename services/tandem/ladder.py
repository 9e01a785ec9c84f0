"""A call's SIP ladder: its captured messages as arrows between columns (the caller's trunk,
the ingress edge, the egress edges, the callees' trunks), in time order.

The messages are the JSON of callstate's `GET /v1/calls/{id}/sip`; the console draws the
ladder as SVG, `tandem ladder` as text the way sngrep draws a call flow.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

TEXT_COLUMN_WIDTH = 24
TEXT_TIME_WIDTH = 13


@dataclass(frozen=True, slots=True)
class Column:
    kind: str  # "trunk" or "edge"
    id: str
    address: str = ""  # a trunk's host:port as the edge saw it


@dataclass(frozen=True, slots=True)
class Arrow:
    src: int  # column indexes
    dst: int
    label: str  # INVITE (SDP), 180 Ringing, ...
    time_unix_us: int
    message: dict[str, Any]

    @property
    def time(self) -> str:
        return clock(self.time_unix_us)


@dataclass(frozen=True, slots=True)
class Ladder:
    columns: list[Column]
    arrows: list[Arrow]


def clock(time_unix_us: int) -> str:
    """HH:MM:SS.mmm in UTC, as SIP traces are read."""
    when = datetime.datetime.fromtimestamp(time_unix_us / 1e6, datetime.UTC)
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def label(message: dict[str, Any]) -> str:
    """What sngrep writes on an arrow: the method or the status, and (SDP) with an offer."""
    status = message["status"]
    text = f"{status} {message['reason']}" if status else str(message["method"])
    head = str(message["text"]).partition("\r\n\r\n")[0].lower()
    return text + (" (SDP)" if "application/sdp" in head else "")


def build(messages: list[dict[str, Any]]) -> Ladder:
    """Columns in the order a call crosses them, then one arrow per message by time."""
    ordered = sorted(messages, key=lambda m: m["time_unix_us"])
    caller = [m for m in ordered if not m["leg_id"]]
    legs = [m for m in ordered if m["leg_id"]]
    columns: list[Column] = []
    index: dict[tuple[str, str], int] = {}

    def column(kind: str, key: str, address: str = "") -> int:
        if (kind, key) not in index:
            index[(kind, key)] = len(columns)
            columns.append(Column(kind, key, address))
        return index[(kind, key)]

    def far_end(m: dict[str, Any]) -> str:
        return str(m["src"] if m["direction"] == "in" else m["dst"])

    for m in caller[:1]:
        column("trunk", m["trunk"] or far_end(m), far_end(m))
        column("edge", m["edge"])
    for m in legs:
        column("edge", m["edge"])
    for m in legs:
        column("trunk", m["trunk"] or far_end(m), far_end(m))
    arrows = []
    for m in ordered:
        trunk = column("trunk", m["trunk"] or far_end(m), far_end(m))
        edge = column("edge", m["edge"])
        src, dst = (trunk, edge) if m["direction"] == "in" else (edge, trunk)
        arrows.append(Arrow(src, dst, label(m), m["time_unix_us"], m))
    return Ladder(columns, arrows)


def render_text(ladder: Ladder) -> str:
    """The ladder as lines of text: a time, then the arrow between its two columns."""
    w, left = TEXT_COLUMN_WIDTH, TEXT_TIME_WIDTH + TEXT_COLUMN_WIDTH // 2
    width = left + w * max(len(ladder.columns) - 1, 0) + 1
    xs = [left + i * w for i in range(len(ladder.columns))]

    def centred(texts: list[str]) -> str:
        line = [" "] * (width + w)
        for x, text in zip(xs, texts, strict=True):
            text = text[: w - 2]
            start = max(0, x - len(text) // 2)
            line[start : start + len(text)] = text
        return "".join(line).rstrip()

    def blank() -> list[str]:
        line = [" "] * width
        for x in xs:
            line[x] = "│"
        return line

    lines = [
        centred([c.id for c in ladder.columns]),
        centred([c.address if c.address != c.id else "" for c in ladder.columns]),
        "".join(blank()).rstrip(),
    ]
    for arrow in ladder.arrows:
        line = blank()
        a, b = sorted((xs[arrow.src], xs[arrow.dst]))
        line[a + 1 : b] = "─" * (b - a - 1)
        if arrow.dst > arrow.src:
            line[b - 1] = ">"
        else:
            line[a + 1] = "<"
        text = f" {arrow.label[: b - a - 5]} "
        start = a + 1 + (b - a - 1 - len(text)) // 2
        line[start : start + len(text)] = text
        line[: len(arrow.time)] = arrow.time
        lines.append("".join(line).rstrip())
    return "\n".join(lines)
