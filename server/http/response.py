"""Responses on the wire (RFC 9112 4-7), sans I/O: how a response is framed, its head, its chunks.

How this works::

    method, version, status, ──► frame_response(...)      Framing: the head's fields, the body
    handler fields, body,          │                      length, chunked, keep_alive
    keep-alive, draining           ├─ handler fields      hop-by-hop dropped (a "close" in
                                   │                      Connection honoured), Content-Length
                                   │                      kept aside
                                   ├─ the length          bytes, file region: their size; a
                                   │                      stream: the handler's Content-Length
                                   ├─ the framing         1xx/204/304: none; a length:
                                   │                      Content-Length; else chunked on
                                   │                      HTTP/1.1, the close on HTTP/1.0 (HEAD:
                                   │                      a declared length kept, never chunked)
                                   └─ porch's fields      Date, Server, then Connection: close,
                                                          or keep-alive to an HTTP/1.0 client
    status + Framing.headers ──► serialize_response_head  b"HTTP/1.1 200 OK\\r\\n...\\r\\n\\r\\n"
    body pieces ───────────────► encode_chunk / LAST_CHUNK

Nothing here touches a socket: the connection calls ``frame_response`` for every response,
applies its keep-alive decision, writes the head and then the body as framed.  Handlers never
frame: whatever they set, the fields of the connection are porch's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from porch.http.grammar import (
    BODILESS_STATUSES,
    CONTENT_LENGTH,
    HOP_BY_HOP,
    MAX_REMEMBERED_NAMES,
    TEXT_FORBIDDEN,
    TOKEN,
    VALUE_FORBIDDEN,
)
from porch.http.messages import FileRegion, ResponseBody

LAST_CHUNK = b"0\r\n\r\n"
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_VALID_NAMES: set[str] = set()  # response field names already checked (handlers reuse a few)


@dataclass(slots=True)  # read-only by convention: frozen (or a NamedTuple) costs more per response
class Framing:
    """How one response goes on the wire: ``frame_response``'s decision, which the connection applies."""

    headers: list[tuple[str, str]]  # every field of the head, in order
    length: int | None  # the body's length; None when chunked, close-delimited or bodiless
    chunked: bool  # the body is sent with the chunked transfer coding
    keep_alive: bool  # the connection may serve another request after this response


def frame_response(
    method: str,
    version: str,
    status: int,
    fields: Iterable[tuple[str, str]],
    body: ResponseBody,
    keep_alive: bool,
    draining: bool,
    date: str,
    server: str,
) -> Framing:
    """Decide the framing of a response (RFC 9112 6.1-6.3, 9.3): a pure function.

    ``keep_alive`` says whether the connection may stay open (the request allowed it);
    ``draining`` that the server is stopping, so this is the last response.  ``date`` and
    ``server`` are the Date and Server values ("" for no Server field).  A handler's
    Content-Length that is not a decimal number raises ValueError (the connection answers 500).
    """
    headers: list[tuple[str, str]] = []
    declared: str | None = None
    for name, value in fields:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == "connection" and "close" in value.lower():
                keep_alive = False
            continue
        if lower == "content-length":
            declared = value
            continue
        headers.append((name, value))
    length: int | None
    if isinstance(body, (bytes, bytearray)):
        length = len(body)
        if declared is not None and not body and method == "HEAD":
            length = parse_length(declared)  # the length a GET would have had (RFC 9110 9.3.2)
    elif isinstance(body, FileRegion):
        length = body.length
    else:
        length = parse_length(declared) if declared is not None else None
    chunked = False
    if status in BODILESS_STATUSES:
        length = None
    elif length is None:
        if version == "HTTP/1.1" and method != "HEAD":
            chunked = True
            headers.append(("Transfer-Encoding", "chunked"))
        elif method != "HEAD":
            keep_alive = False  # HTTP/1.0 without a length: the close delimits the body
    if length is not None:
        headers.append(("Content-Length", str(length)))
    headers.append(("Date", date))
    if server:
        headers.append(("Server", server))
    if draining:
        keep_alive = False
    if not keep_alive:
        headers.append(("Connection", "close"))
    elif version == "HTTP/1.0":
        headers.append(("Connection", "keep-alive"))  # RFC 9112 C.2.2: 1.0 persists only when told
    return Framing(headers, length, chunked, keep_alive)


def parse_length(value: str) -> int:
    """A handler's Content-Length; ValueError (→ 500) if it is not a plain decimal number.

    ASCII digits only (``CONTENT_LENGTH``): ``str.isdigit`` would let "٣" through as 3."""
    if not CONTENT_LENGTH.fullmatch(value):
        raise ValueError(f"invalid Content-Length {value!r}")
    return int(value)


def serialize_response_head(version: str, status: int, reason: str | None, headers: Sequence[tuple[str, str]]) -> bytes:
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
    elif TEXT_FORBIDDEN.search(reason):  # RFC 9112 4: reason-phrase has no CR, LF or CTL
        raise ValueError(f"invalid reason phrase {reason!r}")
    lines = [f"{version} {code} {reason}\r\n"]
    values = []
    for name, value in headers:
        if name not in _VALID_NAMES:
            if not TOKEN.fullmatch(name):  # RFC 9110 5.1: field-name = token
                raise ValueError(f"invalid header name {name!r}")
            if len(_VALID_NAMES) < MAX_REMEMBERED_NAMES:
                _VALID_NAMES.add(name)
        values.append(value)
        lines.append(f"{name}: {value}\r\n")
    if VALUE_FORBIDDEN.search("".join(values)):  # RFC 9110 5.5: CR, LF, NUL would split the head
        for name, value in headers:
            if VALUE_FORBIDDEN.search(value):
                raise ValueError(f"invalid character in value of header {name!r}")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")  # characters beyond latin-1: UnicodeEncodeError


def encode_chunk(data: bytes) -> bytes:
    """One chunk: hex size CRLF data CRLF (RFC 9112 7.1); b"" stays b"" (it would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
