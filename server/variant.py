"""Which build of porch this is: pure Python, or compiled with mypyc (``PORCH_COMPILE=1``).

The compiled build lists the modules it compiled in ``compiled-modules.txt`` beside this file
(``build_backend/porch_build.py`` writes it; the pure build has none).  It keeps their ``.py``
files too, so a missing or shadowed extension would quietly run the source instead: ``problem()``
imports every listed module and refuses such a mixture, and the command checks it before it
does anything else (``porch.__main__``).
"""

from __future__ import annotations

import importlib
import importlib.machinery
from pathlib import Path

COMPILED_LIST = Path(__file__).with_name("compiled-modules.txt")
BUILD = "compiled" if COMPILED_LIST.exists() else "pure"  # porch.BUILD, porch --version, the status JSON


def compiled_modules() -> list[str]:
    """The modules the build compiled (none for the pure build)."""
    return COMPILED_LIST.read_text().split() if BUILD == "compiled" else []


def problem() -> str | None:
    """Why this build does not run as it was built, or None: in a compiled build, every compiled
    module must import, and from its extension."""
    for name in compiled_modules():
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            return f"the compiled module {name} does not import ({error}); reinstall porch"
        origin = getattr(module, "__file__", None) or "?"
        if not origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            return f"{name} runs from {origin}, not from its compiled extension (missing or shadowed); reinstall porch"
    return None
