"""The REGISTER client (tandem.sip.registration) against a registrar made of the real digest
server, on an explicit clock: every refresh, retry and backoff path, instantly."""

from __future__ import annotations

import random

import pytest

from tandem.sip import Request, Response, parse
from tandem.sip.digest import Authorization, Credentials, DigestServer, Verdict
from tandem.sip.registration import (
    BACKOFF_MAX_S,
    Changed,
    Registration,
    RegistrationError,
    Send,
    State,
)

AOR = "sip:+14255550100@carrier.test"
CONTACT = "sip:+14255550100@127.0.0.1:5061;transport=tls"
PASSWORD = "hunter2-secret"
T0 = 1_000_000.0


class Registrar:
    """carrier.test's registrar: digest on every REGISTER, as a carrier does."""

    def __init__(self, *, min_expires: int = 60, nonce_ttl_s: float = 300) -> None:
        self.digest = DigestServer("carrier.test", b"r" * 32, nonce_ttl_s=nonce_ttl_s)
        self.min_expires = min_expires
        self.bindings: dict[str, int] = {}

    def answer(self, request: Request, now: float, status: int = 401) -> Response:
        wire = Request(request.method, request.uri, request.headers)
        wire.headers.prepend("Via", "SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKreg")  # as sent
        assert parse(bytes(wire)) == wire  # a valid message
        header = "Authorization" if status == 401 else "Proxy-Authorization"
        value = request.headers.get(header)
        if value is None:
            return self._challenge(request, now, status)
        verdict = self.digest.verify(
            Authorization.parse(value), "REGISTER", request.uri, PASSWORD, now
        )
        if verdict is Verdict.STALE:
            return self._challenge(request, now, status, stale=True)
        if verdict is not Verdict.OK:
            return self._challenge(request, now, status)
        expires = int(request.headers.get("Expires") or "0")
        if 0 < expires < self.min_expires:
            return self._response(request, 423, [("Min-Expires", str(self.min_expires))])
        contact = request.headers.get("Contact") or ""
        self.bindings[contact] = expires
        granted = min(expires, 300)
        return self._response(request, 200, [("Contact", f"{contact};expires={granted}")])

    def _challenge(
        self, request: Request, now: float, status: int, stale: bool = False
    ) -> Response:
        name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        headers = [(name, value) for value in self.digest.challenges(now, stale=stale)]
        return self._response(request, status, headers)

    @staticmethod
    def _response(
        request: Request,
        status: int,
        extra: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
    ) -> Response:
        copied = [(n, request.headers.get(n) or "") for n in ("From", "To", "Call-ID", "CSeq")]
        to = (copied[1][0], copied[1][1] + ";tag=reg")
        return Response(status, headers=[copied[0], to, *copied[2:], *extra])


def sent(actions: list[Send | Changed]) -> Request:
    [request] = [a.request for a in actions if isinstance(a, Send)]
    return request


def changes(actions: list[Send | Changed]) -> list[tuple[State, str]]:
    return [(a.state, a.reason) for a in actions if isinstance(a, Changed)]


def client(expires: int = 600, password: str = PASSWORD) -> Registration:
    return Registration(
        AOR, CONTACT, expires, Credentials("tandem", password), rng=random.Random(5)
    )


def register(reg: Registration, registrar: Registrar, now: float) -> list[Send | Changed]:
    """Start, answer the challenge, return the outcome's actions."""
    first = sent(reg.start(now))
    return reg.receive(registrar.answer(first, now), now)


def test_challenge_answered_then_refreshed_before_expiry() -> None:
    registrar, reg = Registrar(), client()
    first = sent(reg.start(T0))
    assert (first.method, first.uri) == ("REGISTER", "sip:carrier.test")  # the AOR's domain
    assert first.headers.get("Expires") == "600" and "Authorization" not in first.headers
    challenge = registrar.answer(first, T0)
    retry = sent(reg.receive(challenge, T0))
    assert retry.cseq.number == first.cseq.number + 1 and retry.call_id == first.call_id
    assert "algorithm=SHA-256" in (retry.headers.get("Authorization") or "")
    outcome = reg.receive(registrar.answer(retry, T0 + 0.1), T0 + 0.1)
    assert changes(outcome) == [(State.REGISTERED, "registered")]
    assert reg.expires_at == T0 + 300  # granted 300 by our Contact's expires, from when sent
    assert reg.get_timer() == T0 + 270  # 30 s before the end
    assert reg.handle_timer(T0 + 269) == []
    refresh = sent(reg.handle_timer(T0 + 270))
    assert refresh.call_id == first.call_id and refresh.cseq.number == retry.cseq.number + 1
    # the last challenge answered up front: one round trip, nc counted on
    assert "nc=00000002" in (refresh.headers.get("Authorization") or "")
    assert changes(reg.receive(registrar.answer(refresh, T0 + 270), T0 + 270)) == [
        (State.REGISTERED, "registered")
    ]
    assert reg.get_timer() == T0 + 270 + 270 and reg.bound(T0 + 500)


def test_a_stale_nonce_on_refresh_is_renewed_without_failing() -> None:
    registrar, reg = Registrar(nonce_ttl_s=100), client()
    assert changes(register_twice(reg, registrar, T0))[0][0] is State.REGISTERED
    refresh = sent(reg.handle_timer(T0 + 270))
    stale = registrar.answer(refresh, T0 + 270)
    assert "stale=true" in (stale.headers.get("WWW-Authenticate") or "")
    again = sent(reg.receive(stale, T0 + 270))
    assert (
        changes(reg.receive(registrar.answer(again, T0 + 270), T0 + 270))[0][0] is State.REGISTERED
    )


def register_twice(reg: Registration, registrar: Registrar, now: float) -> list[Send | Changed]:
    retry = sent(register(reg, registrar, now))
    return reg.receive(registrar.answer(retry, now), now)


def test_wrong_password_is_one_retry_then_a_failure_with_backoff() -> None:
    registrar, reg = Registrar(), client(password="guess")
    retry = sent(register(reg, registrar, T0))
    outcome = reg.receive(registrar.answer(retry, T0), T0)
    assert changes(outcome) == [(State.FAILED, "401 Unauthorized: credentials refused")]
    assert not any(isinstance(a, Send) for a in outcome)  # no loop
    waits = []
    now = T0
    for _ in range(8):
        timer = reg.get_timer()
        assert timer is not None
        waits.append(timer - now)
        now = timer
        request = sent(reg.handle_timer(now))  # the refused challenge is not reused
        assert "Authorization" not in request.headers
        retry = sent(reg.receive(registrar.answer(request, now), now))
        assert changes(reg.receive(registrar.answer(retry, now), now))[0][0] is State.FAILED
    # RFC 5626 4.5: 50-100% of 30 s doubling, capped at 30 min
    assert 15 <= waits[0] <= 30 and 30 <= waits[1] <= 60 and 60 <= waits[2] <= 120
    assert all(w <= BACKOFF_MAX_S for w in waits) and waits[-1] >= BACKOFF_MAX_S / 2
    assert PASSWORD not in repr(reg) and "guess" not in repr(reg)


def test_423_asks_again_with_min_expires_and_keeps_it() -> None:
    registrar, reg = Registrar(min_expires=1200), client(expires=600)
    retry = sent(register(reg, registrar, T0))
    brief = registrar.answer(retry, T0)
    assert brief.status == 423
    longer = sent(reg.receive(brief, T0))
    assert longer.headers.get("Expires") == "1200"
    assert changes(reg.receive(registrar.answer(longer, T0), T0)) == [
        (State.REGISTERED, "registered")
    ]
    assert sent(reg.handle_timer(T0 + 270)).headers.get("Expires") == "1200"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ([], "423 without a usable Min-Expires ('')"),
        ([("Min-Expires", "300")], "423 without a usable"),
    ],
)
def test_423_without_a_longer_min_expires_fails(extra: list[tuple[str, str]], reason: str) -> None:
    reg = client(expires=600)
    request = sent(reg.start(T0))
    outcome = reg.receive(Registrar._response(request, 423, extra), T0)
    [(state, why)] = changes(outcome)
    assert state is State.FAILED and why.startswith(reason)


def test_refusals_and_retry_after() -> None:
    reg = client()
    request = sent(reg.start(T0))
    assert changes(reg.receive(Registrar._response(request, 403), T0)) == [
        (State.FAILED, "403 Forbidden")
    ]
    request = sent(reg.handle_timer(reg.get_timer() or 0))
    now = reg._sent_at
    busy = Registrar._response(request, 503, [("Retry-After", "120 (maintenance);duration=60")])
    assert changes(reg.receive(busy, now)) == [(State.FAILED, "503 Service Unavailable")]
    assert reg.get_timer() == now + 120


def test_timeouts_and_late_responses() -> None:
    registrar, reg = Registrar(), client()
    first = sent(reg.start(T0))
    assert reg.receive(Registrar._response(first, 100), T0) == []  # provisional: still waiting
    assert changes(reg.timeout(T0 + 32)) == [(State.FAILED, "timeout")]
    assert reg.receive(registrar.answer(first, T0 + 33), T0 + 33) == []  # late: ignored
    assert reg.timeout(T0 + 34) == []  # nothing outstanding
    retry_at = reg.get_timer()
    assert retry_at is not None and T0 + 32 + 15 <= retry_at <= T0 + 32 + 30
    assert sent(reg.handle_timer(retry_at)).cseq.number == first.cseq.number + 1
    assert changes(reg.timeout(retry_at, "transport: tls: certificate verify failed")) == [
        (State.FAILED, "transport: tls: certificate verify failed")
    ]


def test_no_credentials_for_a_challenge() -> None:
    reg = Registration(AOR, CONTACT, 600)
    request = sent(reg.start(T0))
    outcome = reg.receive(Registrar().answer(request, T0), T0)
    assert changes(outcome) == [(State.FAILED, "401 Unauthorized: no credentials")]


def test_a_proxy_challenge_is_answered_with_proxy_authorization() -> None:
    registrar, reg = Registrar(), client()
    request = sent(reg.start(T0))
    retry = sent(reg.receive(registrar.answer(request, T0, status=407), T0))
    assert "Proxy-Authorization" in retry.headers and "Authorization" not in retry.headers
    assert (
        changes(reg.receive(registrar.answer(retry, T0, status=407), T0))[0][0] is State.REGISTERED
    )


def test_granted_expiry_from_the_expires_header_and_a_zero_grant() -> None:
    reg = client()
    request = sent(reg.start(T0))
    other = [("Contact", "<sip:someone-else@192.0.2.9>;expires=3600"), ("Expires", "120")]
    assert (
        changes(reg.receive(Registrar._response(request, 200, other), T0))[0][0] is State.REGISTERED
    )
    assert reg.expires_at == T0 + 120 and reg.get_timer() == T0 + 90
    request = sent(reg.handle_timer(T0 + 90))
    zero = [("Contact", f"<{CONTACT}>;expires=0")]
    assert changes(reg.receive(Registrar._response(request, 200, zero), T0 + 90)) == [
        (State.FAILED, "registrar granted no expiry")
    ]
    assert reg.bound(T0 + 100) and not reg.bound(T0 + 121)  # the old binding holds till then


def test_stop_removes_the_binding() -> None:
    registrar, reg = Registrar(), client()
    register_twice(reg, registrar, T0)
    bye = sent(reg.stop(T0 + 10))
    assert bye.headers.get("Expires") == "0" and "Authorization" in bye.headers
    assert reg.get_timer() is None
    assert changes(reg.receive(Registrar._response(bye, 200), T0 + 10)) == [
        (State.UNREGISTERED, "unregistered")
    ]
    assert not reg.bound(T0 + 11) and reg.stop(T0 + 12) == []


def test_events_out_of_place_raise() -> None:
    reg = client()
    reg.start(T0)
    with pytest.raises(RegistrationError, match="start in state registering"):
        reg.start(T0)
