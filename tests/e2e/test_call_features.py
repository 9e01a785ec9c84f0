"""What real PBXs and gateways do every day, through tandem, with real user agents (pjsua2)
and real RTP: reliable early media (RFC 3262), blind and attended transfer (RFC 3515, RFC
3891) handled by tandem, and a session that expires when one side vanishes (RFC 4028).

The sims: hq requires 100rel on every call it places; gw1 answers after a reliable 183 with
SDP (early media); branch's phones keep a 90 s session timer and refresh it themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tandem.sim.client import SimClient
from tests.e2e.conftest import World, running_world
from tests.e2e.test_calls import call_up
from tests.sim.calls import connected, flowing

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    sims = {
        "hq": {"prack": "mandatory"},
        "gw1": {"progress": 183, "prack": "optional", "answer_after_s": 2.0},
        "branch": {"session_timer": "always", "session_expires_s": 90, "min_se_s": 90},
    }
    with running_world(tmp_path_factory.mktemp("features"), sims=sims) as world:
        yield world


def cdrs(world: World, call_id: str, within_s: float = 10.0) -> list[dict[str, object]]:
    """The CDRs of a call and of the calls transferred out of it, once written."""
    api = world.tandem.config["callstate"]["api"]
    deadline = time.monotonic() + within_s
    while True:
        answer = httpx.get(f"http://{api}/v1/cdrs", params={"limit": 1000}, timeout=5).json()
        found = [c for c in answer["cdrs"] if call_id in (c["call_id"], c["transferred_from"])]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def tandem_call_id(world: World, sip_call_id: str) -> str:
    """tandem's id of the call whose caller leg has this SIP Call-ID (from the CDRs)."""
    api = world.tandem.config["callstate"]["api"]
    calls = httpx.get(f"http://{api}/v1/calls", timeout=5).json()["calls"]
    return next(c["call_id"] for c in calls if c["sip_call_id"] == sip_call_id)


def test_a_reliable_183_carries_early_media_both_ways_then_answers(features: World) -> None:
    hq, gw1 = features.hq, features.gw1
    out = hq.place_call("0100", "+14255551201")
    early = hq.wait_call(out.id, lambda c: c.state == "early", "the 183")
    inbound = gw1.wait_inbound(lambda c: c.called.endswith("5551201"), "the call at gw1")
    assert early.state == "early"
    hq.wait_call(out.id, lambda c: c.early_rtp.rx_packets > 10, "early media at the caller")
    gw1.wait_call(inbound.id, lambda c: c.early_rtp.rx_packets > 10, "early media at gw1")
    hq.wait_call(out.id, connected, "the answer")
    # each leg did its own reliability: tandem's 183 to hq, and its PRACK to gw1's
    reliable = [m for m in hq.sip_messages(out.id) if m.direction == "in" and m.status == 183]
    assert reliable and reliable[0].header("Require") == ["100rel"]
    assert reliable[0].header("RSeq")
    got = [m for m in gw1.sip_messages(inbound.id) if m.direction == "in" and m.method == "PRACK"]
    assert got and got[0].header("RAck")[0].endswith(" INVITE")
    hq.wait_call(out.id, flowing(), "RTP both ways")
    hq.hangup(out.id)
    gw1.wait_call(inbound.id, lambda c: c.ended, "BYE through tandem")


def wait_transferred(transferor: SimClient, call: str) -> None:
    done = transferor.wait_call(call, lambda c: c.ended, "the transferor leaving")
    assert done.transfer and (done.transfer[-1].status, done.transfer[-1].final) == (200, True)


def test_a_blind_transfer_by_the_pstn_side(features: World) -> None:
    """gw1 (B) transfers hq's caller (A) to branch's 0150 (C): tandem routes the Refer-To
    from gw1's trunk, calls C, points A at C by re-INVITE and ends B's leg."""
    hq, gw1, branch = features.hq, features.gw1, features.branch
    a_b, b_a = call_up(hq, gw1, "0100", "+14255551202")
    first_id = tandem_call_id(features, hq.call(a_b).sip_call_id)

    gw1.transfer(b_a, to="+12065550150")

    wait_transferred(gw1, b_a)
    c_a = branch.wait_inbound(lambda c: c.state != "disconnected", "the transfer target")
    branch.wait_call(c_a.id, connected, "C answers")
    before = hq.call(a_b)
    assert connected(before)  # A's own call goes on, with C now at the far end
    hq.wait_call(a_b, flowing(before), "A hears C")
    branch.wait_call(c_a.id, flowing(), "C hears A")
    assert branch.call(c_a.id).remote == "0100"  # the transferee's number, as it sent it

    hq.hangup(a_b)
    branch.wait_call(c_a.id, lambda c: c.ended, "BYE through tandem")
    records = cdrs(features, first_id)
    first = next(r for r in records if r["call_id"] == first_id)
    assert first["end_reason"] == "transferred" and first["transferred_to"]
    second = next(r for r in records if r["call_id"] == first["transferred_to"])
    assert second["transferred_from"] == first_id
    assert second["egress_trunk"] == "pbx-branch"


def test_an_attended_transfer_with_replaces(features: World) -> None:
    """gw1 (B) talks to A (hq 0101), consults C (branch 0151) through tandem, then transfers
    A with Replaces: C's consultation dialog is replaced, A and C talk."""
    hq, gw1, branch = features.hq, features.gw1, features.branch
    a_b, b_a = call_up(hq, gw1, "0101", "+14255551203")
    b_c, c_b = call_up(gw1, branch, "14255551203", "+12065550151")  # the consultation

    gw1.transfer(b_a, replaces=b_c)

    wait_transferred(gw1, b_a)
    replaced = branch.wait_call(c_b, lambda c: c.ended, "the consultation replaced")
    c_a = branch.call(replaced.replaced_by)
    assert c_a.replaces == c_b
    invite = branch.sip_messages(c_a.id)[0]
    assert invite.header("Replaces")
    branch.wait_call(c_a.id, connected, "C on the new dialog")
    gw1.wait_call(b_c, lambda c: c.ended, "the consultation's end at B")
    hq.wait_call(a_b, flowing(hq.call(a_b)), "A hears C")
    branch.wait_call(c_a.id, flowing(), "C hears A")
    hq.hangup(a_b)
    branch.wait_call(c_a.id, lambda c: c.ended, "BYE through tandem")


def test_a_session_whose_refresher_vanishes_expires(features: World) -> None:
    """branch's phone refreshes every 45 s (90 s sessions) and vanishes: tandem ends the call
    both ways before the session would run out, and says why."""
    branch, gw1 = features.branch, features.gw1
    out = branch.place_call("0150", "+14255551204")
    branch.wait_call(out.id, connected, "answer")
    inbound = gw1.wait_inbound(lambda c: c.called.endswith("5551204"), "the call at gw1")
    gw1.wait_call(inbound.id, connected, "answer")
    first = branch.sip_messages(out.id)[0]
    assert first.header("Session-Expires")  # the phone asked for a session timer
    call_id = tandem_call_id(features, branch.call(out.id).sip_call_id)
    branch.vanish()
    try:
        ended = gw1.wait_call(inbound.id, lambda c: c.ended, "BYE from tandem", timeout_s=75)
        assert ended.ended_by == "remote"
    finally:
        branch.reappear()
    (record,) = cdrs(features, call_id)
    assert record["end_reason"] == "session_expired"
