"""porch's build backend: setuptools' own, plus mypyc when ``PORCH_COMPILE=1``.

``pip install .`` is setuptools' pure-Python build, untouched: no compiler, no extra download.
``PORCH_COMPILE=1 pip install .`` also asks for mypy (the lint pin, so the build type-checks
with the rules CI uses) and compiles the modules on the request path into one mypyc extension
(``setup.py`` calls ``setup_arguments``).  The wheel keeps every ``.py`` (tracebacks and handler
authors' type checkers read them) and lists what was compiled in ``porch/compiled-modules.txt``,
which ``porch.variant`` reads to report the build and to refuse running a module's ``.py`` in
place of its extension.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from setuptools import build_meta
from setuptools.command.build_py import build_py

# The other hooks are setuptools' own.
build_wheel = build_meta.build_wheel
build_sdist = build_meta.build_sdist
get_requires_for_build_sdist = build_meta.get_requires_for_build_sdist
prepare_metadata_for_build_editable = build_meta.prepare_metadata_for_build_editable

# Only when compiling: the lint pin of mypy (mypyc comes with it) and the stubs it checks PyYAML with.
COMPILE_REQUIRES = ["mypy==2.4.1", "types-PyYAML"]
COMPILED_LIST = "compiled-modules.txt"  # the name porch.variant reads
SOURCES = {"porch": "server", "porch.handlers": "handlers"}  # as [tool.setuptools] package-dir maps them
# The compiled build works apart from the pure one's build/lib, so neither wheel takes in the other's files.
BUILD_BASE = Path("build") / "compiled"
STAGE = BUILD_BASE / "mypyc-src"  # the sources under their import names: mypyc names modules by path
# The request path: parsing and framing, the pipeline, a connection's I/O, the workers' loops,
# the counters every request bumps, and the static and CGI handlers.  Package __init__ files
# are left out (docstrings only).
COMPILED = (
    "server/timing.py",
    "server/http/*.py",
    "server/spine/*.py",
    "server/net/*.py",
    "server/workers/*.py",
    "server/metrics/counters.py",
    "handlers/paths.py",
    "handlers/static/*.py",
    "handlers/cgi/*.py",
)
# Left out of COMPILED's folders, and why.  Outside them: the WSGI and XML-RPC handlers (a nested
# Options class: mypyc rejects it) and the handler base class (applications subclass it, and an
# interpreted class cannot subclass a compiled one).
LEFT_OUT = {
    "server/net/listener.py": "ListenError subclasses OSError, which mypyc cannot compile",
    "server/http/errors.py": "compiled, a subclass of an exception loses the class attributes it overrides (status)",
    "handlers/static/options.py": "the config loader reads the types of these Options; compiled, they are erased",
    "handlers/cgi/options.py": "the config loader reads the types of these Options; compiled, they are erased",
    "handlers/cgi/process.py": "keeps a module imported in a method in an attribute, which compiled fails to set",
    "server/spine/logs.py": "logging holds its handlers by weak reference, which a compiled instance does not "
    "clear when freed: the next fork crashes",
}


def compiling() -> bool:
    """Whether this build compiles: PORCH_COMPILE=1; unset, empty or 0 is the pure build."""
    value = os.environ.get("PORCH_COMPILE", "")
    if value not in ("", "0", "1"):
        raise ValueError(f"PORCH_COMPILE must be 1 (compiled build) or 0 (pure), not {value!r}")
    return value == "1"


metadata_only = False  # setuptools runs setup.py for requirements and metadata too: no mypyc then


@contextmanager
def without_mypyc() -> Iterator[None]:
    """For the requirements (mypy is not installed yet) and the metadata (mypyc changes none of it)."""
    global metadata_only
    metadata_only = True
    try:
        yield
    finally:
        metadata_only = False


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    with without_mypyc():
        requires = build_meta.get_requires_for_build_wheel(config_settings)
    return requires + COMPILE_REQUIRES if compiling() else requires


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    with without_mypyc():
        return build_meta.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    refuse_editable()
    return build_meta.get_requires_for_build_editable(config_settings)


def build_editable(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    refuse_editable()
    return build_meta.build_editable(wheel_directory, config_settings, metadata_directory)


def refuse_editable() -> None:
    """An editable install runs the sources in place; compiling would leave .so files beside them."""
    if compiling():
        raise RuntimeError("PORCH_COMPILE=1 builds a wheel: install with `pip install .`, not -e")


def compiled_sources() -> list[str]:
    """The files COMPILED names, in the repository, without package __init__ files and LEFT_OUT."""
    found = {str(path) for pattern in COMPILED for path in Path().glob(pattern)}
    return sorted(path for path in found if Path(path).name != "__init__.py" and path not in LEFT_OUT)


def module_name(source: str) -> str:
    """``server/http/head.py`` -> ``porch.http.head``."""
    folder, _, rest = source.partition("/")
    package = next(name for name, path in SOURCES.items() if path == folder)
    return ".".join([package, *Path(rest).with_suffix("").parts])


def stage() -> Path:
    """A fresh BUILD_BASE (no extension of an earlier build may reach the wheel), with the
    packages copied to STAGE under their import names (porch/, porch/handlers/)."""
    shutil.rmtree(BUILD_BASE, ignore_errors=True)
    for package, folder in SOURCES.items():
        shutil.copytree(folder, STAGE.joinpath(*package.split(".")), ignore=shutil.ignore_patterns("__pycache__"))
    return STAGE


def setup_arguments() -> dict[str, Any]:
    """What setup.py passes to setup(): nothing for the pure build; the compiled build's mypyc
    extension and a build_py that lists the compiled modules."""
    if metadata_only or not compiling():
        return {}
    from mypyc.build import mypycify  # only in the compiled build's requirements

    sources = compiled_sources()
    staged = stage()
    modules = [module_name(source) for source in sources]
    paths = [str(staged.joinpath(*module.split("."))) + ".py" for module in modules]

    class ListCompiled(build_py):
        """build_py, also writing the list of compiled modules into the package."""

        def run(self) -> None:
            super().run()
            listing = Path(self.build_lib) / "porch" / COMPILED_LIST
            listing.write_text("".join(f"{module}\n" for module in modules))

    return {
        "ext_modules": mypycify(paths, group_name="porch.compiled", target_dir=str(BUILD_BASE / "mypyc")),
        "cmdclass": {"build_py": ListCompiled},
        "options": {"build": {"build_base": str(BUILD_BASE)}},
    }
