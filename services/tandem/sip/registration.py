"""A REGISTER client for one binding (RFC 3261 10), sans-I/O: events in, actions out, time
passed in.

Theory of operation. `start` sends a REGISTER; its final response moves the machine by
`TRANSITIONS` (a pair not there raises RegistrationError). A 200 grants an expiry (our
Contact's `expires`, else Expires, else what we asked) and arms a refresh before it ends;
401/407 is answered once per fresh challenge with `digest` (a second refusal is wrong
credentials; `stale=true` only renews the nonce); 423 asks again with its Min-Expires;
anything else, a transaction timeout or a transport failure waits a backoff (RFC 5626
4.5: doubling from 30 s to 30 min, 50-100% jitter; a Retry-After is honoured) and tries
again. Refreshes answer the last challenge up front, saving a round trip where the
registrar keeps its nonce. `stop` removes the binding (Expires: 0).

The caller moves the requests (through the transaction layer, which adds Via), feeds
back their responses and timeouts, and wakes the machine at `get_timer()`. `Changed`
comes with each outcome (registered, refused, unregistered) for the trunk's health; a
failed refresh leaves the binding until `expires_at` (`bound(now)`).
"""

from __future__ import annotations

import random
import re
import secrets
from dataclasses import dataclass
from enum import Enum

from tandem.sip.digest import (
    HEADERS,
    Challenge,
    Credentials,
    DigestClient,
    DigestError,
    choose,
    parse_challenges,
)
from tandem.sip.message import Request, Response
from tandem.sip.uri import URI, NameAddr

REFRESH_MARGIN_S = 30.0  # refresh this long before expiry (half the expiry when shorter)
BACKOFF_BASE_S = 30.0  # RFC 5626 4.5 base-time when every flow failed
BACKOFF_MAX_S = 1800.0  # RFC 5626 4.5 max-time
MAX_EXPIRES = 86400  # a Min-Expires above this is not followed
MAX_AUTH_ROUNDS = 3  # challenges answered for one REGISTER (stale nonces included)
_SECONDS = re.compile(r"\s*(\d{1,9})")  # Retry-After: 120 (comment);duration=...


class State(Enum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"  # a REGISTER is out
    REGISTERED = "registered"  # bound; a refresh is armed
    FAILED = "failed"  # waiting for the backoff to try again
    UNREGISTERING = "unregistering"  # a REGISTER with Expires: 0 is out


class Event(Enum):
    START = "start"
    ACCEPTED = "accepted"  # a 2xx
    RETRY = "retry"  # a challenge or a 423 answered at once
    REFUSED = "refused"  # any other final response, a timeout, a transport failure
    TIMER = "timer"
    STOP = "stop"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.UNREGISTERED, Event.START): State.REGISTERING,
    (State.UNREGISTERED, Event.STOP): State.UNREGISTERED,
    (State.REGISTERING, Event.ACCEPTED): State.REGISTERED,
    (State.REGISTERING, Event.RETRY): State.REGISTERING,
    (State.REGISTERING, Event.REFUSED): State.FAILED,
    (State.REGISTERING, Event.STOP): State.UNREGISTERING,
    (State.REGISTERED, Event.TIMER): State.REGISTERING,
    (State.REGISTERED, Event.STOP): State.UNREGISTERING,
    (State.FAILED, Event.TIMER): State.REGISTERING,
    (State.FAILED, Event.STOP): State.UNREGISTERING,
    (State.UNREGISTERING, Event.ACCEPTED): State.UNREGISTERED,
    (State.UNREGISTERING, Event.RETRY): State.UNREGISTERING,
    (State.UNREGISTERING, Event.REFUSED): State.UNREGISTERED,
}


class RegistrationError(Exception):
    """An event the machine cannot take in its state (a caller's mistake)."""


@dataclass(frozen=True, slots=True)
class Send:
    request: Request


@dataclass(frozen=True, slots=True)
class Changed:
    state: State
    reason: str  # "registered", "403 Forbidden", "timeout", ...


Action = Send | Changed


class Registration:
    """One binding of `contact` to `aor` at the registrar of the AOR's domain."""

    def __init__(
        self,
        aor: str,
        contact: str,
        expires: int,
        credentials: Credentials | None = None,
        *,
        registrar: str | None = None,
        call_id: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        uri = URI.parse(aor)
        self.aor = aor
        self.contact = contact
        self.expires = expires
        # RFC 3261 10.2: the Request-URI is the AOR's domain, without the user
        host = f"[{uri.host}]" if ":" in uri.host else uri.host
        port = "" if uri.port is None else f":{uri.port}"
        self.registrar = registrar or f"{uri.scheme}:{host}{port}"
        self.call_id = call_id or secrets.token_hex(12)  # one Call-ID for every REGISTER
        self.from_tag = secrets.token_hex(6)
        self.state = State.UNREGISTERED
        self.reason = "not started"
        self.expires_at: float | None = None  # when the binding lapses, if we have one
        self._digest = DigestClient(credentials) if credentials is not None else None
        self._rng = rng or random.Random()
        self._cseq = 0
        self._sent_at = 0.0
        self._timer: float | None = None
        self._failures = 0
        self._challenge: tuple[int, Challenge] | None = None  # the last one, reused
        self._answering_fresh = False  # the outstanding request answers a new challenge
        self._auth_rounds = 0

    def __repr__(self) -> str:
        return f"<Registration {self.aor} {self.state.value}: {self.reason}>"

    # ---- events in -----------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        return self._attempt(Event.START, now)

    def handle_timer(self, now: float) -> list[Action]:
        if self._timer is None or now < self._timer:
            return []
        self._timer = None
        return self._attempt(Event.TIMER, now)

    def stop(self, now: float) -> list[Action]:
        """Remove the binding (Expires: 0); nothing to do when there is none."""
        unregistered = self.state is State.UNREGISTERED
        self._go(Event.STOP)
        if unregistered:
            return []
        self._timer = None
        self._begin()
        return [Send(self._request(0, now))]

    def receive(self, response: Response, now: float) -> list[Action]:
        """A response to one of our REGISTERs; others (late, stray) are ignored."""
        cseq = response.cseq
        waiting = self.state in (State.REGISTERING, State.UNREGISTERING)
        if not waiting or (cseq.number, cseq.method) != (self._cseq, "REGISTER"):
            return []
        status = response.status
        if status < 200:
            return []
        if status < 300:
            return self._accepted(response, now)
        if status in HEADERS:
            return self._challenged(response, now)
        if status == 423:
            return self._too_brief(response, now)
        seconds = _SECONDS.match(response.headers.get("Retry-After") or "")
        wait = float(seconds.group(1)) if seconds else None
        return self._refused(f"{status} {response.reason}".strip(), now, wait)

    def timeout(self, now: float, reason: str = "timeout") -> list[Action]:
        """The outstanding REGISTER got no answer (timer F) or could not be sent."""
        if self.state not in (State.REGISTERING, State.UNREGISTERING):
            return []
        return self._refused(reason, now)

    def get_timer(self) -> float | None:
        return self._timer

    def bound(self, now: float) -> bool:
        """Whether the registrar still holds our binding (granted and not lapsed)."""
        return self.expires_at is not None and now < self.expires_at

    # ---- transitions ---------------------------------------------------------------------

    def _go(self, event: Event) -> State:
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise RegistrationError(f"{event.value} in state {self.state.value}") from None
        return self.state

    def _begin(self) -> None:
        self._answering_fresh = False
        self._auth_rounds = 0

    def _attempt(self, event: Event, now: float) -> list[Action]:
        """A REGISTER; no Changed: a refresh must not flap the health it shows."""
        self._go(event)
        self._begin()
        return [Send(self._request(self.expires, now))]

    def _accepted(self, response: Response, now: float) -> list[Action]:
        granted = self._granted(response) if self.state is State.REGISTERING else 0
        if self.state is State.REGISTERING and granted <= 0:
            return self._refused("registrar granted no expiry", now)
        if self._go(Event.ACCEPTED) is State.UNREGISTERED:
            self.expires_at = None
            self.reason = "unregistered"
            return [Changed(self.state, self.reason)]
        self._failures = 0
        self.expires_at = self._sent_at + granted
        self._timer = self.expires_at - min(REFRESH_MARGIN_S, granted / 2)
        self.reason = "registered"
        return [Changed(self.state, self.reason)]

    def _granted(self, response: Response) -> int:
        ours = NameAddr.parse(self.contact if "<" in self.contact else f"<{self.contact}>").uri
        for contact in response.contacts:
            uri = contact.uri
            if (uri.user, uri.host.lower(), uri.port) == (ours.user, ours.host.lower(), ours.port):
                value = contact.param("expires")
                if value is not None and value.isdigit():
                    return int(value)
        header = response.headers.get("Expires") or ""
        return int(header) if header.isdigit() else self._requested

    def _challenged(self, response: Response, now: float) -> list[Action]:
        status = response.status
        refusal = f"{status} {response.reason}".strip()
        if self._digest is None:
            return self._refused(f"{refusal}: no credentials", now)
        try:
            challenges = parse_challenges(response.headers.get_all(HEADERS[status][0]))
            realm = self._digest.credentials.realm
            challenge = choose(c for c in challenges if realm in (None, c.realm))
        except DigestError as exc:
            return self._refused(f"{refusal}: {exc}", now)
        self._auth_rounds += 1
        if (self._answering_fresh and not challenge.stale) or self._auth_rounds > MAX_AUTH_ROUNDS:
            self._challenge = None
            return self._refused(f"{refusal}: credentials refused", now)
        self._challenge = (status, challenge)
        self._answering_fresh = True
        self._go(Event.RETRY)
        return [Send(self._request(self._requested, now))]

    def _too_brief(self, response: Response, now: float) -> list[Action]:
        value = response.headers.get("Min-Expires") or ""
        minimum = int(value) if value.isdigit() and len(value) < 10 else 0
        if self.state is State.UNREGISTERING or not self._requested < minimum <= MAX_EXPIRES:
            return self._refused(f"423 without a usable Min-Expires ({value[:12]!r})", now)
        self.expires = minimum  # kept for the refreshes
        self._go(Event.RETRY)
        return [Send(self._request(minimum, now))]

    def _refused(self, reason: str, now: float, retry_after: float | None = None) -> list[Action]:
        if self._go(Event.REFUSED) is State.UNREGISTERED:
            self.expires_at = None
            self.reason = f"unregistered ({reason})"
            return [Changed(self.state, self.reason)]
        self._failures += 1
        ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (self._failures - 1))
        wait = ceiling * self._rng.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = min(max(retry_after, 0.0), BACKOFF_MAX_S)
        self._timer = now + wait
        self.reason = reason
        return [Changed(self.state, reason)]

    # ---- requests out --------------------------------------------------------------------

    @property
    def _requested(self) -> int:
        return 0 if self.state is State.UNREGISTERING else self.expires

    def _request(self, expires: int, now: float) -> Request:
        self._cseq += 1
        self._sent_at = now
        headers = [
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={self.from_tag}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self._cseq} REGISTER"),
            ("Contact", self.contact if "<" in self.contact else f"<{self.contact}>"),
            ("Expires", str(expires)),
        ]
        if self._challenge is not None and self._digest is not None:
            status, challenge = self._challenge
            value = self._digest.authorize(challenge, "REGISTER", self.registrar)
            headers.append((HEADERS[status][1], value))
        return Request("REGISTER", self.registrar, headers)
