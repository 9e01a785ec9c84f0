"""The rtpengine instances an edge anchors media through: their health, how calls spread
over them, and the call machines' media actions as NG requests (and their replies as events).

Each instance is pinged every few seconds: down after two pings go unanswered (or a request
times out), up again after one answer. A call's first offer goes to the instance with the
fewest of this edge's sessions among those up (then the others, if it does not answer);
every later request of the call goes to that same instance, one at a time and in order, so
rtpengine sees a call's offers, answers and its delete as the machine asked for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from tandem.b2bua import actions as a
from tandem.b2bua import events as e
from tandem.ng import NgClient, NgError, NgTimeout
from tandem.pb import tandem_pb2 as pb
from tandem.sip.uri import format_host_port

log = logging.getLogger("tandem.edge.media")

PING_S = 2.0
DOWN_AFTER = 2  # pings unanswered in a row
FIRST_OFFER_TRIES = 2  # instances a call's first offer is sent to before it gives up
# rtpengine's reasons when it does not know the session: a query's, a delete's
UNKNOWN_CALL = ("Unknown call-id", "Call-ID not found")

REQUESTS = Counter(
    "tandem_edge_rtpengine_requests_total",
    "NG requests to rtpengine, by command and result (ok, error, timeout)",
    ["edge", "rtpengine", "command", "result"],
)
LATENCY = Histogram(
    "tandem_edge_rtpengine_request_seconds",
    "NG request round trips that got a reply",
    ["edge", "command"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
UP = Gauge("tandem_edge_rtpengine_up", "rtpengine health by NG ping (1 up)", ["edge", "rtpengine"])
SESSIONS = Gauge(
    "tandem_edge_rtpengine_sessions", "Calls of this edge on each instance", ["edge", "rtpengine"]
)
LOST = Counter(
    "tandem_edge_rtpengine_lost_sessions_total",
    "Calls an instance no longer knew mid-call (it restarted)",
    ["edge", "rtpengine"],
)

# what each trunk's `srtp` asks of rtpengine for the SDP sent towards it (an offer)
SRTP_OFFER: dict[str, dict[str, Any]] = {
    "off": {"transport-protocol": "RTP/AVP"},
    "sdes": {
        "transport-protocol": "RTP/SAVP",
        "DTLS": "off",
        "SDES": ["no-NULL_HMAC_SHA1_80", "no-NULL_HMAC_SHA1_32"],  # no cleartext "SRTP"
    },
    "dtls": {"transport-protocol": "UDP/TLS/RTP/SAVP", "SDES": ["off"]},
    "optional": {"transport-protocol": "RTP/AVP", "OSRTP": ["offer"], "DTLS": "off"},  # RFC 8643
}
REPLACE = ["origin", "session-connection"]  # topology hiding: o= and c= are rtpengine's


def offer_arguments(action: a.MediaOffer | a.MediaAnswer) -> dict[str, Any]:
    """The NG dictionary of an offer or answer (without its command)."""
    towards = action.towards
    arguments: dict[str, Any] = {
        "call-id": action.session,
        "from-tag": action.from_tag,
        "sdp": action.sdp,
        "replace": REPLACE,
        "ICE": towards.ice,
    }
    if action.to_tag:
        arguments["to-tag"] = action.to_tag
    if isinstance(action, a.MediaOffer):
        arguments.update(SRTP_OFFER[towards.srtp])
    elif towards.srtp == "optional":
        arguments["OSRTP"] = ["accept"]  # an offerer's RFC 8643 best-effort SRTP
    return arguments


def qualities(reply: dict[str, Any], rtpengine: str) -> tuple[pb.MediaQuality, ...]:
    """Each party's figures in a query (or delete) reply, by its tag: what rtpengine got
    from it on its RTP stream, what it sent it (what its peers sent), and the RTCP-based
    loss, jitter and MOS of the stream it sent."""
    ssrcs = reply.get("SSRC") or {}
    found: dict[str, pb.MediaQuality] = {}
    peers: dict[str, list[str]] = {}
    for tag, party in (reply.get("tags") or {}).items():
        if not tag or not isinstance(party, dict):
            continue
        quality = found[tag] = pb.MediaQuality(leg_id=tag, rtpengine=rtpengine)
        peers[tag] = [s.get("tag", "") for s in party.get("subscriptions") or []]
        medias = [m for m in party.get("medias") or [] if m.get("type") == "audio"]
        media: dict[str, Any] = medias[0] if medias else {}
        quality.protocol = str(media.get("protocol", ""))
        for stream in media.get("streams") or []:
            if "RTCP" in (stream.get("flags") or []):
                continue
            stats = stream.get("stats") or {}
            quality.packets_from += int(stats.get("packets", 0))
            quality.bytes_from += int(stats.get("bytes", 0))
            quality.errors += int(stats.get("errors", 0))
            quality.crypto = quality.crypto or str(stream.get("crypto suite", ""))
            ssrc = ssrcs.get(str(stream.get("SSRC", "")))
            if isinstance(ssrc, dict):
                _rtcp(quality, ssrc)
    for tag, quality in found.items():
        for peer in peers[tag]:
            if peer in found:
                quality.packets_to += found[peer].packets_from
                quality.bytes_to += found[peer].bytes_from
    return tuple(found.values())


def _rtcp(quality: pb.MediaQuality, ssrc: dict[str, Any]) -> None:
    """What rtpengine learnt from RTCP about one stream: its cumulative loss, and MOS (ten
    times its value) with the loss (%), jitter (ms) and round trip (us) it came from."""
    average = ssrc.get("average MOS") or {}
    lowest = ssrc.get("lowest MOS") or {}
    if average.get("MOS"):
        quality.mos = int(average["MOS"]) / 10
        quality.loss_percent = float(average.get("packet loss", 0))
        quality.jitter_ms = float(average.get("jitter", 0))
        quality.rtt_ms = float(average.get("round-trip time", 0)) / 1000  # microseconds
    if lowest.get("MOS"):
        quality.mos_min = int(lowest["MOS"]) / 10
    quality.packets_lost = int(ssrc.get("cumulative loss") or 0)


@dataclass(eq=False)
class Instance:
    """One rtpengine: its NG client, health, and this edge's sessions on it."""

    address: str
    client: NgClient
    up: bool = True  # believed up until its pings say otherwise
    missed: int = 0
    sessions: int = 0


@dataclass
class Session:
    instance: Instance
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Rtpengines:
    """The instances of the deployment as one edge uses them."""

    def __init__(self, edge: str, addresses: list[tuple[str, int]], ping_s: float = PING_S):
        self.edge = edge
        self.ping_s = ping_s
        self.instances = [
            Instance(format_host_port(host, port), NgClient(host, port)) for host, port in addresses
        ]
        self.sessions: dict[str, Session] = {}
        self.wanted = False  # some trunk anchors: ping the instances (else no one needs them)
        self._turn = 0
        self._pinger: asyncio.Task[None] | None = None
        self._requests: dict[tuple[str, str, str], Any] = {}  # metric children, by labels
        self._latency: dict[str, Any] = {}

    async def start(self) -> None:
        for instance in self.instances:
            try:
                await instance.client.open()
            except OSError as exc:  # a name that does not resolve yet: its requests retry
                log.warning("rtpengine %s: %s", instance.address, exc)
        self._pinger = asyncio.create_task(self._ping_forever())

    async def stop(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        for instance in self.instances:
            instance.client.close()

    def status(self) -> list[dict[str, Any]]:
        return [
            {"rtpengine": i.address, "up": i.up, "sessions": i.sessions} for i in self.instances
        ]

    # ---- health --------------------------------------------------------------------------

    async def _ping_forever(self) -> None:
        while True:
            if self.wanted:
                await asyncio.gather(*(self._ping(i) for i in self.instances))
            await asyncio.sleep(self.ping_s)

    async def _ping(self, instance: Instance) -> None:
        try:
            await instance.client.request("ping")
        except (NgTimeout, NgError, OSError):
            instance.missed += 1
            if instance.missed >= DOWN_AFTER:
                self._health(instance, False, "ping unanswered")
            return
        instance.missed = 0
        self._health(instance, True, "ping answered")

    def _health(self, instance: Instance, up: bool, why: str) -> None:
        if instance.up != up:
            log.warning("rtpengine %s is %s (%s)", instance.address, "up" if up else "down", why)
        instance.up = up
        UP.labels(self.edge, instance.address).set(1 if up else 0)

    # ---- spread and stickiness -------------------------------------------------------------

    def candidates(self) -> list[Instance]:
        """For a new call: those up, fewest sessions first (turns break ties), then the rest."""
        self._turn += 1
        count = len(self.instances)
        ordered = [self.instances[(self._turn + i) % count] for i in range(count)]
        return sorted(ordered, key=lambda i: (not i.up, i.sessions))

    # ---- the machines' actions -------------------------------------------------------------

    async def rewrite(self, action: a.MediaOffer | a.MediaAnswer) -> e.Event:
        """An offer or answer, rewritten by the call's instance (a first offer picks one)."""
        command = "offer" if isinstance(action, a.MediaOffer) else "answer"
        arguments = offer_arguments(action)
        session = self.sessions.get(action.session)
        if session is not None:
            return await self._rewrite(session, command, arguments)
        tried = []
        for instance in self.candidates()[:FIRST_OFFER_TRIES]:
            session = self.sessions[action.session] = Session(instance)
            event = await self._rewrite(session, command, arguments)
            if isinstance(event, e.MediaRewritten):
                self._count(instance, +1)
                return event
            del self.sessions[action.session]
            if not (isinstance(event, e.MediaRefused) and event.unreachable):
                return event  # rtpengine refused the SDP: another instance would too
            tried.append(instance.address)
        where = ", ".join(tried) or "none configured"
        log.warning("call %s: no rtpengine answered its offer (%s)", action.session, where)
        return e.MediaRefused(f"no rtpengine answered: {where}", unreachable=True)

    async def _rewrite(self, session: Session, command: str, arguments: dict[str, Any]) -> e.Event:
        address = session.instance.address
        async with session.lock:
            try:
                reply = await self._request(session.instance, command, arguments)
            except NgTimeout:
                return e.MediaRefused(f"rtpengine {address} did not answer", unreachable=True)
            except NgError as exc:
                return e.MediaRefused(str(exc))
        return e.MediaRewritten(
            str(reply.get("sdp", "")).encode("utf-8", "surrogateescape"), address
        )

    async def report(self, action: a.MediaQuery | a.MediaDelete) -> e.MediaReported:
        """A query's or a delete's figures; a delete ends the call's session here too."""
        final = isinstance(action, a.MediaDelete)
        session = self.sessions.get(action.session)
        if session is None:
            return e.MediaReported(final=final, lost=not final)
        command = "delete" if final else "query"
        arguments: dict[str, Any] = {"call-id": action.session}
        if isinstance(action, a.MediaDelete):  # the whole call, its ports free at once
            arguments.update({"from-tag": action.from_tag, "delete-delay": 0, "flags": ["fatal"]})
        instance = session.instance
        try:
            async with session.lock:
                reply = await self._request(instance, command, arguments)
        except NgTimeout:
            return e.MediaReported(final=final, unreachable=True)
        except NgError as exc:
            if not any(reason in str(exc) for reason in UNKNOWN_CALL):
                log.warning(
                    "rtpengine %s: %s %s: %s", instance.address, command, action.session, exc
                )
                return e.MediaReported(final=final, unreachable=True)
            if not final:
                log.warning(
                    "rtpengine %s no longer knows call %s: it restarted? (its media is lost)",
                    instance.address,
                    action.session,
                )
                LOST.labels(self.edge, instance.address).inc()
            return e.MediaReported(final=final, lost=True)
        finally:
            if final:
                self._forget(action.session)
        return e.MediaReported(qualities(reply, instance.address), final=final)

    def _forget(self, call: str) -> None:
        session = self.sessions.pop(call, None)
        if session is not None:
            self._count(session.instance, -1)

    def _count(self, instance: Instance, delta: int) -> None:
        instance.sessions += delta
        SESSIONS.labels(self.edge, instance.address).set(instance.sessions)

    async def _request(
        self, instance: Instance, command: str, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            reply = await instance.client.request(command, **arguments)
        except NgTimeout:
            self._counted(instance, command, "timeout")
            log.warning("rtpengine %s did not answer %s", instance.address, command)
            self._health(instance, False, f"{command} unanswered")
            raise
        except NgError:
            self._counted(instance, command, "error")
            raise
        self._counted(instance, command, "ok")
        latency = self._latency.get(command)
        if latency is None:
            latency = self._latency[command] = LATENCY.labels(self.edge, command)
        latency.observe(loop.time() - started)
        return reply

    def _counted(self, instance: Instance, command: str, result: str) -> None:
        key = (instance.address, command, result)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = REQUESTS.labels(self.edge, *key)
        counter.inc()
