"""Geometry for the call page: the SIP ladder as SVG coordinates, the trace as a waterfall."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from tandem.ladder import Ladder, clock

TIME_W = 120  # the time column on the left
COLUMN_W = 210
HEADER_H = 56
ROW_H = 34
LEG_COLOURS = ("#2563eb", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0f766e")


@dataclass(frozen=True, slots=True)
class SvgColumn:
    x: int
    title: str
    subtitle: str
    kind: str


@dataclass(frozen=True, slots=True)
class SvgArrow:
    index: int
    x1: int
    x2: int
    y: int
    label: str
    time: str
    delta: str  # since the first message
    colour: str
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LadderSvg:
    width: int
    height: int
    columns: list[SvgColumn]
    arrows: list[SvgArrow]


def ladder_svg(ladder: Ladder) -> LadderSvg:
    columns = [
        SvgColumn(
            TIME_W + COLUMN_W // 2 + i * COLUMN_W,
            c.id,
            c.address if c.address != c.id else ("edge" if c.kind == "edge" else ""),
            c.kind,
        )
        for i, c in enumerate(ladder.columns)
    ]
    legs: dict[str, str] = {"": LEG_COLOURS[0]}
    first = ladder.arrows[0].time_unix_us if ladder.arrows else 0
    arrows = []
    for i, arrow in enumerate(ladder.arrows):
        leg = arrow.message["leg_id"]
        colour = legs.setdefault(leg, LEG_COLOURS[len(legs) % len(LEG_COLOURS)])
        arrows.append(
            SvgArrow(
                index=i,
                x1=columns[arrow.src].x,
                x2=columns[arrow.dst].x,
                y=HEADER_H + i * ROW_H + ROW_H // 2 + 6,
                label=arrow.label,
                time=arrow.time,
                delta=f"+{(arrow.time_unix_us - first) / 1000:.1f} ms",
                colour=colour,
                message=arrow.message,
            )
        )
    width = TIME_W + COLUMN_W * max(len(columns), 1)
    return LadderSvg(width, HEADER_H + ROW_H * len(arrows) + ROW_H, columns, arrows)


@dataclass(frozen=True, slots=True)
class Bar:
    depth: int
    name: str
    where: str  # service and edge
    left_pct: float
    width_pct: float
    duration_ms: float
    error: bool
    attributes: dict[str, Any]


def waterfall(spans: list[dict[str, Any]]) -> list[Bar]:
    """The trace's spans depth first (children by start time), placed on one time axis."""
    if not spans:
        return []
    start = min(s["start_ns"] for s in spans)
    total = max(max(s["end_ns"] for s in spans) - start, 1)
    ids = {s["span_id"] for s in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    for span in sorted(spans, key=lambda s: s["start_ns"]):
        parent = span["parent_id"] if span["parent_id"] in ids else ""
        children.setdefault(parent, []).append(span)
    bars: list[Bar] = []

    def walk(span: dict[str, Any], depth: int) -> None:
        attrs = span["attributes"]
        where = " ".join(str(p) for p in (span["service"], attrs.get("tandem.edge")) if p)
        bars.append(
            Bar(
                depth=depth,
                name=span["name"],
                where=where,
                left_pct=100 * (span["start_ns"] - start) / total,
                width_pct=max(100 * (span["end_ns"] - span["start_ns"]) / total, 0.3),
                duration_ms=(span["end_ns"] - span["start_ns"]) / 1e6,
                error=span["status"] == "error",
                attributes={k: v for k, v in attrs.items() if v not in ("", None)},
            )
        )
        for child in children.get(span["span_id"], []):
            walk(child, depth + 1)

    for root in children.get("", []):
        walk(root, 0)
    return bars


def when(unix_ms: int | None) -> str:
    """A record's time for a table: date and UTC clock, or nothing."""
    if not unix_ms:
        return ""
    day = datetime.datetime.fromtimestamp(unix_ms / 1000, datetime.UTC).strftime("%Y-%m-%d")
    return f"{day} {clock(unix_ms * 1000)}"
