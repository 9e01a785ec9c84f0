"""What a call or leg machine needs to know of its trunk: the edge builds it from the policy."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.sip.digest import Credentials

DEFAULT_FAILOVER_CODES = (408, 503, 504)
DEFAULT_FAILOVER_TIMER_S = 10.0


@dataclass(frozen=True, slots=True)
class Profile:
    """The settings of the trunk on one side of a call (defaults: the policy's)."""

    trunk: str = ""
    trusted: bool = False  # in the trust domain (RFC 3325): its identity believed, ours sent
    forward_call_history: bool = False  # Diversion and History-Info cross to it
    session_expires_s: int = 1800  # RFC 4028 on this side's dialog; 0: no session timer
    min_se_s: int = 90
    max_call_s: float = 14400.0  # 0: no limit
    refer: str = "handle"  # handle, relay or reject a REFER from this trunk
    response_map: tuple[tuple[int, int], ...] = ()  # its final codes, translated
    auth: bool = False  # the trunk has digest credentials configured, readable or not
    credentials: Credentials | None = None  # what answers its challenges (None: unreadable)
    media: str = "bypass"  # anchor: the call's media goes through rtpengine
    srtp: str = "off"  # this side of an anchored call: off, sdes, dtls, optional
    ice: str = "remove"  # remove or force
    media_timeout_s: float = 60.0  # no RTP from this side of an anchored call: BYE; 0: never
    media_fallback: str = "reject"  # rtpengine unreachable at offer time: reject (503) or bypass

    def mapped(self, status: int) -> int:
        """A final response code as this trunk's response map translates it."""
        for received, sent in self.response_map:
            if received == status:
                return sent
        return status
