"""Multipart bodies (RFC 2046 5.1) as SIP carries them: SDP beside ISUP, or S/MIME parts.

Media bypass passes bodies through untouched; media anchoring (rtpengine) must find the
SDP part of a multipart/mixed offer to rewrite it, and this is how.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.sip.headers import Headers
from tandem.sip.uri import get_param, parse_params


@dataclass(frozen=True, slots=True)
class Part:
    headers: Headers
    body: bytes

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return None if value is None else "".join(value.partition(";")[0].split()).lower()


def boundary_of(content_type: str) -> str | None:
    """The boundary parameter of a multipart Content-Type value, unquoted."""
    _, _, params = content_type.partition(";")
    value = get_param(parse_params(params), "boundary") if params else None
    return value.strip('"') if value else None


def split_multipart(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart body; raises ValueError when it is not one."""
    boundary = boundary_of(content_type)
    if not content_type.lower().startswith("multipart/") or not boundary:
        raise ValueError("not a multipart body")
    delimiter = b"--" + boundary.encode()
    chunks = (b"\r\n" + body).split(b"\r\n" + delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise ValueError("multipart body without its closing delimiter")
    parts = []
    for chunk in chunks[1:-1]:
        head, sep, part_body = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without the empty line after its headers")
        lines = head.decode("utf-8", "surrogateescape").split("\r\n")[1:]
        fields = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines)]
        parts.append(Part(Headers(fields), part_body))
    return parts
