"""The handler registry: a mount's ``type`` name → handler class.

Built-in types are imported lazily by name, so a config that uses only static files never
imports the WSGI machinery.  A type may also be ``package.module:Class``, or a name registered
by an installed package under the entry-point group ``porch.handlers``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from porch.handlers.base import Handler
from porch.handlers.user_code import load_object

BUILTIN_HANDLERS: dict[str, str] = {
    "static": "porch.handlers.static.handler:StaticHandler",
    "cgi": "porch.handlers.cgi.handler:CGIHandler",
    "wsgi": "porch.handlers.wsgi:WSGIHandler",
    "xmlrpc": "porch.handlers.xmlrpc.handler:XMLRPCHandler",
    "status": "porch.handlers.status.handler:StatusHandler",
    "metrics": "porch.handlers.metrics:MetricsHandler",
    "health": "porch.handlers.probes:HealthHandler",
    "ready": "porch.handlers.probes:ReadyHandler",
    "redirect": "porch.handlers.redirect:RedirectHandler",
}

ENTRY_POINT_GROUP = "porch.handlers"


def resolve(type_name: str) -> type[Handler]:
    """The handler class for a mount's ``type``; ValueError saying why when there is none."""
    spec = BUILTIN_HANDLERS.get(type_name)
    if spec is None and ":" in type_name:
        spec = type_name
    if spec is None:
        found = entry_points(group=ENTRY_POINT_GROUP, name=type_name)
        if not found:
            known = ", ".join(sorted(BUILTIN_HANDLERS))
            raise ValueError(f"unknown handler type {type_name!r} (known: {known}, or 'module:Class')")
        cls = next(iter(found)).load()
    else:
        try:
            cls = load_object(spec)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load handler {spec!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise ValueError(f"{type_name!r} is not a porch.handlers.base.Handler subclass")
    return cls
