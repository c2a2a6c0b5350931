"""The route table: virtual host + longest path prefix → mount and its handler.

Prefixes match whole path segments: a mount at ``/app`` serves ``/app`` and ``/app/x`` but not
``/application``.  Mounts naming a ``host`` are tried first for requests to that host; mounts
without one serve every host.  No match is a 404.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from porch.config.settings import Mount
from porch.handlers.base import Handler
from porch.http.errors import NotFound
from porch.http.messages import Request

# A check a mount's requests pass after its access rules (a rate limit, authentication): it
# raises the HTTPError that refuses the request, or returns the request to serve (the same one,
# or one with what it learned, such as the authenticated user).
Gate = Callable[[Request], Request]


def no_gates(mount: Mount) -> tuple[Gate, ...]:
    return ()


@dataclass(frozen=True, slots=True)
class Route:
    mount: Mount
    handler: Handler
    gates: tuple[Gate, ...] = ()


class Router:
    """Finds the route for a request; built once from the handlers of every mount."""

    def __init__(
        self, routes: Sequence[tuple[Mount, Handler]], gates_for: Callable[[Mount], tuple[Gate, ...]] = no_gates
    ) -> None:
        by_host: dict[str | None, list[Route]] = {}
        for mount, handler in routes:
            host = mount.host.lower() if mount.host else None
            by_host.setdefault(host, []).append(Route(mount, handler, gates_for(mount)))
        # Longest prefix first, so the first match is the best one.
        self._by_host = {
            host: sorted(found, key=lambda r: len(r.mount.path), reverse=True) for host, found in by_host.items()
        }
        self._any_host = self._by_host.get(None, [])
        self.routes = [Route(mount, handler) for mount, handler in routes]

    def match(self, host: str, path: str) -> Route:
        """The route serving ``path`` on ``host``; NotFound when no mount covers it."""
        for candidates in (self._by_host.get(host, ()) if host else (), self._any_host):
            for route in candidates:
                prefix = route.mount.path
                if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                    return route
        raise NotFound()

    def close(self) -> None:
        """Close every handler; called once when the server stops."""
        for route in self.routes:
            route.handler.close()
