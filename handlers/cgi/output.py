"""Reading a CGI script's response: the header block, and what kind of response it is.

How this works: a script's stdout starts with a header block (RFC 3875 section 6.2) -- lines of
``Name: value`` ended by LF or CRLF (section 7.2 and 6.3.4: servers accept both), then an empty
line, then the body.  ``HeaderBlockReader`` collects output until that empty line (or until the
block grows past its limit), ``parse_cgi_head`` checks the block against section 6.3 and pulls
out the CGI fields (``Status``, ``Location``, ``Content-Type``), and ``CGIHead.kind`` says which
of the section 6.2 response types it is: a document, a local redirect or a client redirect.
``parse_nph_head`` reads the HTTP status line and fields that an ``nph-`` script writes itself
(section 5).

Everything here is a pure function of bytes: no processes, no sockets, no logging.  Any input
either parses or raises ``MalformedOutput`` (which the handler answers with 502).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from http import HTTPStatus

from porch.http.grammar import CONTENT_LENGTH, FIELD_FORBIDDEN, TOKEN_BYTES

CR = 0x0D
CGI_FIELDS = frozenset({"status", "location", "content-type"})
# Fields the server itself owns (RFC 3875 section 6.3.4: it SHOULD resolve conflicts), so a
# script's copy would only duplicate them; hop-by-hop fields are dropped by the connection.
SERVER_FIELDS = frozenset({"date", "server"})
STATUS_VALUE = re.compile(r"([0-9]{3})(?:[ \t]+(.*))?")
NPH_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\r\n]*))?")
# RFC 9110 8.6: Content-Length = 1*DIGIT, ASCII digits only ("\u00b2".isdigit() is true), and
# no longer than the request parser accepts, so that int() takes every value that matches.


class MalformedOutput(ValueError):
    """The script's output is not a valid CGI response (RFC 3875 section 6); the client gets 502."""


class ResponseKind(Enum):
    """The response types of RFC 3875 section 6.2."""

    DOCUMENT = "document"  # 6.2.1 (and a Location sent with an explicit Status)
    LOCAL_REDIRECT = "local redirect"  # 6.2.2: the server serves the local path itself
    CLIENT_REDIRECT = "client redirect"  # 6.2.3 / 6.2.4: 302 with Location


@dataclass
class CGIHead:
    """A parsed header block: the status to answer with and the fields to send to the client."""

    status: int | None = None  # from ``Status`` (or an NPH status line); None when not given
    reason: str | None = None
    fields: list[tuple[str, str]] = field(default_factory=list)  # in order, Status removed

    def get(self, name: str) -> str | None:
        key = name.lower()
        return next((value for field_name, value in self.fields if field_name.lower() == key), None)

    @property
    def location(self) -> str | None:
        return self.get("location")

    def length_matches(self, size: int) -> bool:
        """Whether a body of ``size`` bytes agrees with the script's Content-Length, if it gave one.

        The parsers leave at most one Content-Length, and only a valid one (``fold_content_length``).
        """
        declared = self.get("content-length")
        return declared is None or int(declared) == size

    def kind(self) -> ResponseKind:
        """Which RFC 3875 section 6.2 response this head starts (the body is not considered).

        A local redirect is exactly ``Location: /path`` and nothing else (6.2.2).  Any other
        Location without a Status is a client redirect, answered 302 (6.2.3); with a Status the
        script chose its own code (6.2.4, or e.g. ``201 Created`` with a Location).
        """
        location = self.location
        if location is None or self.status is not None:
            return ResponseKind.DOCUMENT
        if is_local_path(location) and len(self.fields) == 1:
            return ResponseKind.LOCAL_REDIRECT
        return ResponseKind.CLIENT_REDIRECT

    def response_status(self) -> int:
        """The status to send: the script's, else 302 for a client redirect, else 200 (6.2.1)."""
        if self.status is not None:
            return self.status
        return HTTPStatus.FOUND if self.location is not None else HTTPStatus.OK


def is_local_path(location: str) -> bool:
    """RFC 3875 section 6.3.2: a local-pathquery is an abs-path; ``//host`` is a network path."""
    return location.startswith("/") and not location.startswith("//")


class HeaderBlockReader:
    """Collects script output until the empty line that ends the header block.

    ``feed`` returns ``(block, rest)`` once the block is complete: ``block`` holds the header
    lines (each still ending in its newline), ``rest`` the first bytes of the body.  A block
    longer than ``limit`` bytes raises ``MalformedOutput``, so a script cannot make the server
    buffer an endless header.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self._line_start = 0  # where the first line not yet known to be a header line starts

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        self.buffer += data
        while True:
            newline = self.buffer.find(b"\n", self._line_start)
            if newline < 0:
                if len(self.buffer) > self.limit:
                    raise MalformedOutput(f"header block longer than {self.limit} bytes")
                return None
            if newline + 1 > self.limit:
                raise MalformedOutput(f"header block longer than {self.limit} bytes")
            length = newline - self._line_start
            if length == 0 or (length == 1 and self.buffer[self._line_start] == CR):
                block = bytes(self.buffer[: self._line_start])
                rest = bytes(self.buffer[newline + 1 :])
                self.buffer.clear()
                return block, rest
            self._line_start = newline + 1

    @property
    def received(self) -> int:
        """Bytes of output received so far without completing the block."""
        return len(self.buffer)


def header_lines(block: bytes) -> list[bytes]:
    """The lines of a header block, each without its LF or CRLF."""
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def parse_field(line: bytes) -> tuple[str, str]:
    """One ``Name: value`` line (RFC 3875 section 6.3), value without surrounding whitespace."""
    if line[:1] in (b" ", b"\t"):
        raise MalformedOutput("continuation lines are not allowed (RFC 3875 section 6.3)")
    colon = line.find(b":")
    if colon <= 0:
        raise MalformedOutput(f"not a header field: {line[:80]!r}")
    name = line[:colon]
    if not TOKEN_BYTES.fullmatch(name):  # RFC 9110 section 5.6.2: a field name is a token
        # This also refuses whitespace between the name and the colon (RFC 3875 section 6.3).
        raise MalformedOutput(f"invalid header field name {name[:80]!r}")
    value = line[colon + 1 :].strip(b" \t")
    if FIELD_FORBIDDEN.search(value):  # RFC 9110 section 5.5: no control character but HTAB
        raise MalformedOutput(f"control character in the value of {name.decode('ascii')}")
    return name.decode("ascii"), value.decode("latin-1")


def parse_status(value: str) -> tuple[int, str | None]:
    """``Status: 404 Not Found`` (RFC 3875 section 6.3.3); the reason phrase may be missing."""
    match = STATUS_VALUE.fullmatch(value)
    if match is None:
        raise MalformedOutput(f"invalid Status value {value[:80]!r}")
    code = int(match.group(1))
    if not 200 <= code <= 599:
        raise MalformedOutput(f"Status {code} is not a final status code")
    return code, (match.group(2) or "").strip() or None


def fold_content_length(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``fields`` with their Content-Length fields folded into one, which the framing relies on.

    RFC 9110 8.6: every value, and every member of a list value, is 1*DIGIT; fields or members
    that all agree ("5" twice, or "5, 5") are one length, given once where the first was.
    Anything else says nothing certain about the body's length: MalformedOutput.
    """
    lengths = [value for name, value in fields if name.lower() == "content-length"]
    if not lengths:
        return fields
    members = {member.strip(" \t") for value in lengths for member in value.split(",")}
    for member in members:
        if not CONTENT_LENGTH.fullmatch(member):
            raise MalformedOutput(f"invalid Content-Length {member[:80]!r}")
    if len(members) > 1:
        one, other = sorted(members)[:2]
        raise MalformedOutput(f"differing Content-Length values {one} and {other} (RFC 9110 section 8.6)")
    (length,) = members
    folded: list[tuple[str, str]] = []
    placed = False
    for name, value in fields:
        if name.lower() != "content-length":
            folded.append((name, value))
        elif not placed:
            folded.append((name, length))
            placed = True
    return folded


def kept(name: str) -> bool:
    """Whether a script's field goes to the client (RFC 3875 sections 6.3.4 and 6.3.5)."""
    lower = name.lower()
    return lower not in SERVER_FIELDS and not lower.startswith("x-cgi-")


def parse_cgi_head(block: bytes) -> CGIHead:
    """Parse the header block of a (parsed-header) CGI response, RFC 3875 section 6.3."""
    head = CGIHead()
    seen: set[str] = set()
    for line in header_lines(block):
        name, value = parse_field(line)
        lower = name.lower()
        if lower in CGI_FIELDS:
            if lower in seen:
                raise MalformedOutput(f"{name} given more than once (RFC 3875 section 6.3)")
            seen.add(lower)
        if not value:
            continue  # "A NULL field value is equivalent to a field not being sent" (6.3)
        if lower == "status":
            head.status, head.reason = parse_status(value)
            continue
        if kept(name):
            head.fields.append((name, value))
    head.fields = fold_content_length(head.fields)
    if head.status is None and head.get("location") is None and head.get("content-type") is None:
        raise MalformedOutput("no Content-Type, Location or Status field (RFC 3875 section 6.3)")
    return head


def parse_nph_head(block: bytes) -> CGIHead:
    """Parse the status line and fields an NPH script writes itself (RFC 3875 section 5.2).

    The script's framing fields (Transfer-Encoding, Connection, ...) are dropped later by the
    connection, which frames the body itself; Content-Length is checked and folded as for any
    script; everything else is passed on unchanged.
    """
    lines = header_lines(block)
    if not lines:
        raise MalformedOutput("NPH output without a status line")
    match = NPH_STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise MalformedOutput(f"invalid NPH status line {lines[0][:80]!r}")
    code = int(match.group(3))
    if not 200 <= code <= 599:
        raise MalformedOutput(f"NPH status {code} is not a final status code")
    reason = match.group(4)
    if reason is not None and FIELD_FORBIDDEN.search(reason):  # RFC 9112 section 4
        raise MalformedOutput("control character in the NPH reason phrase")
    text = reason.decode("latin-1").strip() if reason else ""
    head = CGIHead(status=code, reason=text or None)
    for line in lines[1:]:
        name, value = parse_field(line)
        if kept(name):
            head.fields.append((name, value))
    head.fields = fold_content_length(head.fields)
    return head
