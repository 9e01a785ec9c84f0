"""What a call machine keeps of itself and of each leg it creates, as callstate will see it."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.pb import tandem_pb2 as pb


@dataclass(slots=True)
class Record:
    """One call as callstate records it; a transfer starts another on the same machine."""

    id: str
    trunk: str  # its ingress trunk
    seq: int = 0


@dataclass(slots=True)
class Attempt:
    """One target tried: the egress leg created for it."""

    id: str
    target: pb.RouteTarget
    number: int  # 1 for the first target
    sip_call_id: str
    live: bool = True  # its events are still wanted
    local_tag: str = ""  # the tags of its dialog, once it answered (what a Replaces names)
    remote_tag: str = ""
    sdp: bytes = b""  # the callee's last session description
    edge: str = ""  # the edge that runs it, once one took it (several may serve its trunk)
