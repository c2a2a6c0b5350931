"""Conversion of ``Node`` trees to the types that settings declare, and the reference table.

How this works: ``Converter.convert(annotation, node, key)`` turns a ``Node`` into the value a
dataclass field's annotation asks for -- str, int, float, bool, Path, Literal, ``X | None``,
other unions, ``tuple[X, ...]``, ``dict[K, V]``, CIDR networks, nested dataclasses, ``Any`` --
and ``Converter.fields`` does a whole dataclass: unknown keys (with a "did you mean"), missing
required keys, aliases such as ``workers: auto`` and each field's ``check``.  A value that cannot
be converted becomes ``INVALID`` and a ``ConfigProblem`` naming file, line and key path; the
caller carries on, so every problem in a file is reported at once.  ``reference_table`` renders
the same declarations as a markdown table (type, default, doc) for the README.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

from porch.config.settings import ConfigProblem
from porch.config.yaml_nodes import Node, join

INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "INVALID"})()
"""Returned by a conversion that failed; its problem is already recorded."""

INTEGER = re.compile(r"[+-]?[0-9]+")
TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})
NETWORK_TYPES = frozenset({ipaddress.IPv4Network, ipaddress.IPv6Network})


def got(node: Node) -> str:
    """How a value is shown in "expected X, got Y"."""
    if node.kind == "list":
        return "a list"
    if node.kind == "mapping":
        return "a mapping"
    return yaml_text(node.value)


def yaml_text(value: Any) -> str:
    """A value written the way YAML would show it: 'text', 8, true, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, Path)):
        return f"'{value}'"
    return str(value)


def _union_args(annotation: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return None


def describe(annotation: Any) -> str:
    """What an annotation expects, for messages: "an integer", "one of 'a', 'b'", "a list of ..."."""
    args = _union_args(annotation)
    if args is not None:
        if set(args) == NETWORK_TYPES:
            return "a network (CIDR such as 10.0.0.0/8) or an address"
        return " or ".join(describe(arg) for arg in args)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = [yaml_text(value) for value in typing.get_args(annotation)]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if origin is tuple:
        return f"a list of {_plural(typing.get_args(annotation)[0])}"
    if origin is dict or dataclasses.is_dataclass(annotation):
        return "a mapping"
    simple = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        Path: "a path",
        type(None): "null",
        Any: "any value",
    }
    return simple.get(annotation, repr(annotation))


def _plural(annotation: Any) -> str:
    if _union_args(annotation) is not None and set(_union_args(annotation) or ()) == NETWORK_TYPES:
        return "networks (CIDR) or addresses"
    if dataclasses.is_dataclass(annotation):
        return "mappings"
    nouns = {str: "strings", int: "integers", float: "numbers", bool: "booleans", Path: "paths"}
    return nouns.get(annotation, "values")


def unknown_key(name: str, known: list[str]) -> str:
    """'unknown key' with the closest known key, or the list of known ones."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key '{name}' (did you mean '{close[0]}'?)"
    if not known:
        return f"unknown key '{name}' (no keys are allowed here)"
    return f"unknown key '{name}' (expected one of: {', '.join(known)})"


def required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


CustomConverter = Callable[["Converter", Node, str], Any]


class Converter:
    """Converts Node trees to typed values; every problem lands in ``problems`` (or ``warnings``).

    ``custom`` maps a type to a function that converts it instead of the generic rules (the
    config module uses it for listeners and log settings).
    """

    def __init__(self, file: str, base_dir: Path, custom: Mapping[Any, CustomConverter] | None = None) -> None:
        self.file = file
        self.base_dir = base_dir
        self.custom = dict(custom or {})
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def problem(self, line: int | None, key: str, message: str) -> Any:
        self.problems.append(ConfigProblem(self.file, line, key, message))
        return INVALID

    def warn(self, line: int | None, key: str, message: str) -> None:
        self.warnings.append(ConfigProblem(self.file, line, key, message))

    def expected(self, annotation: Any, node: Node, key: str) -> Any:
        return self.problem(node.line, key, f"expected {describe(annotation)}, got {got(node)}")

    def path(self, text: str) -> Path:
        """``text`` as an absolute path: ``~`` expanded, relative ones taken from the config's directory.

        Symlinks are kept (not resolved) so that a root pointing at ``current -> release-42``
        follows the link when it is switched.
        """
        return Path(os.path.abspath(self.base_dir / Path(text).expanduser()))

    def convert(self, annotation: Any, node: Node, key: str) -> Any:
        """``node`` converted to ``annotation``, or INVALID with the problem recorded."""
        if node.kind == "invalid":
            return INVALID
        if annotation in self.custom:
            return self.custom[annotation](self, node, key)
        if annotation is Any:
            return node.plain()
        args = _union_args(annotation)
        if args is not None:
            return self._union(annotation, args, node, key)
        origin = typing.get_origin(annotation)
        if origin is Literal:
            return self._literal(annotation, node, key)
        if origin is tuple:
            return self._tuple(annotation, node, key)
        if origin is dict:
            return self._dict(annotation, node, key)
        if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
            return self.dataclass(annotation, node, key)
        if annotation in (str, int, float, bool, Path):
            return self._scalar(annotation, node, key)
        return self.problem(node.line, key, f"the setting's type {annotation!r} is not supported by the loader")

    def _scalar(self, annotation: Any, node: Node, key: str) -> Any:
        value = node.value
        if node.kind != "scalar" or value is None:
            return self.expected(annotation, node, key)
        if annotation in (str, Path):
            if isinstance(value, bool):
                return self.problem(
                    node.line, key, f"expected {describe(annotation)}, got {got(node)} (quote it to mean the text)"
                )
            text = value if isinstance(value, str) else node.text
            if annotation is str:
                return text
            return self.path(text) if text else self.expected(annotation, node, key)
        if node.expanded:  # text from ${...}: type it now
            value = _parse_expanded(annotation, value)
        if annotation is bool and isinstance(value, bool):
            return value
        if annotation is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if (
            annotation is float
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            return float(value)
        if isinstance(value, str) and _parse_expanded(annotation, value) is not value:
            return self.problem(
                node.line,
                key,
                f"expected {describe(annotation)}, got {got(node)} (quoted, it is text: remove the quotes)",
            )
        return self.expected(annotation, node, key)

    def _union(self, annotation: Any, args: tuple[Any, ...], node: Node, key: str) -> Any:
        if set(args) == NETWORK_TYPES:
            return self._network(annotation, node, key)
        if type(None) in args and (node.is_null or (node.expanded and node.value == "")):
            return None
        rest = tuple(arg for arg in args if arg is not type(None))
        if node.expanded:  # "${LOG:-false}" means false where false is allowed, not the text
            rest = tuple(sorted(rest, key=lambda arg: arg is str))
        if len(rest) == 1:
            return self.convert(rest[0], node, key)
        mark = len(self.problems)
        for arg in rest:  # the first alternative that converts cleanly wins
            value = self.convert(arg, node, key)
            if value is not INVALID:
                del self.problems[mark:]
                return value
        del self.problems[mark:]
        return self.expected(annotation, node, key)

    def _network(self, annotation: Any, node: Node, key: str) -> Any:
        if node.kind != "scalar" or not isinstance(node.value, str):
            return self.expected(annotation, node, key)
        try:
            return ipaddress.ip_network(node.value.strip(), strict=False)
        except ValueError:
            return self.expected(annotation, node, key)

    def _literal(self, annotation: Any, node: Node, key: str) -> Any:
        allowed = typing.get_args(annotation)
        value = node.value
        if node.kind == "scalar" and node.expanded and not all(isinstance(a, str) for a in allowed):
            value = _parse_expanded(type(allowed[0]), value)
        for candidate in allowed:
            if node.kind == "scalar" and type(value) is type(candidate) and value == candidate:
                return candidate
        message = f"expected {describe(annotation)}, got {got(node)}"
        if isinstance(value, str) and not all(isinstance(a, str) for a in allowed):
            if _parse_expanded(type(allowed[0]), value) in allowed:
                message += " (quoted, it is text: remove the quotes)"
        elif isinstance(value, str):
            names = {str(a).lower(): str(a) for a in allowed}
            close = difflib.get_close_matches(value.lower(), list(names), n=1, cutoff=0.6)
            if close:
                message += f" (did you mean '{names[close[0]]}'?)"
        return self.problem(node.line, key, message)

    def _tuple(self, annotation: Any, node: Node, key: str) -> Any:
        args = typing.get_args(annotation)
        if len(args) != 2 or args[1] is not Ellipsis:
            return self.problem(node.line, key, f"the setting's type {annotation!r} is not supported by the loader")
        if node.is_null:
            return ()
        items = node.value if node.kind == "list" else [node]  # one value is a list of one
        values = [
            self.convert(args[0], item, f"{key}[{i}]" if node.kind == "list" else key) for i, item in enumerate(items)
        ]
        return INVALID if any(value is INVALID for value in values) else tuple(values)

    def _dict(self, annotation: Any, node: Node, key: str) -> Any:
        key_type, value_type = typing.get_args(annotation)
        if node.is_null:
            return {}
        if node.kind != "mapping":
            return self.expected(annotation, node, key)
        result: dict[Any, Any] = {}
        for name, child in node.value.items():
            name_value = self.convert(key_type, Node("scalar", name, node.key_lines.get(name), name), join(key, name))
            value = self.convert(value_type, child, join(key, name))
            if name_value is not INVALID and value is not INVALID:
                result[name_value] = value
        return result if len(result) == len(node.value) else INVALID

    def dataclass(self, cls: type, node: Node, key: str, *, unknown: Callable[[str], str] | None = None) -> Any:
        """An instance of dataclass ``cls`` from a mapping; INVALID when anything was wrong."""
        mark = len(self.problems)
        values = self.fields(cls, node, key, unknown=unknown)
        if len(self.problems) > mark:
            return INVALID
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            return self.problem(node.line, key, str(exc))

    def fields(
        self,
        cls: type,
        node: Node,
        key: str,
        *,
        partial: bool = False,
        skip: frozenset[str] = frozenset(),
        unknown: Callable[[str], str] | None = None,
    ) -> dict[str, Any]:
        """The converted values of the keys ``node`` sets, by field name (those that converted).

        Unknown keys are problems, and so are missing required keys unless ``partial``.  Fields
        declared with ``internal=True`` are set by the loader and cannot be written in a file.
        Each field's ``check`` runs on the converted value; its ValueError becomes the problem.
        Callers learn whether all went well by whether ``problems`` grew.
        """
        declared = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        if node.kind == "invalid":
            return {}
        if node.is_null:
            entries: dict[str, Node] = {}
        elif node.kind != "mapping":
            self.expected(cls, node, key)
            return {}
        else:
            entries = node.value
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:  # a handler's Options naming a type that does not exist
            self.problem(node.line, key, f"cannot read the types of {cls.__qualname__}: {exc}")
            return {}
        values: dict[str, Any] = {}
        for name, child in entries.items():
            if name in skip:
                continue
            field = declared.get(name)
            if field is None:
                message = unknown(name) if unknown else unknown_key(name, list(declared))
                self.problem(node.key_lines.get(name), join(key, name), message)
                continue
            value = self._field_value(field, hints[name], child, join(key, name))
            if value is not INVALID:
                values[name] = value
        if not partial:
            for name, field in declared.items():
                if required(field) and name not in entries and name not in skip:
                    self.problem(node.line, join(key, name), "required key missing")
        return values

    def _field_value(self, field: dataclasses.Field[Any], annotation: Any, node: Node, key: str) -> Any:
        aliases = field.metadata.get("aliases") or {}
        if node.kind == "scalar" and isinstance(node.value, str) and node.value in aliases:
            value = aliases[node.value]()
        else:
            value = self.convert(annotation, node, key)
        check = field.metadata.get("check")
        if check is None or value is INVALID or value is None:
            return value
        try:
            check(value)
        except ValueError as exc:
            message = str(exc)
            if isinstance(value, Path) and node.kind == "scalar" and str(value) != node.text:
                message = message.replace(str(value), node.text)  # the path as the user wrote it
                if not Path(node.text).expanduser().is_absolute():
                    message += f" (relative to {self.base_dir})"
            return self.problem(node.line, key, message)
        return value


def _parse_expanded(annotation: Any, text: str) -> Any:
    """A string produced by ``${...}`` read as ``annotation`` (bool, int or float) if it can be."""
    word = text.strip().lower()
    if annotation is bool:
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else text
    if annotation is int and INTEGER.fullmatch(word):
        return int(word)
    if annotation is float:
        try:
            return float(word)
        except ValueError:
            return text
    return text


def reference_table(cls: type, *, labels: Mapping[Any, str] | None = None, extra_rows: list[str] | None = None) -> str:
    """A markdown table (key, type, default, doc) of ``cls``'s settings and, recursively, the
    dataclasses they hold; a dataclass met again is referred to ("same keys as `limits`").
    ``labels`` names types the generic wording does not describe well."""
    rows: list[str] = []
    _reference_rows(cls, "", rows, {}, dict(labels or {}))
    return "\n".join(["| Key | Type | Default | Meaning |", "|---|---|---|---|", *rows, *(extra_rows or [])]) + "\n"


def _reference_rows(cls: type, prefix: str, rows: list[str], shown: dict[type, str], labels: dict[Any, str]) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.metadata.get("internal"):
            continue
        key = join(prefix, field.name)
        annotation = hints[field.name]
        inner, child_prefix = _nested_dataclass(annotation, key)
        doc = field.metadata.get("doc", "")
        if inner is not None and inner in shown:
            doc += f" (same keys as `{shown[inner]}`)"
        label = _type_label(annotation, labels)
        label += "".join(f' or `"{word}"`' for word in field.metadata.get("aliases") or {})
        cells = [f"`{key}`", label, _default_text(field), doc]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        if inner is not None and inner not in shown:
            shown[inner] = child_prefix
            _reference_rows(inner, child_prefix, rows, shown, labels)


def _nested_dataclass(annotation: Any, key: str) -> tuple[type | None, str]:
    """The dataclass a field holds (itself, optional, or a list of them) and its keys' prefix."""
    args = typing.get_args(annotation)
    if (
        typing.get_origin(annotation) is tuple
        and args
        and isinstance(args[0], type)
        and dataclasses.is_dataclass(args[0])
    ):
        return args[0], f"{key}[]"
    for candidate in (annotation, *args):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate, key
    return None, key


def _type_label(annotation: Any, labels: Mapping[Any, str]) -> str:
    """A short type name for the reference: "integer", "list of CIDR", "`a` or `b`"."""
    if annotation in labels:
        return labels[annotation]
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if _union_args(annotation) is not None:
        if set(args) == NETWORK_TYPES:
            return "CIDR"
        return " or ".join(_type_label(arg, labels) for arg in args)
    if origin is Literal:
        return " or ".join(f"`{json.dumps(value)}`" for value in args)
    if origin is tuple:
        return "list of mappings" if dataclasses.is_dataclass(args[0]) else f"list of {_type_label(args[0], labels)}"
    if origin is dict:
        return f"mapping of {_type_label(args[0], labels)} to {_type_label(args[1], labels)}"
    if dataclasses.is_dataclass(annotation):
        return "mapping"
    names = {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        Path: "path",
        type(None): "null",
        Any: "any",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(field: dataclasses.Field[Any]) -> str:
    if required(field):
        return "required"
    value = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
    return "" if dataclasses.is_dataclass(value) else f"`{_inline_yaml(value)}`"


def _inline_yaml(value: Any) -> str:
    """A default as YAML flow text: ``["127.0.0.1:8000"]``, ``false``, ``null``, ``"-"``."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_inline_yaml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_inline_yaml(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value) and hasattr(value, "address"):
        return json.dumps(value.address)  # a Listener is written as its address
    if isinstance(value, (str, Path, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return json.dumps(str(value))
    return yaml_text(value)
