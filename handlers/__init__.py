"""The handler registry: a mount's ``type`` name → handler class.

Built-in types are imported lazily by name, so a config that uses only static files never
imports the WSGI machinery.  A type may also be ``package.module:Class``, or a name registered
by an installed package under the entry-point group ``porch.handlers``.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from pathlib import Path

from handlers.base import Handler, OptionError

BUILTIN_HANDLERS: dict[str, str] = {
    "static": "handlers.static:StaticHandler",
    "cgi": "handlers.cgi:CGIHandler",
    "wsgi": "handlers.wsgi:WSGIHandler",
    "xmlrpc": "handlers.xmlrpc:XMLRPCHandler",
    "status": "handlers.status:StatusHandler",
    "redirect": "handlers.redirect:RedirectHandler",
}

ENTRY_POINT_GROUP = "porch.handlers"


def load_object(spec: str) -> object:
    """Import ``package.module:attribute`` (the attribute may be dotted)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected 'module:name', got {spec!r}")
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


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
        raise ValueError(f"{type_name!r} is not a handlers.base.Handler subclass")
    return cls


def extend_pythonpath(directories: tuple[Path, ...]) -> None:
    """Put a mount's ``pythonpath`` in front of ``sys.path`` (once); OptionError if one is missing."""
    for directory in directories:
        if not Path(directory).is_dir():
            raise OptionError("pythonpath", f"directory '{directory}' does not exist")
    for directory in reversed(directories):
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))


def refuse_shadowing(module_name: str, pythonpath: tuple[Path, ...], before: object, key: str) -> None:
    """Refuse a module that was already imported from elsewhere while this mount's ``pythonpath``
    holds one of the same name: two mounts' ``app.py`` would otherwise silently be one.

    ``before`` is what ``sys.modules`` held under ``module_name`` before this mount's import."""
    module = sys.modules.get(module_name)
    if before is None or module is None:
        return
    origin = getattr(module, "__file__", None)
    for directory in pythonpath:
        candidates = (Path(directory) / f"{module_name}.py", Path(directory) / module_name / "__init__.py")
        local = next((c for c in candidates if c.exists()), None)
        if local is not None and (origin is None or Path(origin).resolve() != local.resolve()):
            raise OptionError(key, f"module {module_name!r} is already imported from {origin}, so "
                                   f"{local} cannot be loaded too; give one of them another name")
