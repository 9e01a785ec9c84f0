"""Call transfer between three sims: REFER (RFC 3515), blind and with Replaces (RFC 3891).

hq's phone A calls gw (B); B transfers A to branch's phone C. A places the new call
itself, straight to C (the Refer-To names C's address: gw's trunk).
"""

from __future__ import annotations

from tandem.sim.views import CallView
from tests.sim.calls import call_up, connected, first, hang_up, talking
from tests.sim.conftest import Trio


def the_new_call(trio: Trio, replaced: CallView) -> CallView:
    new = trio.hq.call(replaced.replaced_by)
    assert new.replaces == replaced.id and new.direction == "outbound"
    return new


def test_blind_transfer_connects_the_caller_to_the_target_and_ends_the_transferor(
    trio: Trio,
) -> None:
    a_b, b_a = call_up(trio.hq, trio.gw, "0100", "+14255551234")

    trio.gw.transfer(b_a, to="+12065550150")

    # B: 202 (pjsua says "100 Accepted"), NOTIFYs, a final 200; then B hangs up
    done = trio.gw.wait_call(b_a, lambda c: c.ended, "the transferor leaving")
    assert done.transfer[0].status == 100
    assert (done.transfer[-1].status, done.transfer[-1].final) == (200, True)
    assert not any(t.final for t in done.transfer[:-1])
    assert done.ended_by == "local"
    referred = trio.hq.wait_call(a_b, lambda c: c.ended, "BYE from the transferor")
    assert referred.ended_by == "remote"
    assert referred.referred_to.startswith("sip:+12065550150@")
    assert referred.replaced_by
    a_c = the_new_call(trio, referred)
    assert a_c.called == "+12065550150" and a_c.local == "0100"

    c_a = trio.branch.wait_inbound(lambda c: c.sip_call_id == a_c.sip_call_id)
    talking(trio.hq, a_c.id, trio.branch, c_a.id)
    assert c_a.local == "0150" and c_a.remote == "0100"
    invite = trio.branch.sip_messages(c_a.id)[0]
    assert invite.header("Referred-By")[0].startswith("<sip:+14255551234@")
    first(trio.gw.sip_messages(b_a), "out", "REFER")

    hang_up(trio.branch, c_a.id, trio.hq, a_c.id)


def test_attended_transfer_replaces_the_consultation_call(trio: Trio) -> None:
    a_b, b_a = call_up(trio.hq, trio.gw, "0101", "+14255551235")
    b_c, c_b = call_up(trio.gw, trio.branch, "14255551235", "+12065550151")  # consultation
    consultation = trio.gw.call(b_c)

    trio.gw.transfer(b_a, replaces=b_c)

    # C: A's INVITE names the consultation's dialog; C takes it and ends that one (BYE)
    replaced = trio.branch.wait_call(c_b, lambda c: c.ended, "the replaced call's end")
    assert replaced.ended_by == "local" and replaced.last_status == 410  # pjsua: Gone
    c_a = trio.branch.call(replaced.replaced_by)
    assert c_a.replaces == c_b and c_a.local == "0151"
    invite = trio.branch.sip_messages(c_a.id)[0]
    assert invite.header("Replaces")[0].startswith(consultation.sip_call_id + ";")
    assert "replaces" in invite.header("Require")
    # B: its consultation ended by C, its first call by itself once the NOTIFY said 200
    assert trio.gw.wait_call(b_c, lambda c: c.ended, "BYE from C").ended_by == "remote"
    done = trio.gw.wait_call(b_a, lambda c: c.ended, "the transferor leaving")
    assert (done.transfer[-1].status, done.transfer[-1].final) == (200, True)

    referred = trio.hq.wait_call(a_b, lambda c: c.ended, "BYE from the transferor")
    assert "Replaces=" in referred.referred_to
    a_c = the_new_call(trio, referred)
    assert a_c.sip_call_id == c_a.sip_call_id
    talking(trio.hq, a_c.id, trio.branch, c_a.id)

    hang_up(trio.hq, a_c.id, trio.branch, c_a.id)


def test_failed_transfer_is_reported_and_the_call_stays_up(trio: Trio) -> None:
    a_b, b_a = call_up(trio.hq, trio.gw, "0100", "+14255551236")

    trio.gw.transfer(b_a, to="+12065550999")  # branch has no such extension: 404

    failed = trio.gw.wait_call(b_a, lambda c: any(t.final for t in c.transfer), "final NOTIFY")
    assert (failed.transfer[-1].status, failed.transfer[-1].final) == (404, True)
    referred = trio.hq.call(a_b)
    tried = trio.hq.call(referred.replaced_by)
    assert tried.ended and tried.last_status == 404 and tried.ended_by == "remote"
    # nobody hung up: A and B still talk
    talking(trio.hq, a_b, trio.gw, b_a)
    assert trio.gw.call(b_a).state == "confirmed" and connected(trio.hq.call(a_b))

    hang_up(trio.gw, b_a, trio.hq, a_b)
