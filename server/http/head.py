"""Request heads on the wire (RFC 9112 2-6), sans I/O: where a head ends, what it says.

How this works::

    bytes from the socket ──► find_head_end(buffer)   -1 until the blank line ending the head;
                                                      rejects bare CR/LF, NUL, long lines early
    buffer[:end] ─────────► parse_head(head)          RequestHead: method, target, path, query,
                              │                       version, Headers, framing, keep-alive
                              ├─ request line         method, target (four forms), version
                              ├─ target → path        dot-segments resolved, then decoded
                              └─ field lines          Host, Content-Length / Transfer-Encoding,
                                                      Connection and Expect read on the way

Nothing here touches a socket, logs or knows a handler: the connection owns the buffer and
passes it in, with the ``ParseLimits`` to hold it to.  The parser is strict: whatever is
ambiguous or malformed raises ``ProtocolError`` carrying the status to answer with, and the
connection closes after answering (RFC 9112 11.2), because the framing of whatever follows
cannot be trusted.  Never guess.

Parsing uses ``bytes.find``/``split`` and a few precompiled regular expressions applied to whole
elements (a method, a field name), never a regular expression per line or the email package.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol
from urllib.parse import unquote_to_bytes

from porch.http.errors import ProtocolError
from porch.http.grammar import (
    CONTENT_LENGTH,
    HEAD_FORBIDDEN,
    MAX_REMEMBERED_NAMES,
    TOKEN,
    list_elements,
    parse_field_line,
)
from porch.http.messages import Headers

MAX_PORT = 65535

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
_VALID_HOSTS: set[str] = set()  # Host values already checked (a server is asked for a few names)
_FRAMING_FIELDS = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})


class ParseLimits(Protocol):
    """The bounds a request is parsed within: the server's configured limits, or a test's.

    The members are read-only, so that a frozen dataclass satisfies the protocol.
    """

    @property
    def request_line(self) -> int:
        """Longest request line in bytes, CRLF excluded (longer: 414)."""
        ...

    @property
    def header_bytes(self) -> int:
        """Largest head in bytes (larger: 431); also what chunk extensions and trailers may use."""
        ...

    @property
    def headers(self) -> int:
        """Most header fields in one head, and most trailer fields (more: 431)."""
        ...


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


def find_head_end(buffer: bytes | bytearray, limits: ParseLimits) -> int:
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
        errors.append(
            (
                limits.header_bytes + 1,
                ProtocolError("request head too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE),
            )
        )
    if errors:
        raise min(errors, key=lambda error: error[0])[1]
    return stop if end >= 0 else -1


def parse_head(data: bytes, limits: ParseLimits) -> RequestHead:
    """Parse a complete head (as delimited by ``find_head_end``, leading CRLFs allowed)."""
    if len(data) > limits.header_bytes:
        raise ProtocolError("request head too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    start = _skip_empty_lines(data, len(data))
    if not data.endswith(b"\r\n\r\n") or len(data) - start < 4:
        raise ProtocolError("incomplete request head")
    # The head is handled as latin-1 text (RFC 9110 5.5: obs-text); one scan refuses every CTL
    # but HTAB, and CR/LF must all belong to the CRLFs the split consumed (RFC 9112 2.2).
    text = data[start:-4].decode("latin-1")
    if HEAD_FORBIDDEN.search(text):
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
        name, value = parse_field_line(line)
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
            check_authority(host, port_required=False, what="Host header")
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
        method=method,
        target=target,
        raw_path=raw_path,
        path=path,
        query=query,
        version=version,
        headers=Headers(fields),
        content_length=content_length,
        chunked=chunked,
        keep_alive=_keep_alive(version, special.get("connection")),
        expect_continue=_expect_continue(version, special.get("expect")),
    )


def _parse_request_line(line: str) -> tuple[str, str, str]:
    """method SP request-target SP HTTP-version (RFC 9112 3), single SPs only."""
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ProtocolError("malformed request line")
    method, target, version = parts
    if not TOKEN.fullmatch(method):  # RFC 9112 3.1: method = token
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
        check_authority(target, port_required=True, what="CONNECT target")
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
        check_authority(authority, port_required=False, what="request target authority")
        path_and_query = rest if rest.startswith("/") else "/" + rest
    raw_path, _, query = path_and_query.partition("?")
    raw_path, path = _normalise_path(raw_path)
    return target, raw_path, path, query, authority


def check_authority(value: str, *, port_required: bool, what: str) -> None:
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


def _framing(version: str, special: dict[str, list[str]]) -> tuple[int | None, bool]:
    """(content_length, chunked) by RFC 9112 6.1-6.3; anything ambiguous is an error."""
    lengths = special.get("content-length")
    codings = special.get("transfer-encoding")
    if codings is not None:
        if version == "HTTP/1.0":  # RFC 9112 6.1: the framing of such a message is faulty
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if lengths is not None:  # RFC 9112 6.1 and 6.3 item 3: request smuggling
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        elements = [element.lower() for element in list_elements(codings)]
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
    if not all(CONTENT_LENGTH.fullmatch(element) for element in elements):
        raise ProtocolError("invalid Content-Length")
    if len(set(elements)) != 1:
        raise ProtocolError("conflicting Content-Length values")
    return int(elements[0]), False


def _keep_alive(version: str, values: list[str] | None) -> bool:
    """RFC 9112 9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive" (RFC 9112 C.2.2)."""
    options = {element.lower() for element in list_elements(values)} if values else set()
    if "close" in options:
        return False
    return version == "HTTP/1.1" or "keep-alive" in options


def _expect_continue(version: str, values: list[str] | None) -> bool:
    """RFC 9110 10.1.1: 100-continue is the only expectation; any other gets 417."""
    if not values:
        return False
    elements = [element.lower() for element in list_elements(values)]
    if any(element != "100-continue" for element in elements):
        raise ProtocolError("unsupported expectation", HTTPStatus.EXPECTATION_FAILED)
    # RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request MUST be ignored.
    return bool(elements) and version == "HTTP/1.1"
