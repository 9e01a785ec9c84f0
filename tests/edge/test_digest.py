"""Digest authentication through two running edges: a carrier that challenges our INVITE,
BYE and OPTIONS gets the trunk's credentials once per challenge (a wrong password: one
retry, then the call fails over, with the reason); a PBX whose trunk has `challenge: true`
must authenticate its INVITEs (stale nonces, replays, wrong passwords); the password
appears in no log line, call event or health record."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tandem.sip import Request, Response, make_response
from tandem.sip.digest import Authorization, Credentials, DigestClient, DigestServer, Verdict
from tests.edge.conftest import LOCAL, MakeSystem, System
from tests.edge.phones import SDP, Phone
from tests.edge.test_dns import health_when, leg_failures

REALM = "carrier.test"
PASSWORD = "Tr0ub4dor-and-3"  # what the carrier knows
CARRIER = DigestServer(REALM, b"carrier's own key, 32 bytes long")
CREDENTIALS = {"username": "tandem", "password_env": "TANDEM_TEST_GW1_PASSWORD"}


def challenge(phone: Phone, request: Request, addr: tuple[str, int], status: int = 401) -> None:
    """The carrier's 401 (or 407) to `request`."""
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    values = [(header, v) for v in CARRIER.challenges(time.time())]
    phone.send(make_response(request, status, to_tag="gw", headers=values), addr)


def verdict(request: Request, header: str = "authorization") -> Verdict:
    value = request.headers.get(header)
    assert value is not None, f"{request.method} without {header}"
    answer = Authorization.parse(value)
    assert answer.username == "tandem"
    return CARRIER.verify(answer, request.method, request.uri, PASSWORD, time.time())


def secrets_absent(caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    for text in (caplog.text, *texts):
        assert PASSWORD not in text and "wrong-password" not in text


async def test_a_carrier_challenge_to_invite_and_bye_is_answered(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tandem")
    monkeypatch.setenv("TANDEM_TEST_GW1_PASSWORD", PASSWORD)
    system = await make_system(gw1={"auth": CREDENTIALS})
    pbx, gw1 = system.pbx, system.gw1
    invite = pbx.invite(system.a, LOCAL)
    first, addr = await gw1.request("INVITE")
    challenge(gw1, first, addr, 407)
    second, addr = await gw1.request("INVITE")
    assert second.cseq.number == first.cseq.number + 1 and second.call_id == first.call_id
    assert verdict(second, "proxy-authorization") is Verdict.OK
    gw1.answer(second, 200, addr, body=SDP)
    answer = await pbx.response(200)
    pbx.in_dialog(invite, answer, "ACK", system.a)
    ack, _ = await gw1.request("ACK")
    assert ack.headers.get("proxy-authorization") == second.headers.get("proxy-authorization")
    pbx.in_dialog(invite, answer, "BYE", system.a)
    bye, addr = await gw1.request("BYE")
    challenge(gw1, bye, addr)
    bye_again, addr = await gw1.request("BYE")
    assert bye_again.cseq.number == bye.cseq.number + 1
    assert verdict(bye_again) is Verdict.OK
    gw1.answer(bye_again, 200, addr)
    assert (await pbx.final("BYE")).status == 200
    events = await system.call_events()
    assert leg_failures(events) == []
    secrets_absent(caplog, *(str(e) for e in events))


async def test_a_wrong_password_is_tried_once_then_the_call_fails_over(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tandem")
    monkeypatch.setenv("TANDEM_TEST_GW1_PASSWORD", "wrong-password")
    system = await make_system(gw1={"auth": CREDENTIALS})
    pbx, gw1, gw2 = system.pbx, system.gw1, system.gw2
    pbx.invite(system.a, LOCAL)
    first, addr = await gw1.request("INVITE")
    challenge(gw1, first, addr)
    second, addr = await gw1.request("INVITE")
    assert verdict(second) is Verdict.WRONG
    challenge(gw1, second, addr)  # refused again: tandem gives up on gw1
    out, addr2 = await gw2.request("INVITE")
    gw2.answer(out, 200, addr2, body=SDP)
    assert (await pbx.final()).status == 200
    assert await gw1.silent(lambda m: isinstance(m, Request) and m.method == "INVITE", 0.5)
    events = await system.call_events(last="answered")
    [failed] = leg_failures(events)
    assert (failed.trunk, failed.failure, failed.received_status) == ("gw1", "auth", 401)
    assert (
        failed.reason == "auth: digest authentication failed: 401 Unauthorized: credentials refused"
    )
    assert "to trunk gw1 failed (auth): digest authentication failed" in caplog.text
    secrets_absent(caplog, *(str(e) for e in events))


async def test_a_probe_answers_the_challenge_and_refused_credentials_put_the_trunk_down(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tandem")
    monkeypatch.setenv("TANDEM_TEST_GW1_PASSWORD", PASSWORD)
    monkeypatch.setenv("TANDEM_TEST_GW2_PASSWORD", "wrong-password")
    system = await make_system(
        gw1={"auth": CREDENTIALS, "options_interval_s": 1.0},
        gw2={
            "auth": CREDENTIALS | {"password_env": "TANDEM_TEST_GW2_PASSWORD"},
            "options_interval_s": 1.0,
        },
    )
    for phone in (system.gw1, system.gw2):
        probe, addr = await phone.request("OPTIONS", within=5)
        challenge(phone, probe, addr)
        again, addr = await phone.request("OPTIONS")
        if verdict(again) is Verdict.OK:
            phone.answer(again, 200, addr)
        else:
            challenge(phone, again, addr)
    good = await health_when(system, "gw1", lambda h: h.reason == "200 OK")
    bad = await health_when(system, "gw2", lambda h: not h.up)
    assert good.up
    assert bad.reason == "auth: 401 Unauthorized: credentials refused"
    assert "trunk gw2 is down (auth: 401 Unauthorized: credentials refused)" in caplog.text
    secrets_absent(caplog, str(good), str(bad))


async def test_an_unset_password_is_said_and_the_challenge_fails_the_call_over(
    make_system: MakeSystem, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tandem")
    system = await make_system(gw1={"auth": CREDENTIALS | {"password_env": "TANDEM_TEST_UNSET"}})
    system.pbx.invite(system.a, LOCAL)
    first, addr = await system.gw1.request("INVITE")
    challenge(system.gw1, first, addr)
    out, addr = await system.gw2.request("INVITE")
    system.gw2.answer(out, 486, addr)
    assert (await system.pbx.final()).status == 486
    assert "environment variable TANDEM_TEST_UNSET is not set" in caplog.text
    [gw1, _] = leg_failures(await system.call_events())
    assert gw1.failure == "auth" and "no credentials" in gw1.reason


PBX_PASSWORD = "pbx-s3cret"
PBX_AUTH = {"username": "hq", "password_env": "TANDEM_TEST_PBX_PASSWORD", "challenge": True}


async def challenged_pbx(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch
) -> tuple[System, Request, Response]:
    monkeypatch.setenv("TANDEM_TEST_PBX_PASSWORD", PBX_PASSWORD)
    system = await make_system(pbx={"auth": PBX_AUTH | {"realm": "tandem.test"}})
    invite = system.pbx.invite(system.a, LOCAL)
    refused = await system.pbx.final()
    system.pbx.ack_final(invite, refused, system.a)
    assert refused.status == 401
    return system, invite, refused


def answered(invite: Request, refused: Response, password: str = PBX_PASSWORD) -> tuple[str, str]:
    return DigestClient(Credentials("hq", password)).answer(refused, invite)


async def test_a_pbx_that_must_authenticate_is_challenged_then_admitted(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, invite, refused = await challenged_pbx(make_system, monkeypatch)
    challenges = refused.headers.get_all("www-authenticate")
    assert [c.split("algorithm=")[1].split(",")[0] for c in challenges] == ["SHA-256", "MD5"]
    assert all('realm="tandem.test"' in c and 'qop="auth"' in c for c in challenges)
    assert await system.gw1.silent(lambda m: True, 0.3)  # no call before it authenticates
    system.pbx.again(invite, system.a, answered(invite, refused))
    out, addr = await system.gw1.request("INVITE")
    assert "authorization" not in out.headers  # the caller's credentials stay on its side
    system.gw1.answer(out, 200, addr, body=SDP)
    assert (await system.pbx.response(200)).status == 200


async def test_a_wrong_pbx_password_is_refused(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tandem")
    system, invite, refused = await challenged_pbx(make_system, monkeypatch)
    system.pbx.again(invite, system.a, answered(invite, refused, "guess"))
    final = await system.pbx.final()
    assert final.status == 403
    assert "trunk pbx: digest credentials of user 'hq' refused" in caplog.text
    assert await system.gw1.silent(lambda m: True, 0.3)
    secrets_absent(caplog)
    assert PBX_PASSWORD not in caplog.text and "guess" not in caplog.text


async def test_a_stale_nonce_and_a_replayed_count_are_challenged_again(
    make_system: MakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, invite, _ = await challenged_pbx(make_system, monkeypatch)
    system.edge_a.inbound.challengers["pbx"].nonce_ttl_s = 0.3
    # a nonce issued now, left to expire
    second = system.pbx.again(invite, system.a)
    fresh = await system.pbx.final()
    system.pbx.ack_final(second, fresh, system.a)
    await asyncio.sleep(0.5)
    credentials = answered(second, fresh)
    third = system.pbx.again(second, system.a, credentials)
    stale = await system.pbx.final()
    system.pbx.ack_final(third, stale, system.a)
    assert stale.status == 401 and "stale=true" in (stale.headers.get("www-authenticate") or "")
    # a good answer, then the same answer again (same nonce, same nc): a replay
    system.edge_a.inbound.challengers["pbx"].nonce_ttl_s = 300
    fourth = system.pbx.again(third, system.a)
    challenged = await system.pbx.final()
    system.pbx.ack_final(fourth, challenged, system.a)
    good = answered(fourth, challenged)
    system.pbx.again(fourth, system.a, good)
    out, addr = await system.gw1.request("INVITE")
    system.gw1.answer(out, 486, addr)
    busy = await system.pbx.final()
    assert busy.status == 486
    replay = system.pbx.invite(system.a, LOCAL, headers=[good])
    replayed = await system.pbx.final()
    system.pbx.ack_final(replay, replayed, system.a)
    assert replayed.status == 401 and "stale" not in (
        replayed.headers.get("www-authenticate") or ""
    )
