"""HTTP/1.1 on the wire (RFC 9112), sans I/O: request heads in, body framing, response heads out.

How this works::

    bytes from the socket ──► find_head_end(buffer)   -1 until the blank line ending the head;
                                                      rejects bare CR/LF, NUL, long lines early
    buffer[:end] ─────────► parse_head(head)          RequestHead: method, target, path, query,
                                                      version, Headers, framing, keep-alive
    RequestHead + Source ─► body_reader(...)          EmptyBody | ContentLengthBody | ChunkedBody
    status + headers ─────► serialize_response_head   b"HTTP/1.1 200 OK\\r\\n...\\r\\n\\r\\n"
    body pieces ──────────► encode_chunk / LAST_CHUNK

Nothing here touches a socket, logs or knows a handler: the connection owns the buffer and the
socket and passes in a ``Source`` (anything with ``read1`` and ``readline``, e.g. a buffered
socket file).  The parser is strict: whatever is ambiguous or malformed raises ``ProtocolError``
carrying the status to answer with, and the connection closes after answering (RFC 9112 11.2),
because the framing of whatever follows cannot be trusted.  Never guess.

Parsing uses ``bytes.find``/``split`` and a few precompiled regular expressions applied to whole
elements (a method, a field name), never a regular expression per line or the email package.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol
from urllib.parse import unquote_to_bytes

from porch.config.settings import Limits
from porch.http.errors import PayloadTooLarge, ProtocolError
from porch.http.messages import Body, Headers

LAST_CHUNK = b"0\r\n\r\n"
MAX_CHUNK_SIZE_DIGITS = 16  # 16 hex digits = 2**64 - 1 bytes; longer sizes are an attack
MAX_CHUNK_LINE_BYTES = 4096  # one chunk-size line with its extensions and CRLF
READ_CHUNK_BYTES = 65536  # most bytes asked of the source in one call
MAX_CONTENT_LENGTH_DIGITS = 20
MAX_PORT = 65535

# RFC 9110 5.6.2: token = 1*tchar.
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(f"[{_TCHAR}]+")
# RFC 9110 5.5: field values are VCHAR, obs-text, SP and HTAB: no other CTL anywhere in a head.
_HEAD_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FIELD_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # the same for one trailer line
# RFC 9112 3.2: the request-target is visible ASCII (no SP, no CTL, no obs-text).
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_HTTP_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")  # RFC 9112 2.3: HTTP-name "/" DIGIT "." DIGIT
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")  # RFC 3986 2.1: "%" HEXDIG HEXDIG
# RFC 9110 7.2 / RFC 3986 3.2.2: Host = uri-host [ ":" port ]; uri-host = IP-literal / reg-name
# (an IPv4 address is also a reg-name).
_HOST = re.compile(
    r"(?:\[(?P<ip>[0-9A-Fa-f:.]+)\]|(?P<name>(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+))"
    r"(?::(?P<port>[0-9]{0,5}))?"
)
_ABSOLUTE_FORM = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<authority>[^/?]*)(?P<rest>.*)")
_CONTENT_LENGTH = re.compile(f"[0-9]{{1,{MAX_CONTENT_LENGTH_DIGITS}}}")
# RFC 9112 7.1 / 7.1.1: chunk-size [ chunk-ext ] CRLF, with BWS around ";" and "=".
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_TOKEN_RE_BYTES = _TOKEN.pattern.encode()
_CHUNK_LINE = re.compile(
    rb"(?P<size>[0-9A-Fa-f]+)(?P<ext>(?:[ \t]*;[ \t]*" + _TOKEN_RE_BYTES
    + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN_RE_BYTES + rb"|" + _QUOTED_STRING + rb"))?)*)\r\n"
)
_TEXT_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9112 4: reason-phrase characters
_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")  # what would split a response head
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_VALID_NAMES: set[str] = set()  # response field names already checked (handlers reuse a few)
_VALID_HOSTS: set[str] = set()  # Host values already checked (a server is asked for a few names)
MAX_REMEMBERED_NAMES = 1024
_FRAMING_FIELDS = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})


@dataclass(slots=True)  # read-only by convention: frozen would cost ~0.6 µs per request
class RequestHead:
    """A parsed request head plus the framing and connection facts derived from it."""

    method: str
    target: str  # the request-target exactly as sent
    raw_path: str  # path with dot-segments resolved, still percent-encoded ("" for CONNECT)
    path: str  # percent-decoded raw_path (UTF-8, surrogateescape); "*" for OPTIONS *
    query: str  # raw text after the first "?"
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: Headers
    content_length: int | None  # None when absent or chunked
    chunked: bool
    keep_alive: bool
    expect_continue: bool


class Source(Protocol):
    """Where a body reader pulls bytes from (a buffered socket file in the server)."""

    def read1(self, size: int) -> bytes:
        """At least one byte and at most ``size``, or b"" at EOF; may block."""
        ...

    def readline(self, size: int) -> bytes:
        """Up to and including b"\\n", at most ``size`` bytes; fewer without b"\\n" only at EOF."""
        ...


def _skip_empty_lines(buffer: bytes | bytearray, limit: int) -> int:
    """Index of the request line: RFC 9112 2.2 lets a server ignore CRLFs before it."""
    start = 0
    while start <= limit and buffer.startswith(b"\r\n", start):
        start += 2
    return start


def _first_bare_line_break(buffer: bytes | bytearray, start: int, stop: int, size: int) -> int:
    """Bytes needed to see the first CR without LF or LF without CR in buffer[start:stop], or -1."""
    seen = []
    cr = buffer.find(b"\r", start, stop)
    while 0 <= cr < size - 1 and buffer[cr + 1] == 0x0A:
        cr = buffer.find(b"\r", cr + 2, stop)
    if 0 <= cr < size - 1:
        seen.append(cr + 2)
    lf = buffer.find(b"\n", start, stop)
    while lf > start and buffer[lf - 1] == 0x0D:
        lf = buffer.find(b"\n", lf + 1, stop)
    if lf >= 0:
        seen.append(lf + 1)
    return min(seen, default=-1)


def find_head_end(buffer: bytes | bytearray, limits: Limits) -> int:
    """Index just past the blank line ending the head in ``buffer``, or -1 if incomplete.

    Errors are raised as soon as the bytes so far prove them, so a slow client cannot make the
    server buffer garbage.  Each error is pinned to the number of bytes needed to see it and the
    earliest one wins, so the outcome never depends on how the bytes were split into reads.
    """
    size = len(buffer)
    start = _skip_empty_lines(buffer, limits.header_bytes)
    end = buffer.find(b"\r\n\r\n", start)
    stop = end + 4 if end >= 0 else size
    errors: list[tuple[int, ProtocolError]] = []
    crlf = buffer.count(b"\r\n", start, stop)
    dangling_cr = 1 if end < 0 and size > start and buffer[size - 1] == 0x0D else 0
    if buffer.count(b"\r", start, stop) - dangling_cr != crlf or buffer.count(b"\n", start, stop) != crlf:
        # RFC 9112 2.2: lines end with CRLF; a bare CR or LF is neither accepted nor replaced.
        at = _first_bare_line_break(buffer, start, stop, size)
        errors.append((at, ProtocolError("bare CR or LF in request head")))
    nul = buffer.find(b"\x00", start, stop)
    if nul >= 0:  # RFC 9110 5.5: NUL is never allowed in a request head
        errors.append((nul + 1, ProtocolError("NUL in request head")))
    line_stop = start + limits.request_line + 2
    if size >= line_stop and buffer.find(b"\r\n", start, line_stop) < 0:
        # RFC 9112 3: a server SHOULD answer 414 to a request-target longer than it will parse.
        errors.append((line_stop, ProtocolError("request line too long", HTTPStatus.REQUEST_URI_TOO_LONG)))
    if stop > limits.header_bytes:  # RFC 6585 5: header block too large
        errors.append((limits.header_bytes + 1, ProtocolError(
            "request head too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)))
    if errors:
        raise min(errors, key=lambda error: error[0])[1]
    return stop if end >= 0 else -1


def parse_head(data: bytes, limits: Limits) -> RequestHead:
    """Parse a complete head (as delimited by ``find_head_end``, leading CRLFs allowed)."""
    if len(data) > limits.header_bytes:
        raise ProtocolError("request head too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    start = _skip_empty_lines(data, len(data))
    if not data.endswith(b"\r\n\r\n") or len(data) - start < 4:
        raise ProtocolError("incomplete request head")
    # The head is handled as latin-1 text (RFC 9110 5.5: obs-text); one scan refuses every CTL
    # but HTAB, and CR/LF must all belong to the CRLFs the split consumed (RFC 9112 2.2).
    text = data[start:-4].decode("latin-1")
    if _HEAD_FORBIDDEN.search(text):
        raise ProtocolError("control character in request head")
    lines = text.split("\r\n")
    if text.count("\r") != len(lines) - 1 or text.count("\n") != len(lines) - 1:
        raise ProtocolError("bare CR or LF in request head")
    request_line = lines[0]
    if len(request_line) > limits.request_line:
        raise ProtocolError("request line too long", HTTPStatus.REQUEST_URI_TOO_LONG)
    if len(lines) - 1 > limits.headers:
        raise ProtocolError("too many header fields", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    method, raw_target, version = _parse_request_line(request_line)
    target, raw_path, path, query, authority = _parse_target(method, raw_target)

    fields: list[tuple[str, str]] = []
    special: dict[str, list[str]] = {}
    host_index = -1
    for line in lines[1:]:
        name, value = _parse_field_line(line)
        lower = name.lower()
        if lower in _FRAMING_FIELDS:
            special.setdefault(lower, []).append(value)
            if lower == "host":
                host_index = len(fields)
        fields.append((name, value))

    # RFC 9112 3.2: 400 for an HTTP/1.1 request without Host, for more than one Host field, and
    # for an invalid Host value -- whatever the form of the request-target.
    hosts = special.get("host", [])
    if len(hosts) > 1:
        raise ProtocolError("more than one Host header field")
    if hosts:
        host = hosts[0]
        if host not in _VALID_HOSTS:
            _check_authority(host, port_required=False, what="Host header")
            if len(_VALID_HOSTS) < MAX_REMEMBERED_NAMES:
                _VALID_HOSTS.add(host)
    elif version == "HTTP/1.1":
        raise ProtocolError("HTTP/1.1 request without Host header")
    if authority is not None:
        # RFC 9112 3.2.2: with an absolute-form target the target's authority is the host.
        if host_index >= 0:
            fields[host_index] = (fields[host_index][0], authority)
        else:
            fields.append(("Host", authority))

    content_length, chunked = _framing(version, special)
    return RequestHead(
        method=method, target=target, raw_path=raw_path, path=path, query=query, version=version,
        headers=Headers(fields), content_length=content_length, chunked=chunked,
        keep_alive=_keep_alive(version, special.get("connection")),
        expect_continue=_expect_continue(version, special.get("expect")),
    )


def _parse_request_line(line: str) -> tuple[str, str, str]:
    """method SP request-target SP HTTP-version (RFC 9112 3), single SPs only."""
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ProtocolError("malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):  # RFC 9112 3.1: method = token
        raise ProtocolError("invalid method")
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        if _HTTP_VERSION.fullmatch(version):  # RFC 9110 15.6.6: well-formed but not ours
            raise ProtocolError("HTTP version not supported", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
        raise ProtocolError("malformed HTTP version")
    if not _VISIBLE_ASCII.fullmatch(target):
        raise ProtocolError("request target must be visible ASCII")
    return method, target, version


def _parse_target(method: str, target: str) -> tuple[str, str, str, str, str | None]:
    """(target, raw_path, path, query, authority or None) for the four forms of RFC 9112 3.2."""
    if "#" in target:  # RFC 9112 3.2: no fragment in a request-target
        raise ProtocolError("fragment in request target")
    if method == "CONNECT":  # RFC 9112 3.2.3: authority-form, for CONNECT only
        _check_authority(target, port_required=True, what="CONNECT target")
        return target, "", "", "", None
    authority = None
    if target[0] == "/":  # RFC 9112 3.2.1: origin-form
        path_and_query = target
    elif target == "*":  # RFC 9112 3.2.4: asterisk-form, for OPTIONS only
        if method != "OPTIONS":
            raise ProtocolError("asterisk-form target is only allowed with OPTIONS")
        return target, "*", "*", "", None
    else:  # RFC 9112 3.2.2: absolute-form
        match = _ABSOLUTE_FORM.fullmatch(target)
        if match is None or match["scheme"].lower() not in ("http", "https"):
            raise ProtocolError("invalid request target")
        authority, rest = match["authority"], match["rest"]
        if "@" in authority:  # RFC 9110 4.2.4: userinfo in an http(s) URI is an error
            raise ProtocolError("userinfo in request target")
        _check_authority(authority, port_required=False, what="request target authority")
        path_and_query = rest if rest.startswith("/") else "/" + rest
    raw_path, _, query = path_and_query.partition("?")
    raw_path, path = _normalise_path(raw_path)
    return target, raw_path, path, query, authority


def _check_authority(value: str, *, port_required: bool, what: str) -> None:
    """uri-host [ ":" port ] (RFC 3986 3.2.2-3.2.3); the port is required for CONNECT."""
    match = _HOST.fullmatch(value)
    if match is None:
        raise ProtocolError(f"invalid {what}")
    ip, port = match["ip"], match["port"]
    if ip is not None:
        try:
            ipaddress.IPv6Address(ip)
        except ValueError:
            raise ProtocolError(f"invalid IPv6 address in {what}") from None
    if port_required and not port:
        raise ProtocolError(f"{what} needs a port")
    if port and int(port) > MAX_PORT:
        raise ProtocolError(f"invalid port in {what}")


def _normalise_path(raw: str) -> tuple[str, str]:
    """(raw_path, path): dot-segments resolved (RFC 3986 5.2.4) on the raw path, then decoded.

    Unlike RFC 3986, which silently drops ".." at the root, climbing above "/" is an error.
    A segment that only becomes "." or ".." once decoded (%2e%2e, ..%2f) is an error too, so
    ``path`` never holds a dot-segment and no handler can be walked out of its root by one.
    """
    encoded = "%" in raw
    if encoded and _BAD_PERCENT.search(raw):  # RFC 3986 2.1
        raise ProtocolError("invalid percent-encoding in path")
    if "/." in raw:
        output: list[str] = []
        segments = raw[1:].split("/")
        last = len(segments) - 1
        for index, segment in enumerate(segments):
            if segment == "..":
                if not output:
                    raise ProtocolError("path climbs above the root")
                output.pop()
            elif segment != ".":
                output.append(segment)
                continue
            if index == last:  # "/a/." and "/a/b/.." keep their trailing slash
                output.append("")
        raw = "/" + "/".join(output)
    if not encoded:
        return raw, raw
    decoded = unquote_to_bytes(raw)
    if b"\x00" in decoded:
        raise ProtocolError("NUL in decoded path")
    path = decoded.decode("utf-8", "surrogateescape")
    if "/." in path and any(segment in (".", "..") for segment in path.split("/")):
        raise ProtocolError("encoded dot-segment in path")
    return raw, path


def _parse_field_line(line: str) -> tuple[str, str]:
    """field-name ":" OWS field-value OWS (RFC 9112 5), for header and trailer lines alike.

    The caller has already refused CTLs (RFC 9110 5.5) in the line.
    """
    colon = line.find(":")
    if colon <= 0 or not _TOKEN.fullmatch(line, 0, colon):
        if line[:1] in (" ", "\t"):  # RFC 9112 5.2: obs-fold is rejected, never unfolded
            raise ProtocolError("obsolete line folding in header")
        if colon > 0 and line[colon - 1] in " \t":  # RFC 9112 5.1: no whitespace before the colon
            raise ProtocolError("whitespace between header field name and colon")
        raise ProtocolError("invalid header field line")
    return line[:colon], line[colon + 1:].strip(" \t")  # RFC 9112 5.1: OWS is not part of the value


def _list_elements(values: list[str]) -> list[str]:
    """The elements of a comma-separated list field (RFC 9110 5.6.1), empty ones ignored."""
    return [element for value in values for part in value.split(",") if (element := part.strip(" \t"))]


def _framing(version: str, special: dict[str, list[str]]) -> tuple[int | None, bool]:
    """(content_length, chunked) by RFC 9112 6.1-6.3; anything ambiguous is an error."""
    lengths = special.get("content-length")
    codings = special.get("transfer-encoding")
    if codings is not None:
        if version == "HTTP/1.0":  # RFC 9112 6.1: the framing of such a message is faulty
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if lengths is not None:  # RFC 9112 6.1 and 6.3 item 3: request smuggling
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        elements = [element.lower() for element in _list_elements(codings)]
        if not elements:
            raise ProtocolError("empty Transfer-Encoding")
        if any(element != "chunked" for element in elements):  # RFC 9112 6.1: unknown coding
            raise ProtocolError("unsupported transfer coding", HTTPStatus.NOT_IMPLEMENTED)
        if len(elements) > 1:  # RFC 9112 6.1: chunked MUST NOT be applied more than once
            raise ProtocolError("chunked applied more than once")
        return None, True
    if lengths is None:
        return None, False  # RFC 9112 6.3 item 7: a request without either has no body
    # RFC 9110 8.6: a list of identical values ("42, 42", or repeated fields) is one value;
    # anything else -- differing values, signs, spaces inside, hex -- is unrecoverable.
    elements = [part.strip(" \t") for value in lengths for part in value.split(",")]
    if not all(_CONTENT_LENGTH.fullmatch(element) for element in elements):
        raise ProtocolError("invalid Content-Length")
    if len(set(elements)) != 1:
        raise ProtocolError("conflicting Content-Length values")
    return int(elements[0]), False


def _keep_alive(version: str, values: list[str] | None) -> bool:
    """RFC 9112 9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive" (RFC 9112 C.2.2)."""
    options = {element.lower() for element in _list_elements(values)} if values else set()
    if "close" in options:
        return False
    return version == "HTTP/1.1" or "keep-alive" in options


def _expect_continue(version: str, values: list[str] | None) -> bool:
    """RFC 9110 10.1.1: 100-continue is the only expectation; any other gets 417."""
    if not values:
        return False
    elements = [element.lower() for element in _list_elements(values)]
    if any(element != "100-continue" for element in elements):
        raise ProtocolError("unsupported expectation", HTTPStatus.EXPECTATION_FAILED)
    # RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request MUST be ignored.
    return bool(elements) and version == "HTTP/1.1"


def _incomplete() -> ProtocolError:
    return ProtocolError("incomplete body")


class _FramedBody(ABC):
    """Reading shared by both framings; subclasses say how much of the current frame is left."""

    __slots__ = ("length", "limit", "trailers", "_source", "_on_first_read")

    def __init__(self, length: int | None, source: Source, limit: int | None,
                 on_first_read: Callable[[], None] | None) -> None:
        self.length = length
        self.limit = limit  # may be lowered by the validate stage before the first read
        self.trailers = Headers()
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

    def __init__(self, length: int, source: Source, limit: int | None,
                 on_first_read: Callable[[], None] | None = None) -> None:
        super().__init__(length, source, limit, on_first_read)
        self._declared = self._remaining = length

    @property
    def done(self) -> bool:
        return self._remaining == 0

    def _check_limit(self) -> None:
        if self.limit is not None and self._declared > self.limit:
            raise PayloadTooLarge(f"request body larger than {self.limit} bytes")

    def _frame_left(self) -> int:
        return self._remaining

    def _consumed(self, count: int) -> None:
        self._remaining -= count


class EmptyBody(ContentLengthBody):
    """No body (RFC 9112 6.3 item 7): done from the start, so it never touches the source."""

    __slots__ = ()

    def __init__(self, source: Source, limit: int | None = None) -> None:
        super().__init__(0, source, limit)


class ChunkedBody(_FramedBody):
    """The chunked transfer coding (RFC 9112 7.1), read lazily, trailers kept apart.

    Bounds: a chunk-size line is at most MAX_CHUNK_LINE_BYTES; chunk extensions (parsed, then
    ignored, RFC 9112 7.1.1) and trailer fields together may use at most ``limits.header_bytes``
    for the whole body, and at most ``limits.headers`` trailer fields are accepted.  The size
    lines themselves are bounded by the data they frame, which the body limit bounds.
    """

    __slots__ = ("_limits", "_chunk_left", "_finished", "_announced", "_metadata_left")

    def __init__(self, source: Source, limit: int | None,
                 on_first_read: Callable[[], None] | None = None, limits: Limits | None = None) -> None:
        super().__init__(None, source, limit, on_first_read)
        self._limits = limits or Limits()
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
            if _FIELD_FORBIDDEN.search(line, 0, len(line) - 2):  # RFC 9110 5.5
                raise ProtocolError("invalid character in trailer field")
            self.trailers.add(*_parse_field_line(line[:-2].decode("latin-1")))


def body_reader(head: RequestHead, source: Source, limit: int | None,
                on_first_read: Callable[[], None] | None = None, *,
                limits: Limits | None = None) -> Body:
    """The body stream framed by ``head`` (RFC 9112 6.3); ``limits`` bound chunked trailers."""
    if head.chunked:
        return ChunkedBody(source, limit, on_first_read, limits)
    if head.content_length:
        return ContentLengthBody(head.content_length, source, limit, on_first_read)
    return EmptyBody(source, limit)


def serialize_response_head(version: str, status: int, reason: str | None,
                            headers: Sequence[tuple[str, str]]) -> bytes:
    """The status line and header section (RFC 9112 4 and 5), refusing header injection.

    Field names already seen valid are remembered, and the values are checked together in one
    scan: this runs for every response.
    """
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ValueError(f"unsupported HTTP version {version!r}")
    code = int(status)
    if not 100 <= code <= 999:  # RFC 9112 4: status-code = 3DIGIT
        raise ValueError(f"invalid status code {status!r}")
    if reason is None:
        reason = _PHRASES.get(code, "")
    elif _TEXT_FORBIDDEN.search(reason):  # RFC 9112 4: reason-phrase has no CR, LF or CTL
        raise ValueError(f"invalid reason phrase {reason!r}")
    lines = [f"{version} {code} {reason}\r\n"]
    values = []
    for name, value in headers:
        if name not in _VALID_NAMES:
            if not _TOKEN.fullmatch(name):  # RFC 9110 5.1: field-name = token
                raise ValueError(f"invalid header name {name!r}")
            if len(_VALID_NAMES) < MAX_REMEMBERED_NAMES:
                _VALID_NAMES.add(name)
        values.append(value)
        lines.append(f"{name}: {value}\r\n")
    if _VALUE_FORBIDDEN.search("".join(values)):  # RFC 9110 5.5: CR, LF, NUL would split the head
        for name, value in headers:
            if _VALUE_FORBIDDEN.search(value):
                raise ValueError(f"invalid character in value of header {name!r}")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")  # characters beyond latin-1: UnicodeEncodeError


def encode_chunk(data: bytes) -> bytes:
    """One chunk: hex size CRLF data CRLF (RFC 9112 7.1); b"" stays b"" (it would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
