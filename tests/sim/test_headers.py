"""What a sim sends and what it reports of the INVITE that reached it, header by header."""

from __future__ import annotations

import pytest

from tests.sim.calls import connected, hang_up
from tests.sim.conftest import Trio

IDENTITY = {
    "P-Asserted-Identity": '"Front Desk" <sip:+14255550100@127.0.0.3;user=phone>',
    "Privacy": "id",
    "Diversion": "<sip:+14255550199@127.0.0.3>;reason=unconditional;counter=1",
    "History-Info": "<sip:+14255550199@127.0.0.3>;index=1, <sip:+12065550150@127.0.0.4>;index=1.1",
}


def test_an_anonymous_caller_with_asserted_identity_arrives_as_sent(trio: Trio) -> None:
    out = trio.gw.place_call("anonymous", "+12065550150", headers=IDENTITY)
    inbound = trio.branch.wait_inbound(lambda c: c.sip_call_id == out.sip_call_id)
    assert inbound.remote == "anonymous"

    invite = trio.branch.sip_messages(inbound.id)[0]
    assert invite.method == "INVITE" and invite.direction == "in"
    assert invite.start_line.startswith("INVITE sip:+12065550150@127.0.0.4:")
    (sender,) = invite.header("From")
    assert sender.startswith('"Anonymous" <sip:anonymous@anonymous.invalid>;tag=')
    for name in ("P-Asserted-Identity", "Privacy", "Diversion"):
        assert invite.header(name) == [IDENTITY[name]]
    assert invite.header("history-info") == [  # any case; a list header's values split
        "<sip:+14255550199@127.0.0.3>;index=1",
        "<sip:+12065550150@127.0.0.4>;index=1.1",
    ]
    assert invite.header("Supported") == ["replaces", "100rel", "timer", "norefersub"]
    assert invite.header("Session-Expires") == ["1800"]  # gw's timers: optional, default
    assert not invite.header("Require")

    trio.gw.wait_call(out.id, connected, "answer")
    hang_up(trio.gw, out.id, trio.branch, inbound.id)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"headers": {"From": "<sip:x@y>"}}, "pjsua's to write"),
        ({"headers": {"Bad Name": "1"}}, "not a header line"),
        ({"headers": {"Privacy": "id\r\nX-Injected: 1"}}, "not a header line"),
        ({"calling": "somebody"}, "calling"),
    ],
)
def test_place_call_refuses_headers_pjsua_writes_or_that_would_break_the_invite(
    trio: Trio, body: dict[str, object], reason: str
) -> None:
    refused = trio.gw.http.post("/v1/calls", json={"calling": "1", "called": "+1206", **body})
    assert refused.status_code == 422 and reason in refused.text
