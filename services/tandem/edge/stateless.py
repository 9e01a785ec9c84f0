"""Answers to requests too broken for tandem.sip's transaction layer, from their raw lines.

The layer answers a request that failed to parse when its Via, From, To, Call-ID and CSeq
did parse; a bad request line or a malformed Via leaves it nothing to answer with. A
stateless server still owes such a request its status (RFC 4475 3.1.2), so the edge copies
the lines a response needs as they are and sends it where RFC 3261 18.2.2 says.
"""

from __future__ import annotations

from collections.abc import Iterable

from tandem.b2bua.local import USER_AGENT, new_tag
from tandem.sip.message import REASONS

ANSWER_HEADERS = ("via", "from", "to", "call-id", "cseq")  # what a response copies
_RAW_ANSWER_HEADERS = {
    b"via": b"Via",
    b"v": b"Via",
    b"from": b"From",
    b"f": b"From",
    b"to": b"To",
    b"t": b"To",
    b"call-id": b"Call-ID",
    b"i": b"Call-ID",
    b"cseq": b"CSeq",
}


def answer_unparsable(
    data: bytes, status: int, extra: Iterable[tuple[str, str]] = ()
) -> tuple[bytes, int | None] | None:
    """The bytes of a stateless answer to a request too broken to parse, and its port.

    Via, From, To, Call-ID and CSeq are copied line for line, as far as they are there (To
    gets a tag); None without a Via to answer along. The port is the top Via's, 5060 by
    default (RFC 3261 18.2.2), or None for the source port (rport).
    """
    head = data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    lines: list[bytes] = []
    port: int | None = None
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        canonical = _RAW_ANSWER_HEADERS.get(name.strip().lower()) if colon else None
        if canonical is None:
            continue
        value = value.strip()
        if canonical == b"To" and b"tag=" not in value.lower():
            value += b";tag=" + new_tag().encode()
        if canonical == b"Via" and not any(line.startswith(b"Via") for line in lines):
            port = _via_port(value.split(b",")[0])
        lines.append(canonical + b": " + value)
    if not any(line.startswith(b"Via") for line in lines):
        return None
    reason = REASONS.get(status, "Error").encode()
    out = [b"SIP/2.0 %d %s" % (status, reason), *lines, b"Server: " + USER_AGENT.encode()]
    out += [f"{name}: {value}".encode() for name, value in extra]
    return b"\r\n".join([*out, b"Content-Length: 0", b"", b""]), port


def _via_port(top: bytes) -> int | None:
    sent_by, _, params = top.partition(b";")
    if b"rport" in params.lower():
        return None
    hostport = sent_by.split()[-1] if sent_by.split() else b""
    if hostport.startswith(b"["):
        rest = hostport.partition(b"]")[2]
        port = rest[1:] if rest.startswith(b":") else b""
    else:
        port = hostport.rpartition(b":")[2] if b":" in hostport else b""
    return int(port) if port.isdigit() and 0 < int(port) < 65536 else 5060
