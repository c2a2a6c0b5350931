"""Request bodies on the wire (RFC 9112 6-7), sans I/O: read exactly what the head framed.

How this works::

    RequestHead + Source ─► body_reader(...)     by the head's framing (RFC 9112 6.3):
                              ├─ chunked           ChunkedBody: size lines, data, trailers kept
                              │                    apart, read lazily as the handler reads
                              ├─ Content-Length    ContentLengthBody: exactly that many bytes
                              └─ neither, or 0     EmptyBody: done at once, never reads
    handler ──► body.read(n) / body.readline(n)     never past the body's end, so the next
                                                    pipelined request stays in the source

The connection passes in a ``Source`` (anything with ``read1`` and ``readline``, e.g. a buffered
socket file) and the callback that sends ``100 Continue``, run before the first byte is pulled.
Bad framing raises ``ProtocolError`` and a body over its limit ``PayloadTooLarge``; either way
the connection closes after answering, because where the next request starts is unknown.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol

from porch.http.errors import PayloadTooLarge, ProtocolError
from porch.http.grammar import FIELD_FORBIDDEN, TOKEN_BYTES, parse_field_line
from porch.http.head import ParseLimits, RequestHead
from porch.http.messages import Body, Headers

MAX_CHUNK_SIZE_DIGITS = 16  # 16 hex digits = 2**64 - 1 bytes; longer sizes are an attack
MAX_CHUNK_LINE_BYTES = 4096  # one chunk-size line with its extensions and CRLF
READ_CHUNK_BYTES = 65536  # most bytes asked of the source in one call

# RFC 9112 7.1 / 7.1.1: chunk-size [ chunk-ext ] CRLF, with BWS around ";" and "=".
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"(?P<size>[0-9A-Fa-f]+)(?P<ext>(?:[ \t]*;[ \t]*"
    + TOKEN_BYTES.pattern
    + rb"(?:[ \t]*=[ \t]*(?:"
    + TOKEN_BYTES.pattern
    + rb"|"
    + _QUOTED_STRING
    + rb"))?)*)\r\n"
)


class Source(Protocol):
    """Where a body reader pulls bytes from (a buffered socket file in the server)."""

    def read1(self, size: int) -> bytes:
        """At least one byte and at most ``size``, or b"" at EOF; may block."""
        ...

    def readline(self, size: int) -> bytes:
        """Up to and including b"\\n", at most ``size`` bytes; fewer without b"\\n" only at EOF."""
        ...


def _incomplete() -> ProtocolError:
    return ProtocolError("incomplete body")


class _FramedBody(ABC):
    """Reading shared by both framings; subclasses say how much of the current frame is left."""

    __slots__ = ("_on_first_read", "_source", "length", "limit", "received", "trailers")

    def __init__(
        self, length: int | None, source: Source, limit: int | None, on_first_read: Callable[[], None] | None
    ) -> None:
        self.length = length
        self.limit = limit  # may be lowered by the validate stage before the first read
        self.trailers = Headers()
        self.received = 0
        self._source = source
        self._on_first_read = on_first_read

    @property
    @abstractmethod
    def done(self) -> bool:
        """True once the whole body has been consumed from the source."""

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes (all that is left when negative); fewer only at the end of the body."""
        return self._pull(size, self._source.read1, line=False)

    def readline(self, size: int = -1) -> bytes:
        """One line, up to and including b"\\n" (or ``size`` bytes), never past the body."""
        return self._pull(size, self._source.readline, line=True)

    def _pull(self, size: int, fetch: Callable[[int], bytes], *, line: bool) -> bytes:
        if self.done or size == 0:
            return b""
        self._check_limit()
        callback, self._on_first_read = self._on_first_read, None
        if callback is not None:  # the connection sends 100 Continue here, before any byte is read
            callback()
        parts = []
        while size:
            left = self._frame_left()
            if not left:
                break
            want = min(left if size < 0 else min(size, left), READ_CHUNK_BYTES)
            data = fetch(want)
            if not data or (line and len(data) < want and not data.endswith(b"\n")):
                raise _incomplete()  # EOF inside the body (readline is short only at EOF)
            parts.append(data)
            self.received += len(data)
            self._consumed(len(data))
            if size > 0:
                size -= len(data)
            if line and data.endswith(b"\n"):
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @abstractmethod
    def _check_limit(self) -> None:
        """Raise PayloadTooLarge if the body is known to exceed ``limit``."""

    @abstractmethod
    def _frame_left(self) -> int:
        """Bytes readable before the framing must be looked at again; 0 at the end of the body."""

    @abstractmethod
    def _consumed(self, count: int) -> None:
        """Account for ``count`` bytes handed out."""


class ContentLengthBody(_FramedBody):
    """Exactly ``length`` bytes (RFC 9112 6.2); an early EOF is a 400."""

    __slots__ = ("_declared", "_remaining")

    def __init__(
        self, length: int, source: Source, limit: int | None, on_first_read: Callable[[], None] | None = None
    ) -> None:
        super().__init__(length, source, limit, on_first_read)
        self._declared = self._remaining = length

    @property
    def done(self) -> bool:
        return self._remaining == 0

    @property
    def remaining(self) -> int:
        """Bytes of the body not read yet: what the connection must drain to reuse itself."""
        return self._remaining

    def _check_limit(self) -> None:
        if self.limit is not None and self._declared > self.limit:
            raise PayloadTooLarge(f"request body larger than {self.limit} bytes")

    def _frame_left(self) -> int:
        return self._remaining

    def _consumed(self, count: int) -> None:
        self._remaining -= count


class EmptyBody:
    """No body: a request framed without one (RFC 9112 6.3 item 7) or an internally redirected
    GET (RFC 3875 6.2.2).  Done from the start, it reads nothing, so it needs no source and
    never sends 100 Continue."""

    __slots__ = ("limit", "trailers")

    length: int | None = 0
    received = 0
    done = True

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.trailers = Headers()

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""


class ChunkedBody(_FramedBody):
    """The chunked transfer coding (RFC 9112 7.1), read lazily, trailers kept apart.

    Bounds: a chunk-size line is at most MAX_CHUNK_LINE_BYTES; chunk extensions (parsed, then
    ignored, RFC 9112 7.1.1) and trailer fields together may use at most ``limits.header_bytes``
    for the whole body, and at most ``limits.headers`` trailer fields are accepted.  The size
    lines themselves are bounded by the data they frame, which the body limit bounds.
    """

    __slots__ = ("_announced", "_chunk_left", "_finished", "_limits", "_metadata_left")

    def __init__(
        self, source: Source, limit: int | None, on_first_read: Callable[[], None] | None = None, *, limits: ParseLimits
    ) -> None:
        super().__init__(None, source, limit, on_first_read)
        self._limits = limits
        self._chunk_left = 0  # data bytes left in the current chunk
        self._finished = False  # last-chunk and trailer section consumed
        self._announced = 0  # data bytes announced by chunk sizes so far
        self._metadata_left = self._limits.header_bytes

    @property
    def done(self) -> bool:
        return self._finished

    def _check_limit(self) -> None:
        if self.limit is not None and self._announced > self.limit:
            raise PayloadTooLarge(f"request body larger than {self.limit} bytes")

    def _frame_left(self) -> int:
        if self._chunk_left == 0 and not self._finished:
            self._next_chunk()
        return self._chunk_left

    def _consumed(self, count: int) -> None:
        """At the end of each chunk's data its CRLF must follow (RFC 9112 7.1)."""
        self._chunk_left -= count
        if self._chunk_left == 0:
            crlf = self._source.read1(2)
            if len(crlf) == 1:
                crlf += self._source.read1(1)
            if len(crlf) < 2:
                raise _incomplete()
            if crlf != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF")

    def _read_line(self, size: int, too_long: ProtocolError) -> bytes:
        """A CRLF-terminated line of at most ``size`` bytes (a bare CR inside fails its grammar)."""
        line = self._source.readline(size + 1)
        if not line.endswith(b"\r\n"):
            if len(line) > size:
                raise too_long
            if line.endswith(b"\n"):
                raise ProtocolError("bare LF in chunked framing")
            raise _incomplete()
        return line

    def _next_chunk(self) -> None:
        """Read a chunk-size line; at the last chunk read the trailers and finish."""
        line = self._read_line(MAX_CHUNK_LINE_BYTES, ProtocolError("chunk size line too long"))
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:  # no sign, "0x", whitespace or empty size: RFC 9112 7.1
            raise ProtocolError("invalid chunk size line")
        if len(match["size"]) > MAX_CHUNK_SIZE_DIGITS:
            raise ProtocolError("chunk size too large")
        self._metadata_left -= len(match["ext"])
        if self._metadata_left < 0:
            raise ProtocolError("chunk extensions too long")
        size = int(match["size"], 16)
        if size == 0:
            self._read_trailers()
            self._finished = True
            return
        self._announced += size
        self._check_limit()
        self._chunk_left = size

    def _read_trailers(self) -> None:
        """trailer-section = *( field-line CRLF ) CRLF (RFC 9112 7.1.2), with the header rules."""
        too_large = ProtocolError("trailer section too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        while (line := self._read_line(self._metadata_left + 2, too_large)) != b"\r\n":
            self._metadata_left -= len(line) - 2
            if len(self.trailers) >= self._limits.headers:
                raise ProtocolError("too many trailer fields", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            if FIELD_FORBIDDEN.search(line, 0, len(line) - 2):  # RFC 9110 5.5
                raise ProtocolError("invalid character in trailer field")
            self.trailers.add(*parse_field_line(line[:-2].decode("latin-1")))


def body_reader(
    head: RequestHead,
    source: Source,
    limit: int | None,
    on_first_read: Callable[[], None] | None = None,
    *,
    limits: ParseLimits,
) -> Body:
    """The body stream framed by ``head`` (RFC 9112 6.3); ``limits`` bound chunked trailers."""
    if head.chunked:
        return ChunkedBody(source, limit, on_first_read, limits=limits)
    if head.content_length:
        return ContentLengthBody(head.content_length, source, limit, on_first_read)
    return EmptyBody(limit)
