"""The handler interface: what every handler type is and how it is built.

A handler class declares its options as a frozen dataclass named ``Options`` (fields declared
with ``porch.config.settings.setting``), is built once per mount before any socket is bound -- so a
handler that cannot be built is a config error at start-up, never a 500 per request -- and then
answers ``handle(request) -> Response`` concurrently, from many threads or processes.  It never
touches the socket.  Raising an ``HTTPError`` answers with its status; any other exception
becomes a 500 with the traceback in the error log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from porch.http.messages import Request, Response

if TYPE_CHECKING:
    from porch.config.settings import Mount


class OptionError(ValueError):
    """Raised by a handler's constructor about one of its options, so the error names its line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class NoOptions:
    """Options of a handler that takes none."""


@dataclass(frozen=True)
class HandlerContext:
    """What a handler may know about the server it runs in."""

    concurrency: str = "threading"  # "threading" or "forking"
    workers: int = 1
    software: str = "porch"  # SERVER_SOFTWARE / Server header value


class Handler:
    """Base class of every handler type.  Subclasses set ``Options`` and implement ``handle``."""

    Options: ClassVar[type[Any]] = NoOptions

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        """Build from the mount's config; raise OptionError (or ValueError) if the options cannot work."""
        self.mount = mount
        self.options = mount.options
        self.context = context

    def handle(self, request: Request) -> Response:
        """Answer one request.  Called concurrently; keep per-request state local."""
        raise TypeError(f"{type(self).__name__} does not implement handle()")

    def close(self) -> None:
        """Release what the handler holds (processes, files) when the server stops."""

    def path_info(self, request: Request) -> str:
        """The decoded request path below this handler's mount prefix, "" or starting with "/"."""
        prefix = self.mount.path.rstrip("/")
        return request.path[len(prefix) :]
