"""One simulated trunk's SIP user agent: the pjsua2 Endpoint, its calls, and their audio.

pjsua2 allows one Endpoint per process and is not safe to drive from arbitrary Python
threads, so everything pjsua2 lives on one thread that this module owns: it creates the
library, polls it (`threadCnt = 0`, `mainThreadOnly`, so every callback also lands here),
and runs the commands other threads `submit`. Callers only ever see `CallView` values;
no pjsua2 object leaves this thread, so none is destroyed on another.
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

from tandem.sim.config import ANSWERED, Kind, Pbx, Sim
from tandem.sim.views import (
    CallDirection,
    CallState,
    CallView,
    Direction,
    DtmfDigit,
    DtmfMethod,
    MediaStatus,
    RtpStats,
)

log = logging.getLogger("tandem.sim")

T = TypeVar("T")

POLL_MS = 10
STATS_EVERY_S = 0.2
START_TIMEOUT_S = 20.0
STOP_DRAIN_S = 2.0
MAX_RECORDS = 1000  # ended calls kept to report on; a sim left running must not grow
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
_REQUEST_URI_USER = re.compile(r"^INVITE\s+(?:sips?|tel):([^@;>\s]+)", re.IGNORECASE)
_URI_USER = re.compile(r"(?:sips?|tel):([^@;>\s]+)", re.IGNORECASE)


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
    closed_rtp: RtpStats = field(default_factory=RtpStats)  # streams already destroyed
    live_rtp: RtpStats = field(default_factory=RtpStats)  # the current stream, last polled
    dtmf: list[DtmfDigit] = field(default_factory=list)

    def view(self) -> CallView:
        c, s = self.closed_rtp, self.live_rtp
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
            rtp=RtpStats(
                tx_packets=c.tx_packets + s.tx_packets,
                tx_bytes=c.tx_bytes + s.tx_bytes,
                rx_packets=c.rx_packets + s.rx_packets,
                rx_bytes=c.rx_bytes + s.rx_bytes,
            ),
            dtmf_received=list(self.dtmf),
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
    )


class _Call(pj.Call):  # type: ignore[misc]  # pjsua2 is untyped
    """A pjsua2 call that keeps its record current from pjsua2's callbacks."""

    def __init__(self, agent: UserAgent, account: pj.Account, record: _Record, call_id: int):
        super().__init__(account, call_id)
        self.agent = agent
        self.record = record

    def audio_index(self) -> int | None:
        info = self.getInfo()  # keep it alive: its media vector dies with it
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO:
                return int(media.index)
        return None

    def poll_rtp(self) -> None:
        index = self.audio_index()
        if index is not None:
            rtp = _stream_rtp(self, index)
            if rtp is not None:
                self.record.live_rtp = rtp

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        r = self.record
        r.state = _STATES.get(info.state, r.state)
        r.sip_call_id = info.callIdString
        if info.lastStatusCode:
            r.last_status = int(info.lastStatusCode)
            r.reason = str(info.lastReason)
        if r.state == "disconnected":
            r.media, r.media_direction = "none", "inactive"
            self.agent.forget(self)

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        for media in info.media:
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            self.record.media = _MEDIA.get(media.status, "error")
            self.record.media_direction = _DIRECTIONS.get(media.dir, "inactive")
            if media.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                # the stream may be new after a re-INVITE: (re)connect the audio source
                self.agent.tone.startTransmit(self.getAudioMedia(media.index))

    def onStreamDestroyed(self, prm: Any) -> None:
        # counters restart with a new stream; keep what the old one counted
        rtp = _stream_rtp(self, prm.streamIdx) or self.record.live_rtp
        c = self.record.closed_rtp
        self.record.closed_rtp = RtpStats(
            tx_packets=c.tx_packets + rtp.tx_packets,
            tx_bytes=c.tx_bytes + rtp.tx_bytes,
            rx_packets=c.rx_packets + rtp.rx_packets,
            rx_bytes=c.rx_bytes + rtp.rx_bytes,
        )
        self.record.live_rtp = RtpStats()

    def onDtmfDigit(self, prm: Any) -> None:
        info = prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO
        method: DtmfMethod = "sip-info" if info else "rfc4733"
        self.record.dtmf.append(DtmfDigit(digit=str(prm.digit), method=method))


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

    def place_call(self, calling: str, called: str) -> CallView:
        account = self._account(calling)
        record = _Record(self._next_id(), "outbound", calling, called, called)
        call = _Call(self, account, record, pj.PJSUA_INVALID_ID)
        host, port = self.sim.trunk_address
        op = pj.CallOpParam(True)
        try:
            call.makeCall(f"sip:{called}@{host}:{port}", op)
        except pj.Error as exc:
            raise CallOperationError(_reason(exc)) from None
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
        self._attempt(lambda: call.hangup(op))
        return call.record.view()

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
        op.statusCode = 180 if reply == ANSWERED else reply
        self._logged(record.id, "ring", lambda: call.answer(op))
        if reply == ANSWERED:
            self._after(self.sim.answer_after_s, lambda: self._answer(record.id))

    def forget(self, call: _Call) -> None:
        """A call ended: drop its pjsua2 object later, outside pjsua2's own callback."""
        if self.calls.pop(call.record.id, None) is not None:
            self._dead.append(call)
        excess = len(self.records) - MAX_RECORDS
        if excess > 0:
            for ended in [i for i in self.records if i not in self.calls][:excess]:
                del self.records[ended]

    def _answer(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.record.state == "disconnected":
            return  # the caller gave up while the phone rang
        op = pj.CallOpParam(True)
        op.statusCode = 200
        self._logged(call_id, "answer", lambda: call.answer(op))

    def _live(self, call_id: str) -> _Call:
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

    def _after(self, delay_s: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._timer_seq), action))

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
        cfg.idUri = f"sip:{user}@{host}:{port}"
        cfg.mediaConfig.transportConfig.boundAddress = host
        cfg.mediaConfig.transportConfig.publicAddress = host
        cfg.mediaConfig.transportConfig.port = first
        cfg.mediaConfig.transportConfig.portRange = last - first
        cfg.mediaConfig.lockCodecEnabled = False  # no extra re-INVITE to settle codecs
        cfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_INACTIVE
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
        log.info("sim %s %s: SIP on udp:%s", self.kind, self.sim.id, self.sim.sip)

    def _loop(self) -> None:
        next_stats = time.monotonic()
        while not self._stopping.is_set():
            self._endpoint.libHandleEvents(POLL_MS)
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
            while self._timers and self._timers[0][0] <= now:
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
