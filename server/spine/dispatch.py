"""The route table: virtual host, then longest path prefix → mount and its handler.

As nginx picks a server block by name and then a location by prefix, the host decides first and
the path second.  The request's host (lower-cased, without port or trailing dot) is looked up in
order of specificity: the mounts naming it exactly, then those whose wildcard covers it, the
longest wildcard suffix first (``*.a.example.org`` before ``*.example.org``), then the mounts
naming no host.  Within the first of these groups that has a mount for the path, the longest
prefix wins; a group with no such mount passes the request on to the next, so a site that mounts
only ``/app`` still gets the host-less ``/``.  Prefixes match whole path segments: a mount at
``/app`` serves ``/app`` and ``/app/x`` but not ``/application``.  No match is a 404.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
        by_name: dict[str, list[Route]] = {}  # exact names and "*.suffix" wildcards, as the config writes them
        any_host: list[Route] = []
        for mount, handler in routes:
            route = Route(mount, handler, gates_for(mount))
            for name in mount.host:
                by_name.setdefault(name, []).append(route)
            if not mount.host:
                any_host.append(route)
        # Longest prefix first, so the first match in a group is the best one.
        self._by_name = {name: _longest_first(found) for name, found in by_name.items()}
        self._any_host = _longest_first(any_host)
        self.routes = [Route(mount, handler) for mount, handler in routes]

    def match(self, host: str, path: str) -> Route:
        """The route serving ``path`` on ``host``; NotFound when no mount covers it."""
        for candidates in self._groups(host):
            for route in candidates:
                prefix = route.mount.path
                if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                    return route
        raise NotFound()

    def _groups(self, host: str) -> Iterator[list[Route]]:
        """The mounts that may serve ``host``, a group at a time, the most specific first."""
        if self._by_name and host:
            name = host.lower().removesuffix(".")
            yield self._by_name.get(name, [])
            dot = name.find(".", 1)  # a wildcard stands for one label at least
            while dot != -1:  # "*.b.example.org", then "*.example.org", then "*.org"
                yield self._by_name.get("*" + name[dot:], [])
                dot = name.find(".", dot + 1)
        yield self._any_host

    def close(self) -> None:
        """Close every handler; called once when the server stops."""
        for route in self.routes:
            route.handler.close()


def _longest_first(routes: list[Route]) -> list[Route]:
    return sorted(routes, key=lambda route: len(route.mount.path), reverse=True)
