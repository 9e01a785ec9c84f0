"""The simulated trunks' YAML file: the PBXs and PSTN gateways, and how each answers.

See examples/sim.yaml. Validated here once, like tandem's own config; an invalid file is
refused with each field's path and reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tandem.config import ConfigError, format_errors
from tandem.http import is_loopback
from tandem.policy.model import Strict
from tandem.sip.uri import split_host_port

Kind = Literal["pbx", "gateway"]
Number = Annotated[str, Field(pattern=r"^\+?[0-9*#]{1,32}$")]
# pjsua's own names (pjsua_100rel_use, pjsua_sip_timer_use), so its docs apply as written
PrackUse = Literal["not_used", "optional", "mandatory"]
TimerUse = Literal["inactive", "optional", "required", "always"]
SrtpUse = Literal["off", "sdes", "dtls"]
Progress = Literal[180, 183]

RINGING: Final = 180
ANSWERED = 200
MIN_SE_S = 90  # RFC 4028's floor, and PJSIP's (ABS_MIN_SE): it refuses anything lower
# a final reply (reject) or one of the provisional/answer replies a sim can give
_PROVISIONAL = {180, 183}


def _host_port(value: str) -> str:
    split_host_port(value)
    return value


class AnswerRule(Strict):
    """The first rule whose pattern is found in the called number decides the reply."""

    pattern: str
    reply: int = Field(description="200 answers, 180/183 ring for ever, 300-699 reject")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad regex: {exc}") from None
        return value

    @field_validator("reply")
    @classmethod
    def _reply(cls, value: int) -> int:
        return _check_reply(value)


def _check_reply(value: int) -> int:
    if value != ANSWERED and value not in _PROVISIONAL and not 300 <= value <= 699:
        raise ValueError("reply must be 200, 180, 183 or a final code 300-699")
    return value


class SimTls(Strict):
    """TLS for a sim (PEM files): it also listens for TLS on `port` of its `sip` host,
    places its calls over TLS, presents `cert` and verifies the far end by `ca`, both
    ways: a server certificate must name the host it calls, and a client certificate is
    required (mutual TLS, as Teams Direct Routing and carriers' SBCs do)."""

    port: int = Field(ge=1, le=65535, description="TCP port of its TLS listener")
    cert: str = Field(min_length=1, description="its certificate (chain), PEM")
    key: str = Field(min_length=1, description="the certificate's key, PEM")
    ca: str = Field(min_length=1, description="the CA bundle that verifies its peers, PEM")


class Sim(Strict):
    """What every simulated trunk has: its SIP and control addresses and its media ports."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    sip: str = Field(description="UDP host:port this trunk's SIP binds to (a loopback IP)")
    trunk: str = Field(description="host:port it sends its calls to: tandem's edge")
    control: str = Field(description="host:port of the HTTP control API (loopback only)")
    rtp_ports: tuple[int, int] = Field(description="first and last RTP port (RTCP is +1)")
    answer_after_s: float = Field(
        default=0.3, ge=0, le=60, description="how long it rings before it answers (seconds)"
    )
    progress: Progress = Field(
        default=RINGING,
        description="what it sends while it rings before answering: 180 Ringing, or 183 "
        "Session Progress with SDP (early media, RTP both ways before the 200)",
    )
    prack: PrackUse = Field(
        default="not_used",
        description="100rel (RFC 3262), pjsua's prackUse. Every INVITE it sends says "
        "Supported: 100rel, and a caller's Require: 100rel is always honoured. optional: "
        "its 18x are also reliable when the caller merely supports 100rel. mandatory: "
        "Require: 100rel on the calls it places; callers without 100rel are refused (421)",
    )
    session_timer: TimerUse = Field(
        default="inactive",
        description="session timers (RFC 4028), pjsua's timerUse. inactive: none, unless a "
        "caller sends Require: timer. optional: offered on the calls it places "
        "(Session-Expires, Supported: timer) and used whenever the far end wants them. "
        "required: Require: timer on the calls it places; callers without timers are "
        "refused (421). always: used even when the far end neither asks nor supports them",
    )
    session_expires_s: int = Field(
        default=1800, ge=MIN_SE_S, description="Session-Expires it asks for (seconds)"
    )
    min_se_s: int = Field(
        default=MIN_SE_S, ge=MIN_SE_S, description="Min-SE: the shortest it accepts (seconds)"
    )
    tls: SimTls | None = Field(default=None, description="SIP over TLS too, and for its calls")
    srtp: SrtpUse = Field(
        default="off",
        description="its media: plain RTP, or SRTP only (pjsua's srtpUse mandatory) keyed by "
        "SDES (RFC 4568, a=crypto, RTP/SAVP) or DTLS-SRTP (RFC 5764; needs a PJSIP built "
        "with DTLS: the pjsua2-python wheel answers such offers 488)",
    )

    @field_validator("sip", "trunk")
    @classmethod
    def _address(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("control")
    @classmethod
    def _control(cls, value: str) -> str:
        host, _ = split_host_port(value)
        if not is_loopback(host):
            raise ValueError("the control API has no authentication: loopback only")
        return value

    @field_validator("rtp_ports")
    @classmethod
    def _ports(cls, value: tuple[int, int]) -> tuple[int, int]:
        first, last = value
        if not 1024 <= first < last <= 65535 or last - first < 3:
            raise ValueError("need 1024 <= first < last <= 65535 and room for two calls")
        return value

    @model_validator(mode="after")
    def _session_interval(self) -> Sim:
        if self.session_expires_s < self.min_se_s:
            raise ValueError("session_expires_s must be at least min_se_s")
        return self

    @property
    def sip_address(self) -> tuple[str, int]:
        return split_host_port(self.sip)

    @property
    def trunk_address(self) -> tuple[str, int]:
        return split_host_port(self.trunk)

    def reply_for(self, called: str) -> int:
        raise NotImplementedError


class Pbx(Sim):
    """An IP-PBX: phones (extensions) that answer, reachable by extension or full number."""

    extensions: list[Number] = Field(min_length=1)
    number_prefix: str = Field(
        default="", description="stripped from a called number to find the extension"
    )

    def extension_for(self, called: str) -> str | None:
        if called in self.extensions:
            return called
        if self.number_prefix and called.startswith(self.number_prefix):
            rest = called.removeprefix(self.number_prefix)
            if rest in self.extensions:
                return rest
        return None

    def reply_for(self, called: str) -> int:
        return ANSWERED if self.extension_for(called) is not None else 404


class Gateway(Sim):
    """A PSTN gateway: answers, rings, is busy or fails by rules on the called number."""

    rules: list[AnswerRule] = Field(default_factory=list)
    default_reply: int = ANSWERED

    @field_validator("default_reply")
    @classmethod
    def _reply(cls, value: int) -> int:
        return _check_reply(value)

    def reply_for(self, called: str) -> int:
        for rule in self.rules:
            if re.search(rule.pattern, called):
                return rule.reply
        return self.default_reply


class SimFile(Strict):
    pbxs: list[Pbx] = Field(default_factory=list)
    gateways: list[Gateway] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> SimFile:
        sims: list[Sim] = [*self.pbxs, *self.gateways]
        for what in ("id", "sip", "control"):
            values = [getattr(s, what) for s in sims]
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"duplicate {what}: {dup}")
        return self

    def pick(self, kind: Kind, sim_id: str | None) -> Sim:
        """The sim of that kind with that id; with no id, the only one of that kind."""
        sims: list[Sim] = list(self.pbxs if kind == "pbx" else self.gateways)
        if sim_id is None:
            if len(sims) != 1:
                found = ", ".join(s.id for s in sims) or "none"
                raise KeyError(f"say which {kind} with --id (found: {found})")
            return sims[0]
        for sim in sims:
            if sim.id == sim_id:
                return sim
        raise KeyError(f"no {kind} with id {sim_id!r}")


def parse_sims(data: Any, source: str = "sim config") -> SimFile:
    try:
        return SimFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(source, format_errors(exc)) from None


def load_sims(path: str | Path) -> SimFile:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), [f"  (file): {exc}"]) from None
    return parse_sims(data, str(path))
