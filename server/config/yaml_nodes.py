"""YAML with line numbers and ``${VAR}`` expansion: the first step of loading a config.

How this works: ``read_yaml`` parses with ``yaml.compose`` and the ``SafeLoader`` -- nodes only,
no object is ever constructed from a tag -- and turns the node graph into a tree of ``Node``
objects that remember the line of every value and key.  On the way, duplicate keys, unsupported
tags, recursive aliases and alias bombs become problems (collected, not raised, so one pass
reports them all), ``<<`` merge keys are applied (explicit keys win), and ``${VAR}`` /
``${VAR:-default}`` are expanded inside string scalars (``$$`` is a literal dollar).  A string
that expansion produced is marked, so the converter may still read it as a number or boolean:
``threads: ${THREADS:-8}`` is the integer 8, while a quoted ``"8"`` written in the file stays text.
``node_from_python`` builds the same tree from in-memory data (no lines, no expansion).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from porch.config.settings import ConfigProblem

MAX_NODES = 100_000  # a bigger tree is an alias bomb ("billion laughs"), not a config
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
YAML_TAG = "tag:yaml.org,2002:"


@dataclasses.dataclass(eq=False)
class Node:
    """One YAML value and where it was written.

    ``kind`` is "scalar" (``value`` is str, int, float, bool or None), "list" (a list of Node)
    or "mapping" (a dict of key -> Node, in file order, with each key's line in ``key_lines``).
    ``text`` is a scalar's source text; ``expanded`` marks a string that ``${...}`` produced.
    """

    kind: Literal["scalar", "list", "mapping", "invalid"]
    value: Any
    line: int | None
    text: str = ""
    expanded: bool = False
    key_lines: dict[str, int | None] = dataclasses.field(default_factory=dict)

    @property
    def is_null(self) -> bool:
        return self.kind == "scalar" and self.value is None

    def plain(self) -> Any:
        """The value as plain Python data (lists, dicts, scalars), for ``Any`` fields."""
        if self.kind == "list":
            return [item.plain() for item in self.value]
        if self.kind == "mapping":
            return {key: item.plain() for key, item in self.value.items()}
        return self.value

    def key_paths(self, prefix: str = "") -> dict[str, int | None]:
        """Line of every key and item below this node, by relative key path ("a.b", "c[0]")."""
        found: dict[str, int | None] = {}
        if self.kind == "mapping":
            for key, child in self.value.items():
                path = join(prefix, key)
                found[path] = self.key_lines.get(key)
                found.update(child.key_paths(path))
        elif self.kind == "list":
            for index, child in enumerate(self.value):
                path = f"{prefix}[{index}]"
                found[path] = child.line
                found.update(child.key_paths(path))
        return found


def join(prefix: str, key: str) -> str:
    """The key path of ``key`` inside ``prefix``: "mounts[2]" + "root" -> "mounts[2].root"."""
    return f"{prefix}.{key}" if prefix else key


def expand(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$`` in ``text``; also return the errors.

    As in the shell, ``:-`` uses the default when the variable is unset *or empty*.  The default
    is literal text up to the first ``}``; expanded values are never expanded again.  A ``$``
    followed by anything else stays as it is.
    """
    out: list[str] = []
    errors: list[str] = []
    position = 0
    while (dollar := text.find("$", position)) >= 0:
        out.append(text[position:dollar])
        following = text[dollar + 1 : dollar + 2]
        if following == "$":
            out.append("$")
            position = dollar + 2
            continue
        if following != "{":
            out.append("$")
            position = dollar + 1
            continue
        end = text.find("}", dollar + 2)
        if end < 0:
            errors.append(f"unterminated '${{' in {text!r} (write '$$' for a literal dollar)")
            return text, errors
        body = text[dollar + 2 : end]
        name, has_default, default = body.partition(":-")
        if not VARIABLE_NAME.fullmatch(name):
            errors.append(f"bad environment variable name {name!r} in '${{{body}}}'")
        else:
            value = environ.get(name)
            if has_default and not value:
                value = default
            elif value is None:
                errors.append(
                    f"environment variable {name!r} is not set (write '${{{name}:-default}}' to give a default)"
                )
            out.append(value or "")
        position = end + 1
    out.append(text[position:])
    return "".join(out), errors


class _TreeBuilder:
    """Turns composed YAML nodes into ``Node`` trees, recording problems as it goes."""

    def __init__(self, file: str, environ: Mapping[str, str], problems: list[ConfigProblem]) -> None:
        self.file = file
        self.environ = environ
        self.problems = problems
        self.constructor = yaml.SafeLoader("")
        self.active: set[int] = set()  # ids of the nodes being built: an alias to one is a loop
        self.count = 0

    def problem(self, line: int | None, key: str, message: str) -> Node:
        self.problems.append(ConfigProblem(self.file, line, key, message))
        return Node("invalid", None, line)

    def build(self, node: yaml.Node, key: str) -> Node:
        line = node.start_mark.line + 1
        self.count += 1
        if self.count > MAX_NODES:
            if self.count == MAX_NODES + 1:
                self.problem(line, key, f"more than {MAX_NODES} values (are aliases nesting each other?)")
            return Node("invalid", None, line)
        if id(node) in self.active:
            return self.problem(line, key, "an alias refers to a value containing itself")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.ScalarNode):
                return self.scalar(node, key, line)
            if node.tag not in (YAML_TAG + "seq", YAML_TAG + "map"):
                return self.problem(line, key, f"unsupported YAML tag {node.tag!r}")
            if isinstance(node, yaml.SequenceNode):
                return Node("list", [self.build(item, f"{key}[{i}]") for i, item in enumerate(node.value)], line)
            assert isinstance(node, yaml.MappingNode)
            return self.mapping(node, key, line)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, key: str, line: int) -> Node:
        tag = node.tag.removeprefix(YAML_TAG)
        if tag in ("str", "timestamp"):  # a date is text to us; yaml would make it a datetime
            if "$" not in node.value:
                return Node("scalar", node.value, line, node.value)
            value, errors = expand(node.value, self.environ)
            for error in errors:
                self.problem(line, key, error)
            return Node("invalid", None, line) if errors else Node("scalar", value, line, value, expanded=True)
        constructors: dict[str, Callable[[yaml.ScalarNode], Any]] = {
            "int": self.constructor.construct_yaml_int,
            "float": self.constructor.construct_yaml_float,
            "bool": self.constructor.construct_yaml_bool,
            "null": self.constructor.construct_yaml_null,
        }
        if tag not in constructors:
            return self.problem(line, key, f"unsupported YAML tag {node.tag!r}")
        return Node("scalar", constructors[tag](node), line, node.value)

    def mapping(self, node: yaml.MappingNode, key: str, line: int) -> Node:
        entries: dict[str, Node] = {}
        key_lines: dict[str, int | None] = {}
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == YAML_TAG + "merge":
                merged.extend(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_line, key, "a key must be a plain value, not a list or mapping")
                continue
            name = key_node.value
            if name in entries:
                self.problem(key_line, join(key, name), f"duplicate key (first at line {key_lines[name]})")
                continue
            child = self.build(value_node, join(key, name))
            if child.kind in ("list", "mapping"):
                child.line = key_line  # "listen: ..." is the line to point at, not its first item
            entries[name], key_lines[name] = child, key_line
        for source in merged:  # YAML merge keys: explicit keys win over merged ones
            built = self.build(source, key)
            if built.kind == "invalid":
                continue
            if built.kind != "mapping":
                self.problem(built.line, key, "'<<' must merge a mapping or a list of mappings")
                continue
            for name, child in built.value.items():
                if name not in entries:
                    entries[name], key_lines[name] = child, built.key_lines[name]
        return Node("mapping", entries, line, key_lines=key_lines)


def read_yaml(
    text: str, file: str, environ: Mapping[str, str] | None = None
) -> tuple[Node | None, list[ConfigProblem]]:
    """Parse ``text`` (the contents of ``file``) into a Node tree; None for an empty document."""
    problems: list[ConfigProblem] = []
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        lines = text.splitlines()
        if line is not None and "${" in "".join(lines[max(line - 2, 0) : line]):
            what += " (inside [...] or {...}, quote a value that contains ${...})"
        return None, [ConfigProblem(file, line, "", f"not valid YAML: {what}")]
    except yaml.YAMLError as exc:
        return None, [ConfigProblem(file, None, "", f"not valid YAML: {exc}")]
    except RecursionError:
        return None, [ConfigProblem(file, None, "", "not valid YAML: nested too deeply")]
    documents = [document for document in documents if document is not None]
    if not documents:
        return None, problems
    if len(documents) > 1:
        line = documents[1].start_mark.line + 1
        return None, [ConfigProblem(file, line, "", "expected one YAML document, found another here")]
    builder = _TreeBuilder(file, os.environ if environ is None else environ, problems)
    try:
        return builder.build(documents[0], ""), problems
    except RecursionError:
        return None, [ConfigProblem(file, None, "", "not valid YAML: nested too deeply")]


def node_from_python(value: Any) -> Node:
    """The Node tree of in-memory data (as ``porch serve DIR`` builds): no lines, no ``${}``."""
    if isinstance(value, Mapping):
        children = {str(key): node_from_python(item) for key, item in value.items()}
        return Node("mapping", children, None, key_lines=dict.fromkeys(children))
    if isinstance(value, (list, tuple)):
        return Node("list", [node_from_python(item) for item in value], None)
    if isinstance(value, Path):
        value = str(value)
    return Node("scalar", value, None, "" if value is None else str(value))
