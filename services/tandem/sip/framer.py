"""Cutting a TCP/TLS byte stream into SIP messages by Content-Length (RFC 3261 18.3)."""

from __future__ import annotations

import re

from tandem.sip.message import ParseError

# A header line giving the length, in full or compact form, at the start of a line.
_CONTENT_LENGTH = re.compile(
    rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)", re.I
)

MAX_MESSAGE = 65_535  # octets, headers and body; larger is a broken or hostile peer


class StreamFramer:
    """Feed it stream bytes; it returns each complete message's bytes, for `parse`.

    CRLF keep-alives (RFC 5626 3.5.1) between messages are swallowed; `take_pings` says
    how many double-CRLF pings came, for a server to answer each with one CRLF. A message
    with no Content-Length has an empty body. A length that cannot be read, or a message above
    `max_message` octets, raises ParseError(None): the stream can no longer be framed and
    the connection must be closed.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buffer = bytearray()
        self._crlfs = 0  # CRLFs in a row since the last message, halves of pings
        self._pings = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        buffer = self._buffer
        while True:
            start = 0
            while buffer[start : start + 2] == b"\r\n":
                start += 2
            if start:
                del buffer[:start]
                self._crlfs += start // 2
                self._pings += self._crlfs // 2
                self._crlfs %= 2
            if buffer and buffer[0] != 0x0D:  # not CR
                self._crlfs = 0  # a message starts: a lone CRLF before it was no ping
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self.max_message:
                    raise ParseError(None, "header section too large")
                return frames
            lengths = _CONTENT_LENGTH.findall(buffer, 0, end + 2)
            if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
                raise ParseError(None, "unreadable Content-Length on a stream")
            declared = lengths[0].lstrip(b"0") if lengths else b""
            # a length test first: int() refuses 4301 digits, and no message is that large
            if len(declared) > 9 or end + 4 + int(declared or b"0") > self.max_message:
                raise ParseError(None, "message too large")
            total = end + 4 + int(declared or b"0")
            if len(buffer) < total:
                return frames
            frames.append(bytes(buffer[:total]))
            del buffer[:total]

    def take_pings(self) -> int:
        """Double-CRLF pings received since the last call."""
        pings, self._pings = self._pings, 0
        return pings

    @property
    def pending(self) -> int:
        """Octets received but not yet part of a complete message."""
        return len(self._buffer)
