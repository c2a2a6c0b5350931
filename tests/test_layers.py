"""The layers of porch, read from the ``import`` statements of its own source.

Every module of ``server/`` and ``handlers/`` is parsed (imports inside functions and under
``TYPE_CHECKING`` count too).  There must be no import cycle, and dependencies point one way:

    porch.timing, porch.config.settings   leaves: import nothing of porch
    porch.http                            imports nothing of porch but porch.http
    porch.metrics                         imports nothing of porch but porch.metrics (counters,
                                          the board, the master's sums: handlers and master use it)
    porch.handlers                        never net, workers, master, spine or the CLI
    porch.config                          never spine, net, workers, master or the CLI
    porch.spine / net / workers           never a layer above itself
    nothing but porch.master and the CLI imports porch.master; nothing imports the CLI but __main__,
    and nothing but the CLI imports porch.top
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = {"porch": REPO / "server", "porch.handlers": REPO / "handlers"}

# (importer prefix, imported prefixes it must not use)
FORBIDDEN: list[tuple[str, tuple[str, ...]]] = [
    ("porch.handlers", ("porch.net", "porch.workers", "porch.master", "porch.spine", "porch.cli")),
    (
        "porch.metrics",
        (
            "porch.config",
            "porch.http",
            "porch.handlers",
            "porch.spine",
            "porch.net",
            "porch.workers",
            "porch.master",
            "porch.top",
        ),
    ),
    ("porch.config", ("porch.spine", "porch.net", "porch.workers", "porch.master", "porch.cli")),
    ("porch.spine", ("porch.net", "porch.workers", "porch.master", "porch.cli")),
    ("porch.net", ("porch.workers", "porch.master", "porch.cli")),
    ("porch.workers", ("porch.master", "porch.cli")),
]
LEAVES = ("porch.timing", "porch.config.settings")


def module_files() -> dict[str, Path]:
    """Every porch module by its import name, from the folders the build maps into porch."""
    found: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports_of(path: Path, modules: Iterable[str]) -> set[str]:
    """The porch modules ``path`` imports (``from porch.x import y`` counts as porch.x.y when
    that is a module)."""
    known = set(modules)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name == "porch" or name.startswith("porch."))
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: imports_of(path, files) - {module} for module, path in files.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import that goes the wrong way, as "importer -> imported (rule)"."""
    found = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            if within(target, "porch.cli") and importer != "porch.__main__":
                found.append(f"{importer} -> {target} (only __main__ imports the CLI)")
            if within(target, "porch.top") and importer != "porch.cli":
                found.append(f"{importer} -> {target} (only the CLI imports porch.top)")
            if within(target, "porch.master") and not (within(importer, "porch.master") or importer == "porch.cli"):
                found.append(f"{importer} -> {target} (only the master and the CLI import porch.master)")
            if within(importer, "porch.http") and not within(target, "porch.http"):
                found.append(f"{importer} -> {target} (porch.http imports nothing else of porch)")
            if importer in LEAVES:
                found.append(f"{importer} -> {target} ({importer} is a leaf)")
            for layer, above in FORBIDDEN:
                if within(importer, layer) and any(within(target, prefix) for prefix in above):
                    found.append(f"{importer} -> {target} ({layer} never imports {target.split('.')[1]})")
    return found


def test_every_folder_maps_to_a_package() -> None:
    files = module_files()
    assert "porch.http.grammar" in files and "porch.handlers.base" in files
    for module, path in files.items():
        if path.name != "__init__.py":
            assert module.rpartition(".")[0] in files, f"{path} has no __init__.py above it"


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_dependencies_point_one_way() -> None:
    assert violations(import_graph()) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"porch.a": {"porch.b"}, "porch.b": {"porch.c"}, "porch.c": {"porch.a"}}, [["porch.a", "porch.b", "porch.c"]]),
        ({"porch.a": {"porch.b"}, "porch.b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected


def test_the_rules_catch_a_wrong_direction() -> None:
    graph = {
        "porch.http.head": {"porch.config.settings"},
        "porch.handlers.static.handler": {"porch.net.connection"},
        "porch.spine.pipeline": {"porch.master.arbiter"},
        "porch.config.settings": {"porch.http.errors"},
        "porch.metrics.counters": {"porch.http.messages"},
        "porch.handlers.metrics": {"porch.top"},
    }
    found = violations(graph)
    assert len(found) == 7, found  # the spine one breaks two rules
