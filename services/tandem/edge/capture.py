"""SIP capture: every message an edge receives or sends, kept by call in TANDEM_SIP (and, when
configured, copied to a Homer collector as HEP v3), never at the cost of a call.

On the SIP path a message is only stamped with the time, given the call it belongs to (through
the edge's registry) and appended to a bounded queue; a full queue drops it, counted. One
task drains the queue every FLUSH_S: it cleans each message (Authorization values out,
numbers masked as telemetry.mask_numbers says, the body left out unless capture.bodies),
sends the HEP copies, and publishes one SipCapture per call on tandem.sip.<call>. At most
MAX_IN_FLIGHT of those publishes wait for JetStream at a time; a batch that finds them all
waiting (a slow bus) is dropped and counted, as is one the bus refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError
from prometheus_client import Counter

from tandem import bus, telemetry
from tandem.b2bua import Call
from tandem.config import Capture as Settings
from tandem.edge import hep
from tandem.edge.registry import Registry, Runner
from tandem.edge.transport import Peer
from tandem.pb import tandem_pb2 as pb
from tandem.sip.uri import split_host_port

log = logging.getLogger("tandem.edge.capture")

FLUSH_S = 0.2  # how long a message waits to be batched with its call's others
# JetStream publishes (one per call per flush) awaited at once: a healthy bus acks each
# within milliseconds, so only a slow one lets them pile up to this
MAX_IN_FLIGHT = 512
PUBLISH_TIMEOUT_S = 2.0
STOP_WAIT_S = 1.0  # for the last publishes when the edge stops
MAX_BATCH_BYTES = 32 * 1024  # a call's messages of one flush go in batches up to this size
MEMO_SIZE = 50_000  # SIP Call-IDs remembered with their call, for messages after its end

CAPTURED = Counter(
    "tandem_edge_capture_messages_total", "SIP messages stored in TANDEM_SIP", ["edge"]
)
DROPPED = Counter(
    "tandem_edge_capture_dropped_total",
    "Captured SIP messages dropped: queue_full, bus_slow, bus_error (TANDEM_SIP), hep_error",
    ["edge", "reason"],
)

IN, OUT = pb.SipMessage.IN, pb.SipMessage.OUT
SECRET_HEADERS = frozenset({b"authorization", b"proxy-authorization"})
REDACTED = b"<redacted>"
_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.I | re.M)
_TAGS = re.compile(rb"^(?:from|f|to|t)[ \t]*:[^\r\n]*?;[ \t]*tag=([^;>\s,]+)", re.I | re.M)
_CSEQ = re.compile(rb"^cseq[ \t]*:[ \t]*(\d+)[ \t]+(\S+)", re.I | re.M)
_URI_NUMBER = re.compile(rb"((?:sips?|tel):\+?)(\d+)")
_QUOTED_NUMBER = re.compile(rb'"(\+?)(\d+)"')


class Owner(NamedTuple):
    call_id: str
    leg_id: str  # "" for the caller's dialog
    trunk: str


class Item(NamedTuple):
    """A message as the SIP path queues it: nothing is parsed or copied there but the keys."""

    time_unix_us: int
    direction: pb.SipMessage.Direction
    data: bytes
    peer: Peer
    sip_call_id: str
    owner: Owner | None


@dataclass
class Batch:
    """One publish: messages of one subject, up to MAX_BATCH_BYTES."""

    subject: str
    capture: pb.SipCapture = field(default_factory=pb.SipCapture)
    size: int = 0


def owner_of(runner: Runner) -> Owner:
    machine = runner.machine
    if isinstance(machine, Call):
        return Owner(machine.id, "", runner.trunk)
    return Owner(machine.call_id, machine.id, runner.trunk)


def clean(data: bytes, mask: bool, bodies: bool) -> bytes:
    """The message as capture keeps it: no credentials, numbers masked, the body if wanted."""
    head, separator, body = data.partition(b"\r\n\r\n")
    lines: list[bytes] = []
    secret = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):  # the folded continuation of the header above
            if not secret:
                lines.append(line)
            continue
        name, colon, _ = line.partition(b":")
        key = name.strip().lower()
        secret = bool(colon) and key in SECRET_HEADERS
        if secret:
            line = name + b": " + REDACTED
        elif not bodies and body and key in (b"content-length", b"l"):
            line = name + b": 0"
        lines.append(line)
    kept = b"\r\n".join(lines) + separator + (body if bodies else b"")
    if not mask:
        return kept
    kept = _URI_NUMBER.sub(lambda m: m[1] + _masked(m[2]), kept)
    return _QUOTED_NUMBER.sub(lambda m: b'"' + m[1] + _masked(m[2]) + b'"', kept)


def _masked(digits: bytes) -> bytes:
    return telemetry.mask_number(digits.decode(), True).encode()


def summary(message: pb.SipMessage, data: bytes) -> None:
    """Method, status, reason and CSeq from the start line and CSeq header."""
    first = data.split(b"\r\n", 1)[0]
    if first.startswith(b"SIP/2.0 ") and first[8:11].isdigit():
        message.status = int(first[8:11])
        message.reason = first[12:].decode(errors="replace")
    else:
        message.method = first.split(b" ", 1)[0].decode(errors="replace")
    cseq = _CSEQ.search(data.partition(b"\r\n\r\n")[0])
    if cseq is not None:
        message.cseq = int(cseq[1]) % 2**32
        message.method = message.method or cseq[2].decode(errors="replace")


class HepSender:
    """HEP v3 copies over UDP, from a non-blocking socket: a send that fails is dropped."""

    def __init__(self, edge: str, target: str, password: str | None) -> None:
        self.target = target
        self.password = password
        self.capture_id = zlib.crc32(edge.encode()) & 0x7FFFFFFF
        self.addr: tuple[str, int] | None = None
        self.sock: socket.socket | None = None

    async def open(self) -> None:
        host, port = split_host_port(self.target.removeprefix("udp:"), 9060)
        loop = asyncio.get_running_loop()
        family, _, _, _, addr = (await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM))[0]
        self.addr = str(addr[0]), int(addr[1])
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def send(self, packet: hep.Packet) -> bool:
        if self.sock is None or self.addr is None:
            return False
        try:
            self.sock.sendto(hep.encode(packet), self.addr)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class Capture:
    """One edge's capture: `received` and `sent` on the SIP path, a task for the rest."""

    def __init__(
        self,
        edge: str,
        settings: Settings,
        mask: bool,
        js: JetStreamContext,
        registry: Registry,
        trunk_of: Callable[[Peer], str],
        local: tuple[str, int],
    ) -> None:
        self.edge = edge
        self.settings = settings
        self.enabled = settings.enabled
        self.mask = mask
        self.js = js
        self.registry = registry
        self.trunk_of = trunk_of
        self.local = local
        self.queue: list[Item] = []
        self.memo: dict[str, Owner] = {}  # SIP Call-ID -> its call, for after the call ends
        self.hep = HepSender(edge, settings.hep, settings.hep_password) if settings.hep else None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self._stored = CAPTURED.labels(edge)
        self._dropped = {
            reason: DROPPED.labels(edge, reason)
            for reason in ("queue_full", "bus_slow", "bus_error", "hep_error")
        }

    # ---- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            return
        stream = bus.sip_stream(self.settings.max_age_s, self.settings.max_bytes)
        try:
            try:
                await self.js.add_stream(config=stream)
            except BadRequestError:  # made before with other limits: the config's are in force
                await self.js.update_stream(config=stream)
        except Exception as exc:  # capture is never a reason not to take calls
            log.warning("stream %s not set up: %r", bus.SIP_STREAM, exc)
        if self.hep is not None:
            await self.hep.open()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Publish what is queued, wait a little for the bus, and stop."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._flush()
        if self._publishing:
            _, late = await asyncio.wait(list(self._publishing), timeout=STOP_WAIT_S)
            for task in late:
                task.cancel()
        if self.hep is not None:
            self.hep.close()

    # ---- the SIP path ---------------------------------------------------------------------

    def received(self, data: bytes, peer: Peer, when: float) -> None:
        """A message the edge has just handled (so a new call is in the registry already)."""
        if self.enabled:
            self._add(IN, data, peer, when)

    def sent(self, data: bytes, peer: Peer) -> None:
        if self.enabled:
            self._add(OUT, data, peer, time.time())

    def _add(
        self, direction: pb.SipMessage.Direction, data: bytes, peer: Peer, when: float
    ) -> None:
        if len(self.queue) >= self.settings.queue:
            self._dropped["queue_full"].inc()
            return
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[:end]
        found = _CALL_ID.search(head)
        sip_call_id = found[1].decode(errors="replace") if found else ""
        tags = [m[1].decode(errors="replace") for m in _TAGS.finditer(head)]
        owner = self._owner(sip_call_id, tags)
        self.queue.append(Item(int(when * 1e6), direction, data, peer, sip_call_id, owner))
        self._wake.set()

    def _owner(self, sip_call_id: str, tags: list[str]) -> Owner | None:
        """The call of a message: by its dialog (our tag is its From or To tag), by its
        Call-ID seen before, or, for the INVITE that has just created a call, the newest call.
        A message none of these find (the 100 Trying sent before its INVITE was handed over)
        is looked up by Call-ID again when it is flushed."""
        dialogs = self.registry.dialogs
        for tag in tags:
            runner = dialogs.get((sip_call_id, tag))
            if runner is not None:
                return self._remember(sip_call_id, owner_of(runner))
        owner = self.memo.get(sip_call_id)
        if owner is None and self.registry.calls:
            newest = next(reversed(self.registry.calls.values()))
            if newest.dialog[0] == sip_call_id:
                owner = self._remember(sip_call_id, owner_of(newest))
        return owner

    def _remember(self, sip_call_id: str, owner: Owner) -> Owner:
        if sip_call_id not in self.memo:
            self.memo[sip_call_id] = owner
            if len(self.memo) > MEMO_SIZE:
                del self.memo[next(iter(self.memo))]
        return owner

    # ---- off the SIP path -------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_S)
            self._wake.clear()
            try:
                self._flush()
            except Exception:
                log.exception("capture flush failed")

    def _flush(self) -> None:
        batch, self.queue = self.queue, []
        batch.sort(key=lambda item: item.time_unix_us)
        batches: list[Batch] = []
        last: dict[str, Batch] = {}  # the batch of each subject that is still filling
        for item in batch:
            owner = item.owner or self.memo.get(item.sip_call_id)
            message = self._message(item, owner)
            if self.hep is not None:
                self._send_hep(message)
            subject = bus.sip_capture(owner.call_id) if owner else bus.sip_unmatched(self.edge)
            current = last.get(subject)
            if current is None or current.size + len(message.data) > MAX_BATCH_BYTES:
                current = last[subject] = Batch(subject)
                batches.append(current)
            current.capture.messages.append(message)
            current.size += len(message.data)
        for one in batches:
            if len(self._publishing) >= MAX_IN_FLIGHT:
                self._dropped["bus_slow"].inc(len(one.capture.messages))
                continue
            task = asyncio.create_task(self._publish(one.subject, one.capture))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    def _message(self, item: Item, owner: Owner | None) -> pb.SipMessage:
        peer = f"{item.peer.host}:{item.peer.port}"
        local = f"{self.local[0]}:{self.local[1]}"
        data = clean(item.data, self.mask, self.settings.bodies)
        message = pb.SipMessage(
            call_id=owner.call_id if owner else "",
            leg_id=owner.leg_id if owner else "",
            edge=self.edge,
            trunk=owner.trunk if owner else self.trunk_of(item.peer),
            direction=item.direction,
            transport=item.peer.transport,
            src=peer if item.direction == IN else local,
            dst=local if item.direction == IN else peer,
            time_unix_us=item.time_unix_us,
            sip_call_id=item.sip_call_id,
            data=data,
        )
        summary(message, data)
        return message

    def _send_hep(self, message: pb.SipMessage) -> None:
        assert self.hep is not None
        packet = hep.Packet(
            transport=message.transport,
            src=split_host_port(message.src),
            dst=split_host_port(message.dst),
            time_unix_us=message.time_unix_us,
            payload=message.data,
            correlation_id=message.call_id or message.sip_call_id,
            capture_id=self.hep.capture_id,
            password=self.hep.password,
        )
        if not self.hep.send(packet):
            self._dropped["hep_error"].inc()

    async def _publish(self, subject: str, capture: pb.SipCapture) -> None:
        try:
            await self.js.publish(subject, capture.SerializeToString(), timeout=PUBLISH_TIMEOUT_S)
        except Exception as exc:
            self._dropped["bus_error"].inc(len(capture.messages))
            log.debug("capture of %d messages lost: %r", len(capture.messages), exc)
        else:
            self._stored.inc(len(capture.messages))
