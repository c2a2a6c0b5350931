"""The handler interface: what every handler type is and how it is built.

A handler class declares its options as a frozen dataclass named ``Options`` (fields declared
with ``porch.config.settings.setting``), is built once per mount before any socket is bound -- so a
handler that cannot be built is a config error at start-up, never a 500 per request -- and then
answers ``handle(request) -> Response`` concurrently, from many threads or processes.  It never
touches the socket.  Raising an ``HTTPError`` answers with its status; any other exception
becomes a 500 with the traceback in the error log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from porch.http.messages import Request, Response
from porch.metrics.counters import NO_METRICS, Recorder

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


def no_snapshot() -> dict[str, Any]:
    """The snapshot where no master publishes one (a unit test, ``porch check``)."""
    return {}


def always_ready() -> str | None:
    return None


@dataclass(frozen=True)
class HandlerContext:
    """What a handler may know about the server it runs in."""

    concurrency: str = "threading"  # "threading" or "forking"
    workers: int = 1
    software: str = "porch"  # SERVER_SOFTWARE / Server header value
    # The master's latest metrics snapshot (its shape: ``porch.metrics``).
    snapshot: Callable[[], dict[str, Any]] = no_snapshot
    # Why this process should not get new requests now (booting, draining, reloading); None: ready.
    readiness: Callable[[], str | None] = always_ready
    # Where handlers count what the pipeline cannot see (CGI scripts, app exceptions, faults).
    metrics: Recorder = field(default_factory=lambda: NO_METRICS)


class Handler:
    """Base class of every handler type.  Subclasses set ``Options`` and implement ``handle``."""

    Options: ClassVar[type[Any]] = NoOptions
    # True for handlers that show the server's own state (status, metrics): their mounts admit
    # loopback clients only, unless the mount's own ``access: {allow: ...}`` says otherwise.
    local_only: ClassVar[bool] = False

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        """Build from the mount's config; raise OptionError (or ValueError) if the options cannot work."""
        self.mount = mount
        self.options = mount.options
        self.context = context

    def handle(self, request: Request) -> Response:
        """Answer one request.  Called concurrently; keep per-request state local."""
        raise TypeError(f"{type(self).__name__} does not implement handle()")

    def warnings(self) -> list[str]:
        """What will not work although the handler could be built (``porch check`` prints each)."""
        return []

    def close(self) -> None:
        """Release what the handler holds (processes, files) when the server stops."""

    def path_info(self, request: Request) -> str:
        """The decoded request path below this handler's mount prefix, "" or starting with "/"."""
        prefix = self.mount.path.rstrip("/")
        return request.path[len(prefix) :]
