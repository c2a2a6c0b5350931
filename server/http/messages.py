"""The values that travel along the request spine: ``Headers``, ``Request`` and ``Response``.

A ``Request`` is built by the connection from a parsed head plus a body reader; handlers read it
and return a ``Response``.  Handlers never see the socket: the connection writes the response,
so HEAD, Content-Length, chunking and sendfile live in one place for every handler type.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol


class Headers:
    """Case-insensitive, order-keeping, multi-valued header fields with raw names kept."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        key = name.lower()
        for item_name, value in self._items:
            if item_name.lower() == key:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in the order received."""
        key = name.lower()
        return [value for item_name, value in self._items if item_name.lower() == key]

    def joined(self, name: str) -> str | None:
        """All values of ``name`` as one field value (RFC 9110 section 5.3), or None if absent."""
        values = self.get_all(name)
        if not values:
            return None
        return ("; " if name.lower() == "cookie" else ", ").join(values)

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` by one with ``value``."""
        self.remove(name)
        self._items.append((name, value))

    def setdefault(self, name: str, value: str) -> str:
        existing = self.get(name)
        if existing is None:
            self._items.append((name, value))
            return value
        return existing

    def remove(self, name: str) -> None:
        key = name.lower()
        self._items = [item for item in self._items if item[0].lower() != key]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def names(self) -> builtins.set[str]:
        """The lower-cased names present."""
        return {name.lower() for name, _ in self._items}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Body(Protocol):
    """A request body stream that enforces its framing and the body limit.

    Reading past the end returns ``b""``.  Reading more than ``limit`` bytes in total raises
    ``PayloadTooLarge``; bad chunked framing raises ``ProtocolError``.  The first read of a
    request that sent ``Expect: 100-continue`` makes the connection send ``100 Continue``.
    """

    length: int | None  # the declared Content-Length; None when chunked
    limit: int | None  # max bytes that may be read in total; set by the validate stage
    trailers: Headers  # chunked trailer fields, filled once the body is read to its end
    received: int  # body bytes handed out so far (the metrics count them)

    def read(self, size: int = -1) -> bytes: ...

    def readline(self, size: int = -1) -> bytes: ...

    @property
    def done(self) -> bool:
        """True once the whole body has been consumed from the wire."""
        ...


def _never() -> bool:
    return False


def nothing() -> None:
    """A wait announced where nobody listens (a forked child, a unit test)."""


Address = tuple[str, int] | str  # (host, port) for TCP; a path (or "") for Unix sockets


@dataclass(slots=True)
class Request:
    """One parsed request.  ``path`` is percent-decoded (UTF-8, surrogateescape); ``raw_path`` is not.

    Read-only by convention (a changed request is a new one: ``dataclasses.replace``); not frozen
    because a frozen dataclass pays ``object.__setattr__`` per field, ~0.6 µs on every request.
    """

    method: str
    target: str  # the request-target exactly as sent
    raw_path: str  # the path part of the target, still percent-encoded
    path: str  # percent-decoded path, always starting with "/" (or "*" for OPTIONS *)
    query: str  # the query string without "?", still percent-encoded
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: Headers
    body: Body
    client: Address
    server: Address
    scheme: str = "http"
    request_id: str = ""
    user: str | None = None  # who authenticated (Basic authentication of the mount), for REMOTE_USER
    start: float = field(default_factory=time.monotonic)
    # Whether the client has closed its side (FIN, reset), for handlers that wait a long time;
    # a quick poll of the connection, never a read.
    client_gone: Callable[[], bool] = _never
    # Call before waiting for I/O (a script's output, a slow socket): in the threading model it
    # lets another pool thread take new work meanwhile (``porch.workers.turns``).
    before_wait: Callable[[], None] = nothing

    @property
    def host(self) -> str:
        """The Host header without port, lower-cased; the server address when absent."""
        return host_of(self.headers, self.server)


def host_of(headers: Headers, server: Address) -> str:
    """The host a request is for: its Host header without port, lower-cased; else the address
    it came in on.  What virtual hosts are matched against."""
    host = headers.get("host")
    if not host:
        return server[0] if isinstance(server, tuple) else "localhost"
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.rsplit(":", 1)[0].lower() if ":" in host else host.lower()


# A file this small costs more in system calls than in bytes.  So the connection reads a file
# body up to this size and sends it in one write with the head, instead of sendfile after the
# head, and the static handler keeps files up to this size in memory (``SmallFiles``).
SMALL_FILE_BYTES = 32768


@dataclass(frozen=True, slots=True)
class FileRegion:
    """``length`` bytes of an open binary file from ``offset``; sent with ``socket.sendfile``.

    The connection closes ``file`` after sending (or failing to).
    """

    file: BinaryIO
    offset: int
    length: int


ResponseBody = bytes | Iterable[bytes] | FileRegion


@dataclass(slots=True)
class Response:
    """Status, headers and a body: bytes, an iterable of bytes (streamed), or a file region.

    An iterable body is written as it is produced: with Content-Length when the handler set one
    (the connection sends exactly that many bytes, closing the connection if the iterable falls
    short), else chunked on HTTP/1.1 or close-delimited on HTTP/1.0.  If the iterable has a
    ``close()`` method the connection always calls it, whatever happens (PEP 3333).
    """

    status: int
    headers: Headers = field(default_factory=Headers)
    body: ResponseBody = b""
    reason: str | None = None  # reason phrase; the standard one for ``status`` when None


# --- how request values appear in logs and environments -----------------------------------

_ESCAPES = {i: f"\\x{i:02x}" for i in range(0x20)} | {0x7F: "\\x7f", ord('"'): '\\"', ord("\\"): "\\\\"}


def escape(text: str) -> str:
    """Make client-controlled text safe for a log line: no control characters, quotes escaped."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(
        _ESCAPES.get(ord(ch), ch if ch.isprintable() else ch.encode("unicode_escape").decode()) for ch in text
    )


def client_host(client: object) -> str:
    """The client address as it appears in logs and REMOTE_ADDR."""
    return client[0] if isinstance(client, tuple) else "unix"
