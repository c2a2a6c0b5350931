"""Importing the users' code that WSGI and XML-RPC mounts name: ``module:name``, ``pythonpath``.

porch imports everything of its own as ``porch.…``, so a user's ``handlers.py`` or ``server.py``
is never shadowed by porch; what can still collide is two mounts' modules of the same name,
which ``refuse_shadowing`` turns into a config error instead of one silently serving for both.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from porch.handlers.base import OptionError


def load_object(spec: str) -> object:
    """Import ``package.module:attribute`` (the attribute may be dotted)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected 'module:name', got {spec!r}")
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


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
            raise OptionError(
                key,
                f"module {module_name!r} is already imported from {origin}, so "
                f"{local} cannot be loaded too; give one of them another name",
            )
