"""Session timers (RFC 4028) between two sims, and a sim that vanishes without a BYE."""

from __future__ import annotations

import time
from pathlib import Path

from tests.sim.calls import call_up, first, hang_up
from tests.sim.conftest import GATEWAY_HOST, PBX_HOST, Trio, hq, running, sim, sip_address

QUIET_S = 1.0  # a BYE over loopback takes milliseconds; a sim that heard it ends at once
SESSION_EXPIRES_S = 90  # the least RFC 4028 and PJSIP allow
# the refreshee ends the session at SE - max(32, SE/3) (RFC 4028 10, PJSIP sip_timer.c)
EXPIRES_AFTER_S = SESSION_EXPIRES_S - max(32, SESSION_EXPIRES_S // 3)


def test_session_timer_is_negotiated_in_the_invite_and_its_answer(trio: Trio) -> None:
    out, inbound = call_up(trio.hq, trio.gw, "0100", "+14255551240")

    invite = trio.gw.sip_messages(inbound)[0]
    assert invite.header("Session-Expires") == ["120"]
    assert invite.header("Min-SE") == ["90"]
    assert "timer" in invite.header("Supported")
    ok = first(trio.hq.sip_messages(out), "in", "INVITE", 200)
    assert ok.header("Session-Expires") == ["120;refresher=uac"]
    assert ok.header("Require") == ["timer"]

    hang_up(trio.hq, out, trio.gw, inbound)

    # branch keeps pjsua's default (inactive): no timers offered
    out, inbound = call_up(trio.branch, trio.gw, "0150", "+14255551241")
    invite = trio.gw.sip_messages(inbound)[0]
    assert not invite.header("Session-Expires")
    assert "timer" not in invite.header("Supported")
    hang_up(trio.branch, out, trio.gw, inbound)


def test_a_vanished_sim_hears_nothing_until_it_reappears(trio: Trio) -> None:
    out, inbound = call_up(trio.hq, trio.gw, "0100", "+14255551242")

    assert trio.gw.vanish().vanished_at is not None
    try:
        trio.hq.hangup(out)  # the BYE waits, unread, in gw's socket
        assert trio.hq.wait_call(out, lambda c: c.ended, "hangup").ended_by == "local"
        time.sleep(QUIET_S)
        assert trio.gw.call(inbound).state == "confirmed"
        refused = trio.gw.http.post(f"/v1/calls/{inbound}/hangup")
        assert refused.status_code == 409 and "vanished" in refused.text
        assert trio.gw.http.get("/v1/sip").json()["vanished_at"] is not None
        back_at = time.time()
    finally:
        assert trio.gw.reappear().vanished_at is None

    ended = trio.gw.wait_call(inbound, lambda c: c.ended, "the BYE that waited")
    assert ended.ended_by == "remote"
    assert first(trio.gw.sip_messages(inbound), "in", "BYE").at >= back_at


def test_session_expires_when_the_refresher_vanishes(tmp_path: Path) -> None:
    """hq (the caller, so the refresher) vanishes; gw ends the session with a BYE once no
    refresh came: EXPIRES_AFTER_S (60 s) after the answer, PJSIP's floor."""
    hq_sip, gw_sip = sip_address(PBX_HOST), sip_address(GATEWAY_HOST)
    timers = {"session_timer": "optional", "session_expires_s": SESSION_EXPIRES_S}
    config = {
        "pbxs": [hq(hq_sip, gw_sip, **timers)],
        "gateways": [sim("gw", gw_sip, hq_sip, **timers)],
    }
    with running(tmp_path, config) as sims:
        caller, callee = sims["hq"], sims["gw"]
        out, inbound = call_up(caller, callee, "0100", "+14255551243")
        refresher = first(caller.sip_messages(out), "in", "INVITE", 200)
        assert refresher.header("Session-Expires") == [f"{SESSION_EXPIRES_S};refresher=uac"]
        answered_at = callee.call(inbound).answered_at
        assert answered_at is not None

        caller.vanish()
        try:
            sent = callee.wait_message(
                inbound,
                lambda m: m.direction == "out" and m.method == "BYE",
                "the BYE of an expired session",
                timeout_s=EXPIRES_AFTER_S + 20,
            )
            assert sent.header("Reason") == ['SIP ;cause=408 ;text="No session refresh received."']
            assert EXPIRES_AFTER_S - 2 <= sent.at - answered_at <= EXPIRES_AFTER_S + 10
            assert callee.call(inbound).state == "confirmed"  # pjsua awaits the BYE's answer
            assert not [m for m in callee.sip_messages(inbound) if m.method == "UPDATE"]
            assert caller.call(out).state == "confirmed"  # it heard nothing
            back_at = time.time()
        finally:
            caller.reappear()

        # back, the caller reads the BYE, or its own overdue timers end the call first
        gone = caller.wait_call(out, lambda c: c.ended, "the end of the call, once back")
        assert gone.ended_at is not None and gone.ended_at >= back_at
        expired = callee.wait_call(inbound, lambda c: c.ended, "the BYE's answer")
        assert expired.ended_by == "local"
        assert (expired.last_status, expired.reason) == (408, "No session refresh received.")
