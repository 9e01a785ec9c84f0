"""An SDP (RFC 8866) model that reads and rewrites c=, m= and a= lines and keeps the rest.

Every line is kept as it arrived, line ending included, so an untouched description
serialises back byte for byte; only the lines a caller changes are rewritten. Media bypass
needs none of it; media anchoring rewrites offers and answers with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Connection:
    """A c= line: `IN IP4 192.0.2.1` (address may carry /ttl for multicast)."""

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    @classmethod
    def parse(cls, value: str) -> Connection:
        nettype, addrtype, address = value.split()
        return cls(address, addrtype, nettype)

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True)
class MediaLine:
    """An m= line: `audio 49170 RTP/AVP 0 8 101`."""

    kind: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None

    @classmethod
    def parse(cls, value: str) -> MediaLine:
        kind, port, proto, *formats = value.split()
        number, _, count = port.partition("/")
        return cls(kind, int(number), proto, tuple(formats), int(count) if count else None)

    def __str__(self) -> str:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        return " ".join([self.kind, port, self.proto, *self.formats])


class Section:
    """The session part or one media part: its lines, in order, with their endings.

    Typed reads (`connection`, `media`) raise ValueError when their line is malformed.
    """

    __slots__ = ("_eol", "lines")

    def __init__(self, lines: list[tuple[str, str]], eol: str = "\r\n") -> None:
        self.lines = lines  # (text without ending, ending)
        self._eol = eol

    def values(self, kind: str) -> list[str]:
        """The values of every `<kind>=` line."""
        prefix = kind + "="
        return [text[2:] for text, _ in self.lines if text.startswith(prefix)]

    def _set(self, kind: str, value: str, after: str) -> None:
        """Rewrite the first `<kind>=` line, or add one after the last line of kind `after`."""
        prefix = kind + "="
        for i, (text, eol) in enumerate(self.lines):
            if text.startswith(prefix):
                self.lines[i] = (prefix + value, eol)
                return
        at = len(self.lines)
        for i, (text, _) in enumerate(self.lines):
            if text[1:2] == "=" and text[0] in after:
                at = i + 1
        self._insert(at, prefix + value)

    def _insert(self, at: int, text: str) -> None:
        if at and not self.lines[at - 1][1]:  # the body's last line had no line ending
            self.lines[at - 1] = (self.lines[at - 1][0], self._eol)
        self.lines.insert(at, (text, self._eol))

    @property
    def connection(self) -> Connection | None:
        values = self.values("c")
        return Connection.parse(values[0]) if values else None

    @connection.setter
    def connection(self, value: Connection) -> None:
        # c= follows v o s i u e p in a session, m i in a media section (RFC 8866 5)
        self._set("c", str(value), after="vosiuepmi")

    @property
    def attributes(self) -> list[tuple[str, str | None]]:
        """a= lines as (name, value); value None for a property attribute (`a=sendrecv`)."""
        out: list[tuple[str, str | None]] = []
        for value in self.values("a"):
            name, colon, rest = value.partition(":")
            out.append((name, rest if colon else None))
        return out

    def attribute(self, name: str) -> str | None:
        """The value of the first a=name line ("" for a property), or None."""
        for n, v in self.attributes:
            if n == name:
                return "" if v is None else v
        return None

    def add_attribute(self, name: str, value: str | None = None) -> None:
        self._insert(len(self.lines), f"a={name}" if value is None else f"a={name}:{value}")

    def remove_attribute(self, name: str) -> None:
        self.lines = [
            (t, e)
            for t, e in self.lines
            if not (t.startswith("a=") and t[2:].partition(":")[0] == name)
        ]


class MediaSection(Section):
    __slots__ = ()

    @property
    def media(self) -> MediaLine:
        return MediaLine.parse(self.lines[0][0][2:])

    @media.setter
    def media(self, value: MediaLine) -> None:
        self.lines[0] = ("m=" + str(value), self.lines[0][1])

    @property
    def port(self) -> int:
        return self.media.port

    @port.setter
    def port(self, port: int) -> None:
        line = self.media
        self.media = MediaLine(line.kind, port, line.proto, line.formats, line.port_count)


class SessionDescription:
    """A parsed SDP body: `session` lines, then one `MediaSection` per m= line."""

    __slots__ = ("media", "session")

    def __init__(self, session: Section, media: list[MediaSection]) -> None:
        self.session = session
        self.media = media

    @classmethod
    def parse(cls, body: bytes) -> SessionDescription:
        """Split an SDP body into sections; never fails, unknown lines are kept as they are."""
        text = body.decode("utf-8", "surrogateescape")
        eol = "\r\n" if "\r\n" in text else "\n"
        sections: list[list[tuple[str, str]]] = [[]]
        pieces = text.split("\n")
        for i, line in enumerate(pieces):
            ending = "" if i == len(pieces) - 1 else "\n"
            if ending and line.endswith("\r"):
                line, ending = line[:-1], "\r\n"
            if not line and not ending:
                break  # the empty remainder after a final line ending
            if line.startswith("m="):
                sections.append([])
            sections[-1].append((line, ending))
        return cls(Section(sections[0], eol), [MediaSection(s, eol) for s in sections[1:]])

    def __bytes__(self) -> bytes:
        parts = [t + e for t, e in self.session.lines]
        parts += [t + e for m in self.media for t, e in m.lines]
        return "".join(parts).encode("utf-8", "surrogateescape")

    def connection_for(self, media: MediaSection) -> Connection | None:
        """Where a media stream goes: its own c= line, else the session's."""
        return media.connection or self.session.connection
