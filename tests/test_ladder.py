"""A call's ladder from its captured messages: the columns in the order the call crosses them,
one arrow per message by time, and the text sngrep would draw."""

from __future__ import annotations

from typing import Any

from tandem.ladder import build, render_text

T0 = 1_700_000_000_000_000  # microseconds


def message(
    at_ms: int, edge: str, direction: str, trunk: str, leg: str, first_line: str, sdp: bool = False
) -> dict[str, Any]:
    peers = {"pbx": "127.0.0.2:5060", "gw1": "127.0.0.3:5060", "gw2": "127.0.0.4:5060"}
    status = int(first_line.split()[0]) if first_line[0].isdigit() else 0
    head = "INVITE sip:x SIP/2.0" if not status else f"SIP/2.0 {first_line}"
    return {
        "time_unix_us": T0 + at_ms * 1000,
        "edge": edge,
        "direction": direction,
        "transport": "udp",
        "src": peers[trunk] if direction == "in" else "127.0.0.1:5060",
        "dst": "127.0.0.1:5060" if direction == "in" else peers[trunk],
        "trunk": trunk,
        "leg_id": leg,
        "method": "" if status else first_line,
        "status": status,
        "reason": first_line.partition(" ")[2] if status else "",
        "text": head + ("\r\nContent-Type: application/sdp\r\n\r\nv=0" if sdp else "\r\n\r\n"),
    }


def test_a_failover_call_crosses_the_caller_both_edges_and_both_gateways() -> None:
    messages = [  # out of order on purpose: two edges publish independently
        message(30, "edge-b", "in", "gw2", "leg2", "200 OK", sdp=True),
        message(0, "edge-a", "in", "pbx", "", "INVITE", sdp=True),
        message(1, "edge-a", "out", "pbx", "", "100 Trying"),
        message(5, "edge-b", "out", "gw1", "leg1", "INVITE", sdp=True),
        message(10, "edge-b", "in", "gw1", "leg1", "503 Service Unavailable"),
        message(20, "edge-b", "out", "gw2", "leg2", "INVITE", sdp=True),
        message(31, "edge-a", "out", "pbx", "", "200 OK", sdp=True),
    ]
    ladder = build(messages)
    assert [(c.kind, c.id) for c in ladder.columns] == [
        ("trunk", "pbx"),
        ("edge", "edge-a"),
        ("edge", "edge-b"),
        ("trunk", "gw1"),
        ("trunk", "gw2"),
    ]
    assert ladder.columns[0].address == "127.0.0.2:5060"
    assert [(a.src, a.dst, a.label) for a in ladder.arrows] == [
        (0, 1, "INVITE (SDP)"),
        (1, 0, "100 Trying"),
        (2, 3, "INVITE (SDP)"),
        (3, 2, "503 Service Unavailable"),
        (2, 4, "INVITE (SDP)"),
        (4, 2, "200 OK (SDP)"),
        (1, 0, "200 OK (SDP)"),
    ]

    lines = render_text(ladder).splitlines()
    assert lines[0].split() == ["pbx", "edge-a", "edge-b", "gw1", "gw2"]
    invite, trying = lines[3], lines[4]
    assert invite.startswith("22:13:20.000") and "──> │" not in invite
    assert invite.index("INVITE (SDP)") < invite.index(">") < invite.index("│", invite.index(">"))
    assert trying.index("<") < trying.index("100 Trying")
    failover = lines[7]  # the INVITE to gw2 crosses gw1's lifeline on its way
    assert "INVITE (SDP)" in failover and failover.endswith("─>│")
    assert failover.count("│") == 4  # pbx, edge-a, edge-b and gw2: gw1's is crossed


def test_a_call_between_two_trunks_of_one_edge_has_one_edge_column() -> None:
    ladder = build(
        [
            message(0, "edge-a", "in", "pbx", "", "INVITE"),
            message(2, "edge-a", "out", "gw1", "leg1", "INVITE"),
            message(4, "edge-a", "in", "gw1", "leg1", "180 Ringing"),
            message(5, "edge-a", "out", "pbx", "", "180 Ringing"),
        ]
    )
    assert [c.id for c in ladder.columns] == ["pbx", "edge-a", "gw1"]
    assert [(a.src, a.dst) for a in ladder.arrows] == [(0, 1), (1, 2), (2, 1), (1, 0)]
    assert build([]).columns == [] and render_text(build([])).strip() == ""
