"""tandem's own end of one dialog: what RFC 3261, 3262, 3311 and 4028 ask of a user agent,
whichever side of the call it is on.

Each machine owns one `Side`: the call the caller's dialog (tandem is its UAS), a leg the
callee's (tandem is its UAC). The Side does what each leg does for itself, whatever the
other leg does: reliable provisionals (RSeq, PRACK, retransmission: RFC 3262), the session
timer (negotiation, refresh by UPDATE or re-INVITE, expiry: RFC 4028), the offer/answer
glare rules for re-INVITE and UPDATE (491 and 500, RFC 3261 14 and RFC 3311 5.2) with the
retry timing of RFC 3261 14.1, in-dialog OPTIONS, where in-dialog requests go (the far
end's Contact through the route set), and the far end's digest challenges to the requests
sent in the dialog (RFC 3261 22.2, `tandem.b2bua.auth`). What it cannot settle alone it
hands back to its machine: a request to relay, a session that expired, a caller that never
PRACKed.

Timers are the machine's, by name: `prack` (our reliable provisional's retransmission),
`refresh` (our session refresh is due), `expiry` (the far end's refresh is overdue),
`retry` (our refresh, after a 491).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from tandem.b2bua.actions import Respond, SendAck, SendRequest, StartTimer, StopTimer
from tandem.b2bua.auth import CHALLENGES, Auth, again
from tandem.b2bua.events import Txn
from tandem.b2bua.local import ALLOW, SUPPORTED, USER_AGENT
from tandem.b2bua.machine import Step
from tandem.b2bua.profile import Profile
from tandem.b2bua.relay import Relay, leg_response, respond
from tandem.pb import tandem_pb2 as pb
from tandem.sip import Request, Response
from tandem.sip.dialog import Dialog

T1 = 0.5  # RFC 3261's round-trip estimate, as the transaction layer has it
MIN_SE_FLOOR = 90  # RFC 4028 4: no session interval below 90 s
REFRESH = "refresh"  # the request id of our own session refreshes
BYE = "bye"  # the request id of our BYE, when its answer may be a challenge
TIMERS = ("prack", "refresh", "expiry", "retry")


class Reliability(Enum):
    """What the far end said of 100rel in its INVITE."""

    NONE = 0
    SUPPORTED = 1
    REQUIRED = 2


@dataclass(slots=True)
class Session:
    """A negotiated session timer (RFC 4028): its interval, and who refreshes."""

    interval: int
    ours: bool  # tandem refreshes (else the far end must, or tandem ends the call)
    peer_supports: bool  # the far end said `Supported: timer`


def tokens(message: Request | Response, name: str) -> set[str]:
    return {value.lower() for value in message.headers.values(name)}


def _session_expires(message: Request | Response) -> tuple[int | None, str]:
    value = message.headers.get("session-expires")
    if not value:
        return None, ""
    number, _, params = value.partition(";")
    refresher = ""
    for param in params.split(";"):
        key, _, arg = param.strip().partition("=")
        if key.lower() == "refresher":
            refresher = arg.strip().lower()
    return (int(number) if number.strip().isdigit() else None), refresher


def _min_se(message: Request | Response) -> int:
    value = (message.headers.get("min-se") or "").partition(";")[0].strip()
    return max(int(value), MIN_SE_FLOOR) if value.isdigit() else MIN_SE_FLOOR


RNG = random.Random()  # one for every dialog: an instance is 2.5 KB, seeded by a system call


class Side:
    """One dialog of tandem's, as UAS (the caller's) or UAC (a callee's)."""

    def __init__(
        self,
        step: Step,
        profile: Profile,
        *,
        uac: bool,
        rng: random.Random | None = None,
    ) -> None:
        self._step = step  # the owner's: its time, and where actions go
        self.profile = profile
        self.uac = uac
        self.rng = rng or RNG
        self.dialog: Dialog | None = None
        self.allow: set[str] = set()  # the methods the far end allows
        self.session: Session | None = None
        # reliable provisionals we send (UAS)
        self.reliability = Reliability.NONE
        self.rseq = self.rng.randint(1, 2**31 - 1)
        self.unacked: tuple[Txn, Response, int] | None = None  # waiting for its PRACK
        self.queued: list[tuple[Txn, Response]] = []  # behind it, in order
        self.prack_interval = T1
        self.prack_give_up = 0.0
        # reliable provisionals we receive (UAC): the last RSeq per early dialog
        self.rseq_seen: dict[str, int] = {}
        # offers and INVITEs in flight in this dialog, for the glare rules
        self.invite_out = ""  # request id of our re-INVITE without its final response
        self.invite_in: Txn | None = None  # their re-INVITE without our final response
        self.offer_out = ""  # request id of our UPDATE with an offer, unanswered
        self.offer_in: Txn | None = None  # their UPDATE with an offer, unanswered
        self.sdp_sent = b""  # the last session description we gave the far end
        self.sdp_received = b""
        self.refresh_method = ""
        self.last_ack: Request | None = None
        self.auth = Auth(profile.credentials)
        # requests sent with credentials at hand, by request id: (the request, answers given)
        self.authenticating: dict[str, tuple[Request, int]] = {}

    # ---- sending in the dialog ------------------------------------------------------------

    def send(self, request: Request, request_id: str = "") -> None:
        """A request in this dialog, to where the dialog says (Contact, route set)."""
        if request.method == "INVITE":
            self.invite_out = request_id or REFRESH
        elif request.method == "UPDATE" and request.body:
            self.offer_out = request_id or REFRESH
        if request.body:
            self.sdp_sent = request.body
        if self.auth.client is not None:  # its answer may be a challenge: keep it at hand
            request_id = request_id or (BYE if request.method == "BYE" else "")
            if request_id:
                self.authenticating[request_id] = (request, 0)
        self._step.do(SendRequest(request, request_id, self.next_hop))

    def challenged(self, request_id: str, response: Response | None) -> bool:
        """True when `response` is a challenge to a request we sent, now sent again with the
        credentials; False for any other answer, a challenge that cannot be answered (no
        credentials, refused) included: the machine takes that one as it is."""
        pending = self.authenticating.get(request_id)
        if pending is None or response is None or response.status < 200:
            if response is None:
                self.authenticating.pop(request_id, None)
            return False
        dialog = self.dialog
        answer = None
        if response.status in CHALLENGES and dialog is not None:
            answer = self.auth.answer(pending[0], response, pending[1])
        if not isinstance(answer, tuple):
            del self.authenticating[request_id]
            return False
        assert dialog is not None
        dialog.local_cseq += 1
        if pending[0].method == "INVITE":
            dialog.invite_cseq = dialog.local_cseq
        request = again(pending[0], dialog.local_cseq, answer)
        self.authenticating[request_id] = (request, pending[1] + 1)
        self._step.do(SendRequest(request, request_id, self.next_hop))
        return True

    def ack(self, ack: Request) -> None:
        """The ACK of a 2xx in this dialog, or its repeat for a 2xx that came again."""
        if ack.body:
            self.sdp_sent = ack.body
        self.last_ack = ack
        self._step.do(SendAck(ack, self.next_hop))

    @property
    def next_hop(self) -> str:
        return str(self.dialog.next_hop) if self.dialog is not None else ""

    def answered(self, request_id: str, response: Response | None) -> None:
        """The final answer to a request we sent in this dialog (bookkeeping only)."""
        if response is not None and response.status < 200:
            return
        if self.invite_out == request_id:
            self.invite_out = ""
        if self.offer_out == request_id:
            self.offer_out = ""
        if response is not None and 200 <= response.status < 300 and response.body:
            self.sdp_received = response.body

    def crossing(
        self, relay: Relay, request_id: str, response: Response | None
    ) -> pb.LegResponse | None:
        """The far end's answer to a request we sent here for the other leg: what crosses
        back, once (None for a provisional, an unknown request, or a 2xx again, which is
        ACKed again: our ACK was lost)."""
        answered = relay.sent.get(request_id)
        if answered is None or (response is not None and response.status < 200):
            return None
        if answered:
            if response is not None and response.status < 300 and self.last_ack is not None:
                self.ack(self.last_ack)
            return None
        relay.sent[request_id] = True
        self.answered(request_id, response)
        return leg_response(request_id, response)

    # ---- answering in the dialog ----------------------------------------------------------

    def respond(self, txn: Txn, response: Response) -> None:
        """Our answer to the far end's request; a 2xx to INVITE or UPDATE renews the session."""
        request = txn.request
        status = response.status
        if status >= 200 and request.method in ("INVITE", "UPDATE"):
            if txn is self.invite_in:
                self.invite_in = None
            if txn is self.offer_in:
                self.offer_in = None
            if status < 300:
                self._renewed_by_them(request, response)
        if response.body and status < 300:
            self.sdp_sent = response.body
        self._step.do(Respond(txn, response))

    def receive(self, request: Request, txn: Txn) -> bool:
        """A request from the far end in this dialog; True when answered here (a glare 491,
        an OPTIONS, a PRACK, a pure session refresh), False when the machine must act."""
        method = request.method
        if method == "OPTIONS":
            self._step.do(Respond(txn, respond(request, 200, headers=[("Allow", ALLOW)])))
            return True
        if method == "PRACK":
            self._prack(request, txn)
            return True
        if method == "INVITE":
            if self.invite_out:  # RFC 3261 14.2: the INVITEs crossed
                self._step.do(Respond(txn, respond(request, 491)))
                return True
            if self.invite_in is not None:  # a second re-INVITE before we answered the first
                retry = ("Retry-After", str(self.rng.randint(0, 10)))
                self._step.do(Respond(txn, respond(request, 500, headers=[retry])))
                return True
        if method == "UPDATE" and request.body:
            if self.offer_out or self.invite_out:  # RFC 3311 5.2: our offer is unanswered
                self._step.do(Respond(txn, respond(request, 491)))
                return True
            if self.offer_in is not None or self.invite_in is not None:
                retry = ("Retry-After", str(self.rng.randint(0, 10)))
                self._step.do(Respond(txn, respond(request, 500, headers=[retry])))
                return True
        if method in ("INVITE", "UPDATE") and self._pure_refresh(request):
            body = self.sdp_sent if method == "INVITE" else b""
            headers = [("Content-Type", "application/sdp")] if body else []
            self.respond(txn, respond(request, 200, headers=headers, body=body))
            return True
        if method == "INVITE":
            self.invite_in = txn
        elif method == "UPDATE" and request.body:
            self.offer_in = txn
        if request.body:
            self.sdp_received = request.body
        return False

    def _pure_refresh(self, request: Request) -> bool:
        """A re-INVITE or UPDATE that changes nothing but the session timer (RFC 4028 says
        each leg refreshes its own dialog: the other leg need not know)."""
        if self.session is None:
            return False
        if request.method == "UPDATE":
            return not request.body
        return bool(request.body) and request.body == self.sdp_received

    # ---- the session timer (RFC 4028) -----------------------------------------------------

    def invite_headers(self) -> list[tuple[str, str]]:
        """What our INVITE (UAC) says of the extensions and the session timer."""
        headers = [("Supported", SUPPORTED)]
        if self.profile.session_expires_s:
            headers += [
                ("Session-Expires", str(self.profile.session_expires_s)),
                ("Min-SE", str(self._floor())),
            ]
        return headers

    def _floor(self) -> int:
        return max(self.profile.min_se_s, MIN_SE_FLOOR)

    def negotiate(self, invite: Request) -> Response | None:
        """The caller's INVITE (UAS): its 100rel and timer wishes; a 422 if it asks for less
        than our Min-SE (RFC 4028 8.1)."""
        self.allow = tokens(invite, "allow")
        self.sdp_received = invite.body
        require, supported = tokens(invite, "require"), tokens(invite, "supported")
        if "100rel" in require:
            self.reliability = Reliability.REQUIRED
        elif "100rel" in supported:
            self.reliability = Reliability.SUPPORTED
        asked, refresher = _session_expires(invite)
        peer_supports = "timer" in supported or "timer" in require
        floor = max(self._floor(), _min_se(invite))
        if asked is not None and asked < self._floor():
            if peer_supports:
                return respond(invite, 422, headers=[("Min-SE", str(self._floor()))])
            asked = floor  # it cannot understand a 422: raise its interval instead
        wanted = self.profile.session_expires_s
        if asked is None and not wanted:
            return None
        interval = max(min(asked or wanted, wanted or asked or wanted), floor)
        if refresher not in ("uac", "uas"):
            refresher = "uac" if peer_supports else "uas"
        self.session = Session(interval, refresher == "uas", peer_supports)
        return None

    def answer_headers(self) -> list[tuple[str, str]]:
        """What our 2xx to an INVITE or UPDATE (UAS of it) says of the session timer."""
        session = self.session
        if session is None:
            return []
        headers = [("Session-Expires", f"{session.interval};refresher={self._refresher()}")]
        if session.peer_supports:
            headers.append(("Require", "timer"))
        return headers

    def _refresher(self) -> str:
        """The refresher as the UAS of the current transaction names it."""
        session = self.session
        assert session is not None
        return "uas" if session.ours else "uac"

    def confirmed(self, response: Response | None = None) -> None:
        """The INVITE dialog is confirmed (our 2xx sent, or theirs received): start timing.

        A callee that ignores the session timer (no Session-Expires in its 2xx) is timed by
        us all the same: we refresh (RFC 4028 7.4, the UAC may refresh anyway)."""
        if response is not None:  # UAC: what the callee chose
            self.allow = tokens(response, "allow")
            given, refresher = _session_expires(response)
            supports = "timer" in tokens(response, "require") | tokens(response, "supported")
            if given is not None:
                self.session = Session(given, refresher != "uas", supports)
            elif self.profile.session_expires_s:
                self.session = Session(self.profile.session_expires_s, True, False)
            if response.body:
                self.sdp_received = response.body
        self._arm()

    def _renewed_by_them(self, request: Request, response: Response) -> None:
        """Our 2xx to their re-INVITE or UPDATE: a refresh (with new terms if they asked)."""
        asked, refresher = _session_expires(request)
        if self.session is not None and asked is not None:
            self.session.interval = max(asked, self._floor())
            self.session.ours = refresher == "uas"
        self._arm()

    def _arm(self) -> None:
        session = self.session
        if session is None:
            return
        if session.ours:
            self._step.do(StopTimer("expiry"), StartTimer("refresh", session.interval / 2))
        else:  # RFC 4028 10: BYE at the interval minus min(32 s, a third of it)
            grace = min(32.0, session.interval / 3)
            self._step.do(StopTimer("refresh"), StartTimer("expiry", session.interval - grace))

    def refresh(self) -> None:
        """Our refresh: UPDATE when the far end allows it, else a re-INVITE with the same SDP."""
        session, dialog = self.session, self.dialog
        if session is None or dialog is None:
            return
        headers = [
            ("Session-Expires", f"{session.interval};refresher=uac"),
            ("Min-SE", str(self._floor())),
            ("Supported", SUPPORTED),
            ("User-Agent", USER_AGENT),
        ]
        self.refresh_method = "UPDATE" if "update" in self.allow else "INVITE"
        if self.refresh_method == "UPDATE":
            request = dialog.create_request("UPDATE", headers)
        else:
            if self.sdp_sent:
                headers.append(("Content-Type", "application/sdp"))
            request = dialog.create_request("INVITE", headers, self.sdp_sent)
        self.send(request, REFRESH)
        # the far end must answer before the session would expire without a refresh
        self._step.do(StartTimer("expiry", session.interval - min(32.0, session.interval / 3)))

    def refreshed(self, response: Response | None) -> str | None:
        """The answer to our refresh; the failure reason when the session is over."""
        self.answered(REFRESH, response)
        if response is not None and response.status < 200:
            return None
        session, dialog = self.session, self.dialog
        if session is None or dialog is None:
            return None
        status = response.status if response is not None else 408
        if 200 <= status < 300:
            assert response is not None
            if self.refresh_method == "INVITE":
                self.ack(dialog.create_ack())
            given, refresher = _session_expires(response)
            if given is not None:
                session.interval = given
                session.ours = refresher != "uas"
            self._arm()
            return None
        if status == 422 and response is not None:  # asked for too little: ask for its Min-SE
            session.interval = max(session.interval, _min_se(response))
            self.refresh()
            return None
        if status == 491:  # RFC 3261 14.1: retry after a while, longer if the Call-ID is ours
            low, high = (2.1, 4.0) if self.uac else (0.0, 2.0)
            self._step.do(StartTimer("retry", round(self.rng.uniform(low, high), 2)))
            return None
        if status in (405, 501) and "update" in self.allow:
            self.allow.discard("update")  # it said it allows UPDATE, but it does not
            self.refresh()
            return None
        if status in (408, 481):  # RFC 4028 10: the session is gone
            return f"session refresh answered {status}"
        return None  # any other failure: the expiry timer decides

    # ---- reliable provisionals we send (UAS, RFC 3262 3) -------------------------------

    def provisional(self, txn: Txn, response: Response) -> None:
        """A 1xx to the caller: reliable when it supports 100rel, one at a time, in order."""
        if self.reliability is Reliability.NONE or response.status == 100:
            self._step.do(Respond(txn, response))
            return
        if self.unacked is not None:
            self.queued.append((txn, response))
            return
        self._send_reliable(txn, response)

    def final(self, txn: Txn, response: Response) -> None:
        """The final response to the caller's INVITE: a 2xx waits for the PRACK of a reliable
        provisional that carried SDP (RFC 3262 3); anything else goes at once."""
        waits = self.unacked is not None and (self.unacked[1].body or self.queued)
        if waits and 200 <= response.status < 300:
            self.queued.append((txn, response))
            return
        if response.status >= 300 or self.unacked is None:
            self._stop_reliability()
        if 200 <= response.status < 300:
            response.headers.add("Supported", SUPPORTED)
            for name, value in self.answer_headers():
                response.headers.add(name, value)
            if response.body:
                self.sdp_sent = response.body
        self._step.do(Respond(txn, response))

    def _send_reliable(self, txn: Txn, response: Response) -> None:
        if response.status >= 200:  # a final that waited for a PRACK
            self._stop_reliability()
            self.final(txn, response)
            return
        self.rseq += 1
        response.headers.add("Require", "100rel")
        response.headers.add("RSeq", str(self.rseq))
        self.unacked = (txn, response, self.rseq)
        self.prack_interval = T1
        self.prack_give_up = self._step.now + 64 * T1
        self._step.do(Respond(txn, response), StartTimer("prack", T1))

    def prack_timer(self) -> bool:
        """Retransmit the unacknowledged provisional; False when it is time to give up."""
        if self.unacked is None:
            return True
        if self._step.now >= self.prack_give_up:
            self._stop_reliability()
            return False
        txn, response, _ = self.unacked
        self.prack_interval *= 2
        wait = min(self.prack_interval, self.prack_give_up - self._step.now)
        self._step.do(Respond(txn, response), StartTimer("prack", wait))
        return True

    def _prack(self, request: Request, txn: Txn) -> None:
        rack = (request.headers.get("rack") or "").split()
        unacked = self.unacked
        invite_cseq = unacked[0].request.cseq.number if unacked else -1
        if (
            unacked is None
            or len(rack) != 3
            or rack[0] != str(unacked[2])
            or rack[1] != str(invite_cseq)
            or rack[2].upper() != "INVITE"
        ):
            self._step.do(Respond(txn, respond(request, 481)))  # RFC 3262 4: matches nothing
            return
        self._step.do(Respond(txn, respond(request, 200)), StopTimer("prack"))
        self.unacked = None
        while self.queued and self.unacked is None:
            queued_txn, response = self.queued.pop(0)
            if response.status < 200:
                self._send_reliable(queued_txn, response)
            else:
                self.final(queued_txn, response)

    def _stop_reliability(self) -> None:
        if self.unacked is not None:
            self._step.do(StopTimer("prack"))
        self.unacked = None
        self.queued.clear()

    # ---- reliable provisionals we receive (UAC, RFC 3262 4) ---------------------------

    def provisional_received(self, dialog: Dialog, response: Response) -> bool:
        """A 1xx from the callee; True when it is new (a reliable one is PRACKed here),
        False for a retransmission or one out of order (discarded)."""
        if "100rel" not in tokens(response, "require"):
            return True
        rseq_text = (response.headers.get("rseq") or "").strip()
        if not rseq_text.isdigit():
            return False
        rseq, tag = int(rseq_text), response.to.tag or ""
        last = self.rseq_seen.get(tag)
        if last is not None and rseq != last + 1:
            return False
        self.rseq_seen[tag] = rseq
        rack = f"{rseq} {response.cseq.number} {response.cseq.method}"
        prack = dialog.create_request("PRACK", [("RAck", rack), ("User-Agent", USER_AGENT)])
        self._step.do(SendRequest(prack, "", str(dialog.next_hop)))
        return True
