"""What a simulated trunk's control API says and accepts: calls as plain, typed values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

CallDirection = Literal["outbound", "inbound"]
CallState = Literal["calling", "incoming", "early", "connecting", "confirmed", "disconnected"]
# pjsua's media status: whose hold it is matters to the test that holds
MediaStatus = Literal["none", "active", "local_hold", "remote_hold", "error"]
Direction = Literal["inactive", "sendonly", "recvonly", "sendrecv"]
DtmfMethod = Literal["rfc4733", "sip-info"]


class RtpStats(BaseModel):
    """RTP packets and payload bytes pjmedia counted on the call's audio stream, summed over
    the streams a re-INVITE may have re-created."""

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0


class DtmfDigit(BaseModel):
    digit: str
    method: DtmfMethod


class CallView(BaseModel):
    id: str
    direction: CallDirection
    local: str = Field(description="the extension or number on this trunk's side")
    remote: str = Field(description="the number dialled (outbound) or the caller (inbound)")
    called: str = Field(description="the called number, as it arrived or was dialled")
    sip_call_id: str
    state: CallState
    last_status: int = Field(description="the last SIP status seen (0 before any)")
    reason: str
    media: MediaStatus
    media_direction: Direction
    rtp: RtpStats
    dtmf_received: list[DtmfDigit]

    @property
    def digits(self) -> str:
        return "".join(d.digit for d in self.dtmf_received)

    @property
    def ended(self) -> bool:
        return self.state == "disconnected"


class PlaceCall(BaseModel):
    calling: str = Field(pattern=r"^\+?[0-9*#]{1,32}$", description="the extension or number")
    called: str = Field(pattern=r"^\+?[0-9*#]{1,32}$", description="the number to dial")


class SendDtmf(BaseModel):
    digits: str = Field(pattern=r"^[0-9*#A-Da-d]{1,32}$")


class Hangup(BaseModel):
    code: int | None = Field(
        default=None, ge=300, le=699, description="reject code for an unanswered inbound call"
    )
