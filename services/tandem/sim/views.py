"""What a simulated trunk's control API says and accepts: calls as plain, typed values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from tandem.sip.grammar import TOKEN
from tandem.sip.headers import Headers, name_key
from tandem.sip.message import Request, parse

CallDirection = Literal["outbound", "inbound"]
CallState = Literal["calling", "incoming", "early", "connecting", "confirmed", "disconnected"]
# pjsua's media status: whose hold it is matters to the test that holds
MediaStatus = Literal["none", "active", "local_hold", "remote_hold", "error"]
Direction = Literal["inactive", "sendonly", "recvonly", "sendrecv"]
DtmfMethod = Literal["rfc4733", "sip-info"]
EndedBy = Literal["local", "remote"]
MessageDirection = Literal["in", "out"]
NUMBER = r"^\+?[0-9*#]{1,32}$"
ANONYMOUS = "anonymous"
# pjsua writes these itself; a second copy from a test would make the INVITE invalid
_OWN_HEADERS = frozenset(
    {"via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "route"}
    | {"record-route", "content-length", "content-type"}
)


class RtpStats(BaseModel):
    """RTP packets and payload bytes pjmedia counted on the call's audio stream, summed over
    the streams a re-INVITE may have re-created."""

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_lost: int = 0  # packets missing from what it received (sequence gaps)

    def __add__(self, other: RtpStats) -> RtpStats:
        return RtpStats(
            tx_packets=self.tx_packets + other.tx_packets,
            tx_bytes=self.tx_bytes + other.tx_bytes,
            rx_packets=self.rx_packets + other.rx_packets,
            rx_bytes=self.rx_bytes + other.rx_bytes,
            rx_lost=self.rx_lost + other.rx_lost,
        )


class DtmfDigit(BaseModel):
    digit: str
    method: DtmfMethod


class TransferNotify(BaseModel):
    """How a transfer this sim asked for went: the REFER's response (a 202 is reported
    as pjsua does, `100 Accepted`), then each NOTIFY's message/sipfrag status line."""

    status: int
    reason: str
    final: bool = Field(description="the last report: the subscription has ended")


class CallView(BaseModel):
    id: str
    direction: CallDirection
    local: str = Field(description="the extension or number on this trunk's side")
    remote: str = Field(description="the number dialled (outbound) or the caller (inbound)")
    called: str = Field(description="the called number, as it arrived or was dialled")
    sip_call_id: str
    state: CallState
    last_status: int = Field(
        description="the last SIP status seen (0 before any); once ended, why it ended: "
        "200 for a BYE (or the cause in its Reason header), 408 when a session timer "
        "expired, 410 when replaced, 487 when cancelled, a rejection's code"
    )
    reason: str = Field(description="pjsua's text for last_status ('Normal call clearing')")
    media: MediaStatus
    media_direction: Direction
    media_transport: str = Field(
        default="", description="its audio stream's transport: RTP/AVP, RTP/SAVP (SRTP) ..."
    )
    remote_rtp: str = Field(
        default="", description="where its audio stream sends RTP: the far end's SDP address"
    )
    rtp: RtpStats
    early_rtp: RtpStats = Field(
        default_factory=RtpStats,
        description="the part of `rtp` counted before the answer: early media after a 183",
    )
    dtmf_received: list[DtmfDigit]
    answered_at: float | None = Field(
        default=None, description="UNIX time it was confirmed (the ACK of its 200)"
    )
    ended_at: float | None = Field(
        default=None,
        description="UNIX time pjsua ended it: when a BYE or CANCEL arrived, a final response "
        "came, or this sim's own BYE was answered (or timed out, 32 s later)",
    )
    ended_by: EndedBy | None = Field(
        default=None,
        description="remote: a message from the far end ended it (BYE, CANCEL, a final "
        "error response); local: this sim did (a hangup, a session timer, a replacement)",
    )
    transfer: list[TransferNotify] = Field(
        default_factory=list, description="progress of the transfer this sim asked for"
    )
    referred_to: str = Field(default="", description="the Refer-To of a REFER received on it")
    replaced_by: str = Field(
        default="",
        description="the id of the call that took its place: the call a REFER made this "
        "sim place, or the INVITE with Replaces that replaced it",
    )
    replaces: str = Field(default="", description="the id of the call this one took over")

    @property
    def digits(self) -> str:
        return "".join(d.digit for d in self.dtmf_received)

    @property
    def ended(self) -> bool:
        return self.state == "disconnected"


class SipMessage(BaseModel):
    """A SIP request or response of a call, as it went on the wire.

    In the order pjsua reported them, which is not always the wire's: a PRACK is logged
    before the 183 it acknowledges, and nothing is logged once the call has ended (the
    answer to a BYE that arrived). ACKs are not transactions and never appear."""

    direction: MessageDirection = Field(description="in: it arrived; out: this sim sent it")
    at: float = Field(description="UNIX time it arrived or was sent")
    method: str = Field(description="the request's method; for a response, its CSeq method")
    status: int = Field(description="the response's status code; 0 for a request")
    start_line: str
    headers: list[tuple[str, str]] = Field(
        description="every header line in order, compact names written out (k: -> Supported)"
    )
    body: str = Field(description="the body (SDP, sipfrag); empty if none")

    @classmethod
    def parse(cls, raw: str, direction: MessageDirection, at: float) -> SipMessage:
        """A message as pjsip received or sent it (`wholeMsg`); raises ParseError."""
        msg = parse(raw.encode("utf-8", "surrogateescape"))
        head = raw.split("\r\n", 1)[0]
        if isinstance(msg, Request):
            method, status = msg.method, 0
        else:
            method, status = msg.cseq.method, msg.status
        return cls(
            direction=direction,
            at=at,
            method=method,
            status=status,
            start_line=head,
            headers=list(msg.headers),
            body=msg.body.decode("utf-8", "replace"),
        )

    def header(self, name: str) -> list[str]:
        """Every value of a header (any case, compact or full name), list values split."""
        return Headers(self.headers).values(name)


class SipPresence(BaseModel):
    vanished_at: float | None = Field(
        description="UNIX time the sim stopped reading and sending SIP; null while it answers"
    )


class PlaceCall(BaseModel):
    calling: str = Field(
        pattern=rf"{NUMBER}|^{ANONYMOUS}$",
        description="the extension or number; `anonymous` sends "
        'From: "Anonymous" <sip:anonymous@anonymous.invalid> (RFC 3323)',
    )
    called: str = Field(pattern=NUMBER, description="the number to dial")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="extra headers for the INVITE, e.g. P-Asserted-Identity, Privacy, "
        "Diversion, History-Info (not those pjsua writes itself: Via, From, To, ...)",
    )

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if TOKEN.fullmatch(name) is None or "\r" in text or "\n" in text:
                raise ValueError(f"not a header line: {name!r}")
            if name_key(name)[0] in _OWN_HEADERS:
                raise ValueError(f"{name} is pjsua's to write")
        return value


class SendDtmf(BaseModel):
    digits: str = Field(pattern=r"^[0-9*#A-Da-d]{1,32}$")


class Hangup(BaseModel):
    code: int | None = Field(
        default=None, ge=300, le=699, description="reject code for an unanswered inbound call"
    )


class Answer(BaseModel):
    code: Literal[180, 183, 200] = Field(
        default=200,
        description="200 answers; 180 rings; 183 sends SDP and starts early media. Reliable "
        "(RFC 3262) when 100rel was negotiated",
    )


class Transfer(BaseModel):
    """Exactly one of the two: a blind transfer to a number, or an attended one."""

    to: str | None = Field(
        default=None,
        pattern=NUMBER,
        description="blind: REFER with Refer-To sip:<to>@<trunk> (where this sim sends calls)",
    )
    replaces: str | None = Field(
        default=None,
        description="attended: the id of this sim's other call, whose far end the REFER's "
        "Refer-To names with ?Replaces= that call's dialog (RFC 3891)",
    )

    @model_validator(mode="after")
    def _one(self) -> Transfer:
        if (self.to is None) == (self.replaces is None):
            raise ValueError("give one of `to` (blind) and `replaces` (attended)")
        return self
