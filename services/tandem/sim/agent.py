"""One simulated trunk's SIP user agent: the pjsua2 Endpoint, its calls, and their audio.

pjsua2 allows one Endpoint per process and is not safe to drive from arbitrary Python
threads, so everything pjsua2 lives on one thread that this module owns: it creates the
library, polls it (`threadCnt = 0`, `mainThreadOnly`, so every callback also lands here),
and runs the commands other threads `submit`. Callers only ever see `CallView` values;
no pjsua2 object leaves this thread, so none is destroyed on another.

Because that one poll is all the SIP there is, `vanish` stops it: SIP then waits unread
in the socket and nothing is sent (no BYE, no refresh, no retransmission), as when a box
dies or its network goes, while pjmedia's own threads keep the RTP going.

Transfers follow pjsua's defaults: a REFER is accepted (202) and the call to its
Refer-To placed at once; an INVITE with Replaces is answered and the call it names ended
(BYE). The sim only adds the bookkeeping (which call replaced which) and, as a phone
does, leaves a call it transferred once the final NOTIFY says the transfer worked.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pjsua2 as pj

from tandem.sim.config import ANSWERED, Kind, Pbx, Sim, SimTls
from tandem.sim.views import (
    ANONYMOUS,
    CallDirection,
    CallState,
    CallView,
    Direction,
    DtmfDigit,
    DtmfMethod,
    EndedBy,
    MediaStatus,
    MessageDirection,
    RtpStats,
    SipMessage,
    SipPresence,
    TransferNotify,
)
from tandem.sip.message import ParseError

log = logging.getLogger("tandem.sim")

T = TypeVar("T")

POLL_MS = 10
STATS_EVERY_S = 0.2
START_TIMEOUT_S = 20.0
STOP_DRAIN_S = 2.0
MAX_RECORDS = 1000  # ended calls kept to report on; a sim left running must not grow
ADOPT_TIMEOUT_S = 5.0  # pjsua starts a transfer's call at once, or never
MAX_MESSAGES = 48  # SIP messages kept per call: the first (the INVITE) and the latest
CLOCK_RATE = 8000
TONE_HZ = (350, 440)  # dial tone: any steady signal, so every frame carries audio
AUDIO_CODECS = ("PCMU/8000", "PCMA/8000")  # cheap to encode on a busy machine

_STATES: dict[int, CallState] = {
    pj.PJSIP_INV_STATE_NULL: "calling",
    pj.PJSIP_INV_STATE_CALLING: "calling",
    pj.PJSIP_INV_STATE_INCOMING: "incoming",
    pj.PJSIP_INV_STATE_EARLY: "early",
    pj.PJSIP_INV_STATE_CONNECTING: "connecting",
    pj.PJSIP_INV_STATE_CONFIRMED: "confirmed",
    pj.PJSIP_INV_STATE_DISCONNECTED: "disconnected",
}
_MEDIA: dict[int, MediaStatus] = {
    pj.PJSUA_CALL_MEDIA_NONE: "none",
    pj.PJSUA_CALL_MEDIA_ACTIVE: "active",
    pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "local_hold",
    pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "remote_hold",
    pj.PJSUA_CALL_MEDIA_ERROR: "error",
}
_DIRECTIONS: dict[int, Direction] = {
    pj.PJMEDIA_DIR_NONE: "inactive",
    pj.PJMEDIA_DIR_ENCODING: "sendonly",
    pj.PJMEDIA_DIR_DECODING: "recvonly",
    pj.PJMEDIA_DIR_ENCODING_DECODING: "sendrecv",
}
_PRACK = {
    "not_used": pj.PJSUA_100REL_NOT_USED,
    "optional": pj.PJSUA_100REL_OPTIONAL,
    "mandatory": pj.PJSUA_100REL_MANDATORY,
}
_TIMER = {
    "inactive": pj.PJSUA_SIP_TIMER_INACTIVE,
    "optional": pj.PJSUA_SIP_TIMER_OPTIONAL,
    "required": pj.PJSUA_SIP_TIMER_REQUIRED,
    "always": pj.PJSUA_SIP_TIMER_ALWAYS,
}
_SRTP = {
    "off": (pj.PJMEDIA_SRTP_DISABLED, ()),
    "sdes": (pj.PJMEDIA_SRTP_MANDATORY, (pj.PJMEDIA_SRTP_KEYING_SDES,)),
    "dtls": (pj.PJMEDIA_SRTP_MANDATORY, (pj.PJMEDIA_SRTP_KEYING_DTLS_SRTP,)),
}
_TRANSPORTS = {
    pj.PJMEDIA_TP_PROTO_RTP_AVP: "RTP/AVP",
    pj.PJMEDIA_TP_PROTO_RTP_SAVP: "RTP/SAVP",
    pj.PJMEDIA_TP_PROTO_RTP_AVPF: "RTP/AVPF",
    pj.PJMEDIA_TP_PROTO_RTP_SAVPF: "RTP/SAVPF",
    pj.PJMEDIA_TP_PROTO_DTLS_SRTP: "UDP/TLS/RTP/SAVP",
    pj.PJMEDIA_TP_PROTO_DTLS_SRTPF: "UDP/TLS/RTP/SAVPF",
}
_REQUEST_URI_USER = re.compile(r"^INVITE\s+(?:sips?|tel):([^@;>\s]+)", re.IGNORECASE)
_URI_USER = re.compile(r"(?:sips?|tel):([^@;>\s]+)", re.IGNORECASE)
ANONYMOUS_URI = '"Anonymous" <sip:anonymous@anonymous.invalid>'  # RFC 3323 section 4.1.1.3


class CallNotFound(KeyError):
    pass


class CallOperationError(RuntimeError):
    """pjsua2 refused an operation on a call (wrong state, no media, ...)."""


@dataclass
class _Record:
    """Everything reported about one call; outlives the pjsua2 Call object."""

    id: str
    direction: CallDirection
    local: str
    remote: str
    called: str
    sip_call_id: str = ""
    state: CallState = "calling"
    last_status: int = 0
    reason: str = ""
    media: MediaStatus = "none"
    media_direction: Direction = "inactive"
    media_transport: str = ""
    remote_rtp: str = ""
    closed_rtp: RtpStats = field(default_factory=RtpStats)  # streams already destroyed
    live_rtp: RtpStats = field(default_factory=RtpStats)  # the current stream, last polled
    early_rtp: RtpStats | None = None  # the RTP count when it left the early state
    dtmf: list[DtmfDigit] = field(default_factory=list)
    answered_at: float | None = None
    ended_at: float | None = None
    hanging_up: bool = False  # this sim asked to end it: what ends it next is its doing
    far_end_ended: bool = False  # a BYE, CANCEL or final error response arrived
    transfer: list[TransferNotify] = field(default_factory=list)
    referred_to: str = ""
    replaced_by: str = ""
    replaces: str = ""
    messages: list[SipMessage] = field(default_factory=list)
    last_message: str = ""  # as pjsip gave it

    def rtp(self) -> RtpStats:
        return self.closed_rtp + self.live_rtp

    def add_message(self, raw: str, direction: MessageDirection) -> None:
        self.last_message = raw
        try:
            message = SipMessage.parse(raw, direction, time.time())
        except (ParseError, ValueError) as exc:  # pjsip took it: rare, so say so and go on
            log.warning("call %s: unparsed SIP message: %s", self.id, exc)
            return
        if len(self.messages) >= MAX_MESSAGES:
            del self.messages[1]
        self.messages.append(message)
        if direction == "out":
            return
        if message.method in ("BYE", "CANCEL") and not message.status:
            self.far_end_ended = True
        elif message.method == "INVITE" and message.status >= 300 and not self.answered_at:
            self.far_end_ended = True  # the call's INVITE refused (a re-INVITE's never ends it)

    @property
    def ended_by(self) -> EndedBy | None:
        # pjsua tells the end, not whose doing it was; the messages that arrived do
        if self.ended_at is None:
            return None
        return "remote" if self.far_end_ended and not self.hanging_up else "local"

    def view(self) -> CallView:
        rtp = self.rtp()
        early = rtp if self.state == "early" else self.early_rtp
        return CallView(
            id=self.id,
            direction=self.direction,
            local=self.local,
            remote=self.remote,
            called=self.called,
            sip_call_id=self.sip_call_id,
            state=self.state,
            last_status=self.last_status,
            reason=self.reason,
            media=self.media,
            media_direction=self.media_direction,
            media_transport=self.media_transport,
            remote_rtp=self.remote_rtp,
            rtp=rtp,
            early_rtp=early or RtpStats(),
            dtmf_received=list(self.dtmf),
            answered_at=self.answered_at,
            ended_at=self.ended_at,
            ended_by=self.ended_by,
            transfer=list(self.transfer),
            referred_to=self.referred_to,
            replaced_by=self.replaced_by,
            replaces=self.replaces,
        )


def _reason(exc: BaseException) -> str:
    """pjsua2's Error carries its text in info(), not in str()."""
    info = getattr(exc, "info", None)
    return str(info()) if callable(info) else str(exc)


def _stream_rtp(call: pj.Call, index: int) -> RtpStats | None:
    try:
        stat = call.getStreamStat(index).rtcp
    except pj.Error:
        return None
    return RtpStats(
        tx_packets=stat.txStat.pkt,
        tx_bytes=stat.txStat.bytes,
        rx_packets=stat.rxStat.pkt,
        rx_bytes=stat.rxStat.bytes,
        rx_lost=stat.rxStat.loss,
    )


class _Call(pj.Call):  # type: ignore[misc]  # pjsua2 is untyped
    """A pjsua2 call that keeps its record current from pjsua2's callbacks."""

    def __init__(self, agent: UserAgent, account: pj.Account, record: _Record, call_id: int):
        super().__init__(account, call_id)
        self.agent = agent
        self.account = account
        self.record = record

    def audio_index(self) -> int | None:
        info = self.getInfo()  # keep it alive: its media vector dies with it
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO:
                return int(media.index)
        return None

    def poll_rtp(self) -> None:
        try:
            index = self.audio_index()
        except pj.Error:
            return  # a call pjsua has not started yet (a transfer's, before its INVITE)
        if index is not None:
            rtp = _stream_rtp(self, index)
            if rtp is not None:
                self.record.live_rtp = rtp

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.add_message(prm.e, unless_last=True)  # a final response only comes here
        r = self.record
        was = r.state
        r.state = _STATES.get(info.state, r.state)
        r.sip_call_id = info.callIdString
        if not r.remote:  # a call pjsua placed or took on its own: a transfer's
            remote = _URI_USER.search(str(info.remoteUri))
            r.remote = remote.group(1) if remote else str(info.remoteUri)
        if info.lastStatusCode:
            r.last_status = int(info.lastStatusCode)
            r.reason = str(info.lastReason)
        if was == "early" and r.state != "early":
            self.poll_rtp()
            r.early_rtp = r.rtp()
        if r.state == "confirmed" and r.answered_at is None:
            r.answered_at = time.time()
        if r.state == "disconnected":
            r.ended_at = time.time()
            r.media, r.media_direction = "none", "inactive"
            self.agent.forget(self)

    def onCallTsxState(self, prm: Any) -> None:
        self.add_message(prm.e)

    def add_message(self, event: Any, unless_last: bool = False) -> None:
        """Log the SIP message a transaction event carries, if it carries one."""
        if event.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        direction: MessageDirection
        if event.body.tsxState.type == pj.PJSIP_EVENT_RX_MSG:
            raw, direction = str(event.body.tsxState.src.rdata.wholeMsg), "in"
        elif event.body.tsxState.type == pj.PJSIP_EVENT_TX_MSG:
            raw, direction = str(event.body.tsxState.src.tdata.wholeMsg), "out"
        else:
            return
        if not (unless_last and raw == self.record.last_message):
            self.record.add_message(raw, direction)

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        for media in info.media:
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            self.record.media = _MEDIA.get(media.status, "error")
            self.record.media_direction = _DIRECTIONS.get(media.dir, "inactive")
            with contextlib.suppress(pj.Error):  # no stream (inactive): nothing to say
                stream = self.getStreamInfo(media.index)
                self.record.media_transport = _TRANSPORTS.get(stream.proto, str(stream.proto))
                self.record.remote_rtp = str(stream.remoteRtpAddress)
            if media.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                # the stream may be new after a re-INVITE: (re)connect the audio source
                self.agent.tone.startTransmit(self.getAudioMedia(media.index))

    def onStreamDestroyed(self, prm: Any) -> None:
        # counters restart with a new stream; keep what the old one counted
        rtp = _stream_rtp(self, prm.streamIdx) or self.record.live_rtp
        self.record.closed_rtp = self.record.closed_rtp + rtp
        self.record.live_rtp = RtpStats()

    def onDtmfDigit(self, prm: Any) -> None:
        info = prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO
        method: DtmfMethod = "sip-info" if info else "rfc4733"
        self.record.dtmf.append(DtmfDigit(digit=str(prm.digit), method=method))

    def onCallTransferRequest(self, prm: Any) -> None:
        # pjsua accepts (202) and calls the Refer-To; it reports on a Call of our own
        prm.newCall = self.agent.referred(self, str(prm.dstUri))

    def onCallTransferStatus(self, prm: Any) -> None:
        r = self.record
        notify = TransferNotify(
            status=int(prm.statusCode), reason=str(prm.reason), final=bool(prm.finalNotify)
        )
        r.transfer.append(notify)
        if notify.final and 200 <= notify.status < 300:
            self.agent.after(0, lambda: self.agent.leave_transferred(r.id))

    def onCallReplaceRequest(self, prm: Any) -> None:
        # pjsua answers the INVITE with Replaces and ends this call; track the new one
        prm.newCall = self.agent.replacing(self, str(prm.rdata.wholeMsg))


class _Account(pj.Account):  # type: ignore[misc]
    """One identity on the trunk (a phone's extension, a gateway's calling number)."""

    def __init__(self, agent: UserAgent) -> None:
        super().__init__()
        self.agent = agent

    def onIncomingCall(self, prm: Any) -> None:
        self.agent.incoming(self, prm)


class UserAgent:
    """A simulated trunk's SIP user agent, run on its own thread; thread-safe to command."""

    def __init__(self, sim: Sim, kind: Kind, pjsip_log_level: int = 1) -> None:
        self.sim = sim
        self.kind = kind
        self.pjsip_log_level = pjsip_log_level
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._call_ids = itertools.count(1)
        self._timer_seq = itertools.count()
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"pjsua-{sim.id}", daemon=True)
        # pjsua thread only, from here on
        self.records: dict[str, _Record] = {}
        self.calls: dict[str, _Call] = {}
        self._accounts: dict[str, _Account] = {}
        self._dead: list[_Call] = []
        self._vanished_at: float | None = None
        self.tone: Any = None
        self._endpoint: Any = None

    # --- any thread ---

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise RuntimeError(f"sim {self.sim.id}: pjsua2 did not start")
        if self._failure is not None:
            raise RuntimeError(f"sim {self.sim.id}: {self._failure}") from self._failure

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(START_TIMEOUT_S)

    @property
    def ready(self) -> bool:
        return self._started.is_set() and self._failure is None and self._thread.is_alive()

    def submit(self, command: Callable[[], T]) -> Future[T]:
        """Run `command` on the pjsua2 thread; its result or exception lands in the future."""
        done: Future[T] = Future()
        if not self._thread.is_alive():
            done.set_exception(RuntimeError("the user agent is not running"))
        else:
            self._commands.put((command, done))
        return done

    # --- commands: pjsua2 thread only (pass them to submit) ---

    def place_call(
        self, calling: str, called: str, headers: dict[str, str] | None = None
    ) -> CallView:
        self._present()
        account = self._account(calling)
        record = _Record(self._next_id(), "outbound", calling, called, called)
        call = _Call(self, account, record, pj.PJSUA_INVALID_ID)
        op = pj.CallOpParam(True)
        for name, value in (headers or {}).items():
            header = pj.SipHeader()
            header.hName, header.hValue = name, value
            op.txOption.headers.append(header)
        self._attempt(lambda: call.makeCall(self._trunk_uri(called), op))
        self.records[record.id] = record
        self.calls[record.id] = call
        record.sip_call_id = call.getInfo().callIdString
        return record.view()

    def views(self) -> list[CallView]:
        self._poll_rtp()
        return [r.view() for r in self.records.values()]

    def view(self, call_id: str) -> CallView:
        if call_id not in self.records:
            raise CallNotFound(call_id)
        if call_id in self.calls:
            self.calls[call_id].poll_rtp()
        return self.records[call_id].view()

    def messages(self, call_id: str) -> list[SipMessage]:
        if call_id not in self.records:
            raise CallNotFound(call_id)
        return list(self.records[call_id].messages)

    def answer(self, call_id: str, code: int) -> CallView:
        call = self._live(call_id)
        if call.record.direction != "inbound" or call.record.state not in ("incoming", "early"):
            raise CallOperationError(f"call {call_id} is not an inbound call still ringing")
        op = pj.CallOpParam(True)
        op.statusCode = code
        self._attempt(lambda: call.answer(op))
        return call.record.view()

    def send_dtmf(self, call_id: str, digits: str) -> CallView:
        call = self._live(call_id)
        self._attempt(lambda: call.dialDtmf(digits))  # RFC 4733 events: pjsua's default
        return call.record.view()

    def hold(self, call_id: str) -> CallView:
        call = self._live(call_id)
        self._attempt(lambda: call.setHold(pj.CallOpParam(True)))  # re-INVITE, a=sendonly
        return call.record.view()

    def resume(self, call_id: str) -> CallView:
        call = self._live(call_id)
        op = pj.CallOpParam(True)
        op.opt.flag = pj.PJSUA_CALL_UNHOLD  # re-INVITE, a=sendrecv
        self._attempt(lambda: call.reinvite(op))
        return call.record.view()

    def hangup(self, call_id: str, code: int | None = None) -> CallView:
        call = self._live(call_id)
        op = pj.CallOpParam(True)
        if code is not None:
            op.statusCode = code
        call.poll_rtp()
        call.record.hanging_up = True
        self._attempt(lambda: call.hangup(op))
        return call.record.view()

    def transfer(self, call_id: str, to: str | None, replaces: str | None) -> CallView:
        """REFER: blind to a number through the trunk, or attended (Replaces) to the far end
        of this sim's call `replaces`."""
        call = self._live(call_id)
        op = pj.CallOpParam(True)
        if replaces is not None:
            other = self._live(replaces)
            self._attempt(lambda: call.xferReplaces(other, op))
        elif to is not None:
            self._attempt(lambda: call.xfer(self._trunk_uri(to), op))
        return call.record.view()

    def vanish(self) -> SipPresence:
        if self._vanished_at is None:
            self._vanished_at = time.time()
            log.info("%s: vanished: no SIP in or out", self.sim.id)
        return SipPresence(vanished_at=self._vanished_at)

    def reappear(self) -> SipPresence:
        if self._vanished_at is not None:
            self._vanished_at = None
            log.info("%s: back: reading the SIP that waited", self.sim.id)
        return SipPresence(vanished_at=None)

    def presence(self) -> SipPresence:
        return SipPresence(vanished_at=self._vanished_at)

    # --- pjsua2 thread internals ---

    def incoming(self, account: _Account, prm: Any) -> None:
        message = str(prm.rdata.wholeMsg)
        found = _REQUEST_URI_USER.search(message)
        called = found.group(1) if found else ""
        reply = self.sim.reply_for(called)
        local = called
        if isinstance(self.sim, Pbx):
            local = self.sim.extension_for(called) or called
        record = _Record(self._next_id(), "inbound", local, "", called, state="incoming")
        record.add_message(message, "in")
        call = _Call(self, account, record, prm.callId)
        info = call.getInfo()
        remote = _URI_USER.search(str(info.remoteUri))
        record.remote = remote.group(1) if remote else str(info.remoteUri)
        record.sip_call_id = str(info.callIdString)
        self.records[record.id] = record
        self.calls[record.id] = call
        log.info("%s: %s calls %s: reply %d", self.sim.id, record.remote, called, reply)
        op = pj.CallOpParam(True)
        # inside a pjsua2 callback: log a refusal, never raise through pjsua2
        if reply >= 300:
            op.statusCode = reply
            self._logged(record.id, "reject", lambda: call.hangup(op))
            return
        op.statusCode = self.sim.progress if reply == ANSWERED else reply
        self._logged(record.id, "ring", lambda: call.answer(op))
        if reply == ANSWERED:
            self.after(self.sim.answer_after_s, lambda: self._answer(record.id))

    def referred(self, call: _Call, refer_to: str) -> _Call:
        """A REFER arrived on `call`: the Call that reports on the call pjsua now places."""
        old = call.record
        found = _URI_USER.search(refer_to)
        called = found.group(1) if found else refer_to
        record = _Record(self._next_id(), "outbound", old.local, called, called)
        record.replaces, old.replaced_by, old.referred_to = old.id, record.id, refer_to
        log.info("%s: call %s referred to %s: call %s", self.sim.id, old.id, refer_to, record.id)
        return self._adopt(call, record)

    def replacing(self, call: _Call, invite: str) -> _Call:
        """An INVITE with Replaces names `call`: the Call that reports on the new one."""
        old = call.record
        found = _REQUEST_URI_USER.search(invite)
        record = _Record(self._next_id(), "inbound", old.local, "", found.group(1) if found else "")
        record.state = "incoming"
        record.add_message(invite, "in")
        record.replaces, old.replaced_by = old.id, record.id
        log.info("%s: call %s replaced by call %s", self.sim.id, old.id, record.id)
        return self._adopt(call, record)

    def leave_transferred(self, call_id: str) -> None:
        """The far end took the transfer: hang up, as the phone that transferred it would."""
        call = self.calls.get(call_id)
        if call is not None and call.record.state != "disconnected":
            call.record.hanging_up = True
            self._logged(call_id, "hang up transferred", lambda: call.hangup(pj.CallOpParam(True)))

    def forget(self, call: _Call) -> None:
        """A call ended: drop its pjsua2 object later, outside pjsua2's own callback."""
        if self.calls.pop(call.record.id, None) is not None:
            self._dead.append(call)
        excess = len(self.records) - MAX_RECORDS
        if excess > 0:
            for ended in [i for i in self.records if i not in self.calls][:excess]:
                del self.records[ended]

    def after(self, delay_s: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._timer_seq), action))

    def _adopt(self, parent: _Call, record: _Record) -> _Call:
        # pjsua2 hands the new call's id to this Call at its first callback (Call::lookup)
        call = _Call(self, parent.account, record, pj.PJSUA_INVALID_ID)
        self.records[record.id] = record
        self.calls[record.id] = call
        self.after(ADOPT_TIMEOUT_S, lambda: self._abandoned(record.id))
        return call

    def _abandoned(self, call_id: str) -> None:
        """pjsua never started the call it was given (it could not place the INVITE)."""
        call = self.calls.get(call_id)
        if call is not None and call.getId() == pj.PJSUA_INVALID_ID:
            del self.calls[call_id]
            call.record.state, call.record.reason = "disconnected", "not started by pjsua"
            call.record.ended_at = time.time()
            self._dead.append(call)

    def _answer(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.record.state not in ("incoming", "early"):
            return  # the caller gave up while the phone rang, or a test answered first
        op = pj.CallOpParam(True)
        op.statusCode = 200
        self._logged(call_id, "answer", lambda: call.answer(op))

    def _present(self) -> None:
        if self._vanished_at is not None:
            raise CallOperationError("this sim has vanished (no SIP): POST /v1/sip/reappear")

    def _trunk_uri(self, number: str) -> str:
        host, port = self.sim.trunk_address
        suffix = ";transport=tls" if self.sim.tls is not None else ""
        return f"sip:{number}@{host}:{port}{suffix}"

    def _live(self, call_id: str) -> _Call:
        self._present()
        if call_id not in self.records:
            raise CallNotFound(call_id)
        call = self.calls.get(call_id)
        if call is None:
            raise CallOperationError(f"call {call_id} has ended")
        return call

    @staticmethod
    def _attempt(operation: Callable[[], object]) -> None:
        try:
            operation()
        except pj.Error as exc:
            raise CallOperationError(_reason(exc)) from None

    def _logged(self, call_id: str, what: str, operation: Callable[[], object]) -> None:
        try:
            operation()
        except pj.Error as exc:
            log.warning("%s: could not %s call %s: %s", self.sim.id, what, call_id, _reason(exc))

    def _next_id(self) -> str:
        return str(next(self._call_ids))

    def _account(self, user: str) -> _Account:
        account = self._accounts.get(user)
        if account is None:
            account = _Account(self)
            account.create(self._account_config(user), not self._accounts)
            self._accounts[user] = account
        return account

    def _account_config(self, user: str) -> Any:
        host, port = self.sim.sip_address
        first, last = self.sim.rtp_ports
        cfg = pj.AccountConfig()
        cfg.idUri = ANONYMOUS_URI if user == ANONYMOUS else f"sip:{user}@{host}:{port}"
        cfg.mediaConfig.transportConfig.boundAddress = host
        cfg.mediaConfig.transportConfig.publicAddress = host
        cfg.mediaConfig.transportConfig.port = first
        cfg.mediaConfig.transportConfig.portRange = last - first
        cfg.mediaConfig.lockCodecEnabled = False  # no extra re-INVITE to settle codecs
        use, keyings = _SRTP[self.sim.srtp]
        cfg.mediaConfig.srtpUse = use
        cfg.mediaConfig.srtpSecureSignaling = 0  # SRTP over plain SIP/UDP, as trunks do
        if keyings:
            cfg.mediaConfig.srtpOpt.keyings = pj.IntVector(list(keyings))
        cfg.callConfig.prackUse = _PRACK[self.sim.prack]
        cfg.callConfig.timerUse = _TIMER[self.sim.session_timer]
        cfg.callConfig.timerSessExpiresSec = self.sim.session_expires_s
        cfg.callConfig.timerMinSESec = self.sim.min_se_s
        return cfg

    def _poll_rtp(self) -> None:
        for call in self.calls.values():
            call.poll_rtp()

    def _run(self) -> None:
        try:
            self._create()
        except BaseException as exc:  # reported to start(), which raises it
            self._failure = RuntimeError(_reason(exc)) if isinstance(exc, pj.Error) else exc
            self._abandon()
            self._started.set()
            return
        self._started.set()
        try:
            self._loop()
        finally:
            self._destroy()

    def _create(self) -> None:
        ep = self._endpoint = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 64
        cfg.uaConfig.userAgent = f"tandem-sim {self.kind} {self.sim.id}"
        cfg.logConfig.level = self.pjsip_log_level
        cfg.logConfig.consoleLevel = self.pjsip_log_level
        cfg.medConfig.noVad = True  # send every frame: RTP must flow, even in silence
        cfg.medConfig.ecTailLen = 0  # no echo canceller: nothing to cancel, CPU to save
        cfg.medConfig.clockRate = CLOCK_RATE
        cfg.medConfig.sndClockRate = CLOCK_RATE
        ep.libInit(cfg)
        host, port = self.sim.sip_address
        transport = pj.TransportConfig()
        transport.boundAddress = host
        transport.publicAddress = host
        transport.port = port
        ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
        if self.sim.tls is not None:
            ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, _tls_transport(host, self.sim.tls))
        ep.libStart()
        ep.audDevManager().setNullDev()
        for codec in ep.codecEnum2():
            wanted = codec.codecId.split("/")[0:2]
            ep.codecSetPriority(codec.codecId, 0)
            if "/".join(wanted) in AUDIO_CODECS:
                ep.codecSetPriority(codec.codecId, 255 - AUDIO_CODECS.index("/".join(wanted)))
        self.tone = pj.ToneGenerator()
        self.tone.createToneGenerator(CLOCK_RATE, 1)
        tone = pj.ToneDesc()
        tone.freq1, tone.freq2 = TONE_HZ
        tone.on_msec, tone.off_msec = 1000, 0
        tone.volume = 0
        tones = pj.ToneDescVector()
        tones.append(tone)
        self.tone.play(tones, True)
        # the default account answers calls to any user: the sim decides by Request-URI
        self._account(self.sim.id)
        tls = f", tls:{host}:{self.sim.tls.port}" if self.sim.tls is not None else ""
        log.info("sim %s %s: SIP on udp:%s%s", self.kind, self.sim.id, self.sim.sip, tls)

    def _loop(self) -> None:
        next_stats = time.monotonic()
        while not self._stopping.is_set():
            if self._vanished_at is None:
                self._endpoint.libHandleEvents(POLL_MS)
            else:
                time.sleep(POLL_MS / 1000)  # no SIP read, sent or retransmitted
            self._dead.clear()  # their pjsua2 callbacks have returned by now
            while True:
                try:
                    command, done = self._commands.get_nowait()
                except queue.Empty:
                    break
                if done.set_running_or_notify_cancel():
                    try:
                        done.set_result(command())
                    except Exception as exc:
                        done.set_exception(exc)
            now = time.monotonic()
            while self._vanished_at is None and self._timers and self._timers[0][0] <= now:
                _, _, action = heapq.heappop(self._timers)
                action()
            if now >= next_stats:
                self._poll_rtp()
                next_stats = now + STATS_EVERY_S

    def _abandon(self) -> None:
        """Start-up failed: release pjsua2 here, never from another thread at exit."""
        self.tone = None
        self._accounts.clear()
        if self._endpoint is not None:
            with contextlib.suppress(pj.Error):
                self._endpoint.libDestroy()
            self._endpoint = None

    def _destroy(self) -> None:
        ep = self._endpoint
        ep.hangupAllCalls()
        deadline = time.monotonic() + STOP_DRAIN_S
        while self.calls and time.monotonic() < deadline:
            ep.libHandleEvents(POLL_MS)
        self._dead.clear()
        self.calls.clear()
        for account in self._accounts.values():
            account.shutdown()
        self._accounts.clear()
        self.tone = None
        # the calls are over: skip pjsua's one-second wait for late messages
        ep.libDestroy(pj.PJSUA_DESTROY_NO_RX_MSG)
        self._endpoint = None


def _tls_transport(host: str, tls: SimTls) -> Any:
    """pjsua's TLS listener, also used for the TLS connections the sim opens: TLS 1.2 at
    least, its certificate presented, the peer's verified both ways."""
    transport = pj.TransportConfig()
    transport.boundAddress = host
    transport.publicAddress = host
    transport.port = tls.port
    config = transport.tlsConfig
    config.method = pj.PJSIP_TLSV1_2_METHOD
    config.CaListFile, config.certFile, config.privKeyFile = tls.ca, tls.cert, tls.key
    config.verifyServer = config.verifyClient = config.requireClientCert = True
    return transport
