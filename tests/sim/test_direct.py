"""A PBX phone and a PSTN gateway calling each other directly: real SIP, RTP and DTMF."""

from __future__ import annotations

import time

import pytest

from tests.sim.calls import call_up, connected, flowing, hang_up
from tests.sim.conftest import Direct

QUIET_S = 0.6  # long enough for 30 packets at 20 ms: silence means nobody sends


def test_phone_calls_gateway_and_audio_flows_both_ways(direct: Direct) -> None:
    out, inbound = call_up(direct.pbx, direct.gateway, "0100", "+14255551234")

    at_pbx = direct.pbx.wait_call(out, flowing(), "RTP both ways")
    at_gw = direct.gateway.wait_call(inbound, flowing(), "RTP both ways")
    assert at_gw.called == "+14255551234" and at_gw.remote == "0100"
    assert at_pbx.last_status == 200
    assert at_pbx.rtp.tx_bytes > 0 and at_gw.rtp.rx_bytes > 0

    hang_up(direct.pbx, out, direct.gateway, inbound)
    ended = direct.pbx.call(out)
    assert ended.rtp.rx_packets >= at_pbx.rtp.rx_packets  # counters survive the call


def test_gateway_calls_phone_by_full_number_and_callee_hangs_up(direct: Direct) -> None:
    out, inbound = call_up(direct.gateway, direct.pbx, "12065550199", "+14255550101")

    at_pbx = direct.pbx.wait_call(inbound, flowing(), "RTP both ways")
    direct.gateway.wait_call(out, flowing(), "RTP both ways")
    assert at_pbx.local == "0101" and at_pbx.remote == "12065550199"

    hang_up(direct.pbx, inbound, direct.gateway, out)
    assert direct.gateway.call(out).state == "disconnected"


def test_dtmf_rfc4733_arrives_both_ways(direct: Direct) -> None:
    out, inbound = call_up(direct.pbx, direct.gateway, "0100", "+14255551235")

    direct.pbx.send_dtmf(out, "159#")
    got = direct.gateway.wait_call(inbound, lambda c: len(c.digits) >= 4, "4 digits")
    assert got.digits == "159#"
    assert {d.method for d in got.dtmf_received} == {"rfc4733"}

    direct.gateway.send_dtmf(inbound, "*07")
    got = direct.pbx.wait_call(out, lambda c: len(c.digits) >= 3, "3 digits")
    assert got.digits == "*07"

    hang_up(direct.gateway, inbound, direct.pbx, out)


def test_hold_stops_the_held_side_and_resume_restarts_audio(direct: Direct) -> None:
    out, inbound = call_up(direct.pbx, direct.gateway, "0100", "+14255551236")
    direct.gateway.wait_call(inbound, flowing(), "RTP both ways")

    direct.pbx.hold(out)
    held = direct.pbx.wait_call(out, lambda c: c.media == "local_hold", "local hold")
    assert held.media_direction == "sendonly"
    far = direct.gateway.wait_call(inbound, lambda c: c.media == "remote_hold", "remote hold")
    assert far.media_direction == "recvonly"
    # the held side sends nothing (recvonly) while the holder keeps sending
    time.sleep(QUIET_S)
    far_before = direct.gateway.call(inbound)
    time.sleep(QUIET_S)
    far_after = direct.gateway.call(inbound)
    assert far_after.rtp.tx_packets == far_before.rtp.tx_packets
    assert far_after.rtp.rx_packets > far_before.rtp.rx_packets

    direct.pbx.resume(out)
    direct.pbx.wait_call(out, connected, "resume")
    resumed = direct.gateway.wait_call(inbound, connected, "resume")
    assert resumed.media_direction == "sendrecv"
    direct.gateway.wait_call(inbound, flowing(resumed), "RTP both ways after resume")
    direct.pbx.wait_call(out, flowing(direct.pbx.call(out)), "RTP both ways after resume")

    hang_up(direct.pbx, out, direct.gateway, inbound)


@pytest.mark.parametrize(("called", "status"), [("+14255550486", 486), ("+14255550503", 503)])
def test_gateway_rejects_by_number(direct: Direct, called: str, status: int) -> None:
    out = direct.pbx.place_call("0100", called)
    ended = direct.pbx.wait_call(out.id, lambda c: c.ended, "rejection")
    assert ended.last_status == status
    assert ended.rtp.rx_packets == 0
    rejected = direct.gateway.wait_inbound(lambda c: c.sip_call_id == out.sip_call_id)
    assert rejected.called == called


def test_pbx_rejects_unknown_extension_with_404(direct: Direct) -> None:
    out = direct.gateway.place_call("12065550199", "+14255550999")
    ended = direct.gateway.wait_call(out.id, lambda c: c.ended, "rejection")
    assert ended.last_status == 404


def test_ringing_without_answer_until_the_caller_gives_up(direct: Direct) -> None:
    out = direct.pbx.place_call("0100", "+14255550000")
    ringing = direct.pbx.wait_call(out.id, lambda c: c.state == "early", "ringing")
    assert ringing.last_status == 180
    inbound = direct.gateway.wait_inbound(lambda c: c.sip_call_id == out.sip_call_id)
    time.sleep(QUIET_S)
    assert direct.pbx.call(out.id).state == "early"  # nobody answers

    direct.pbx.hangup(out.id)  # CANCEL
    assert direct.pbx.wait_call(out.id, lambda c: c.ended, "cancel").last_status == 487
    assert direct.gateway.wait_call(inbound.id, lambda c: c.ended, "cancel").ended


def test_control_api_refuses_what_cannot_be_done(direct: Direct) -> None:
    http = direct.pbx.http
    assert http.get("/v1/calls/999").status_code == 404
    bad = http.post("/v1/calls", json={"calling": "0100", "called": "not a number"})
    assert bad.status_code == 422
    out = direct.pbx.place_call("0100", "+14255550486")
    direct.pbx.wait_call(out.id, lambda c: c.ended, "rejection")
    refused = http.post(f"/v1/calls/{out.id}/dtmf", json={"digits": "1"})
    assert refused.status_code == 409 and "ended" in refused.text
    assert http.post(f"/v1/calls/{out.id}/transfer", json={"to": "+1"}).status_code == 409
    both = {"to": "+12065550150", "replaces": "1"}
    assert http.post(f"/v1/calls/{out.id}/transfer", json=both).status_code == 422
    assert http.post(f"/v1/calls/{out.id}/transfer", json={}).status_code == 422

    ringing = direct.pbx.place_call("0100", "+14255550000")
    inbound = direct.gateway.wait_inbound(lambda c: c.sip_call_id == ringing.sip_call_id)
    assert http.post(f"/v1/calls/{ringing.id}/answer").status_code == 409  # not inbound
    answer = f"/v1/calls/{inbound.id}/answer"
    assert direct.gateway.http.post(answer, json={"code": 486}).status_code == 422
    direct.pbx.hangup(ringing.id)
    direct.gateway.wait_call(inbound.id, lambda c: c.ended, "CANCEL")
    assert direct.gateway.http.post(answer).status_code == 409  # too late


def test_control_api_shows_the_sims_settings_and_documents_them(direct: Direct) -> None:
    settings = direct.gateway.http.get("/v1/sim").json()
    assert settings["id"] == "gw" and settings["rules"][0] == {"pattern": "0486$", "reply": 486}
    assert (settings["prack"], settings["session_timer"], settings["progress"]) == (
        "not_used",
        "inactive",
        180,
    )
    schema = direct.pbx.http.get("/openapi.json").json()
    assert {"/v1/sip/vanish", "/v1/calls/{call_id}/transfer", "/v1/calls/{call_id}/sip"} <= set(
        schema["paths"]
    )
    fields = schema["components"]["schemas"]["Pbx"]["properties"]
    for name in ("progress", "prack", "session_timer", "session_expires_s", "min_se_s"):
        assert fields[name]["description"], name
