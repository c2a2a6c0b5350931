"""The two builds of one source: pure Python (``pip install .``) and compiled with mypyc
(``PORCH_COMPILE=1 pip install .``).  The suite runs on both (``.ci/run``); these tests check that
each says what it is, from what actually runs, and that a compiled build never runs a mixture."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import requests
from porchtest import wait_until

import porch
import porch.handlers
import porch.variant

REPO = Path(__file__).resolve().parent.parent
HOT = ("porch.http.head", "porch.http.response", "porch.spine.pipeline", "porch.net.connection", "porch.workers.pool")
EXTENSION = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def running_build() -> str:
    """The build the request path really runs, from where its modules were loaded."""
    files = [getattr(importlib.import_module(name), "__file__", "") or "" for name in HOT]
    return "compiled" if all(file.endswith(EXTENSION) for file in files) else "pure"


def backend() -> Any:
    """build_backend/porch_build.py, which chooses the modules a compiled build compiles."""
    pytest.importorskip("setuptools")
    sys.path.insert(0, str(REPO / "build_backend"))
    try:
        return importlib.import_module("porch_build")
    finally:
        sys.path.remove(str(REPO / "build_backend"))


def test_the_build_says_what_runs() -> None:
    assert running_build() == porch.BUILD
    if porch.BUILD == "pure":
        assert porch.variant.compiled_modules() == []
        for package in (porch, porch.handlers):  # not one extension module anywhere
            assert not [path for path in Path(package.__path__[0]).rglob("*") if path.name.endswith(EXTENSION)]
    else:
        assert set(HOT) <= set(porch.variant.compiled_modules())
        assert porch.variant.problem() is None


def test_version_says_the_build() -> None:
    result = subprocess.run([sys.executable, "-m", "porch", "--version"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, f"porch {porch.__version__} ({running_build()})\n")


def test_the_status_json_says_the_build(porch: Any) -> None:
    server = porch({"mounts": [{"path": "/status", "type": "status"}]})

    def about() -> dict[str, Any] | None:
        document: dict[str, Any] = requests.get(server.url + "/status?format=json", timeout=5).json()
        return document if "build" in document else None  # the master's first snapshot

    assert wait_until(about, "the first snapshot")["build"] == running_build()


@pytest.mark.parametrize(
    ("listed", "remove", "message"),
    [
        ("porch.http.head", "porch.http.head", "porch: porch.http.head runs from "),
        ("porch.http.gone", "", "porch: the compiled module porch.http.gone does not import (No module named"),
    ],
)
def test_a_compiled_build_that_would_run_a_mixture_does_not_start(
    tmp_path: Path, listed: str, remove: str, message: str
) -> None:
    """A copy of the installed package that says it is compiled, with ``listed`` running from its
    ``.py`` (its extension, if any, removed) or missing altogether: one line, exit 1."""
    copy = tmp_path / "porch"
    shutil.copytree(Path(porch.__path__[0]), copy, ignore=shutil.ignore_patterns("__pycache__"))
    handlers = Path(porch.handlers.__path__[0])
    if not (copy / "handlers").exists():  # an editable install maps handlers/ from elsewhere
        shutil.copytree(handlers, copy / "handlers", ignore=shutil.ignore_patterns("__pycache__"))
    if remove:
        folder = copy.joinpath(*remove.split(".")[1:-1])
        for path in folder.glob(remove.rsplit(".", 1)[1] + ".*"):
            if path.name.endswith(EXTENSION):
                path.unlink()
    (copy / porch.variant.COMPILED_LIST.name).write_text(f"{listed}\n")
    result = subprocess.run(
        [sys.executable, "-m", "porch", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


def test_a_compiled_build_compiles_what_the_backend_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the backend's paths are the repository's
    build = backend()
    chosen = [build.module_name(source) for source in build.compiled_sources()]
    assert set(HOT) <= set(chosen) and not set(chosen) & {build.module_name(path) for path in build.LEFT_OUT}
    if porch.BUILD == "compiled":
        assert porch.variant.compiled_modules() == chosen


def test_the_compiled_build_uses_the_lint_pin_of_mypy() -> None:
    """mypyc compiles with the checks CI runs: the same mypy as the ``lint`` extra."""
    lint = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["lint"]
    assert [pin for pin in backend().COMPILE_REQUIRES if pin.startswith("mypy==")] == [
        pin for pin in lint if pin.startswith("mypy==")
    ]


def test_compiled_modules_bind_each_except_name_to_one_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """mypyc types ``except A as e`` by the first clause of a function binding ``e``: a later
    ``except B as e`` then fails at run time with a TypeError, in the compiled build only."""
    monkeypatch.chdir(REPO)
    found = []
    for source in backend().compiled_sources():
        for function in ast.walk(ast.parse((REPO / source).read_text())):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                kinds: dict[str, set[str]] = {}
                for node in ast.walk(function):
                    if isinstance(node, ast.ExceptHandler) and node.name:
                        kinds.setdefault(node.name, set()).add(ast.unparse(node.type) if node.type else "")
                found += [f"{source}:{function.lineno} {name}" for name, types in kinds.items() if len(types) > 1]
    assert found == []
