"""Functions behind the demo XML-RPC endpoint (``/RPC2`` in the bundled config).

Each is a plain function; the annotations feed ``system.methodSignature`` and the docstrings
``system.methodHelp``.  They accept both the wrapper types (``Binary``, ``DateTime``) and the
builtin ones, so they work whatever ``use_builtin_types`` says.
"""

from __future__ import annotations

import datetime
import hashlib
import statistics
import xmlrpc.client
from typing import Any


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def subtract(a: int, b: int) -> int:
    """Subtract the second integer from the first."""
    return a - b


def divide(a: float, b: float) -> float:
    """Divide a by b; dividing by zero answers a fault."""
    return a / b


def echo(value: Any) -> Any:
    """Return the argument unchanged, whatever its type."""
    return value


def upper(text: str) -> str:
    """The text in upper case."""
    return text.upper()


def now() -> datetime.datetime:
    """The server's current time in UTC, to the second (XML-RPC dateTime has no time zone)."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)


def stats(numbers: list[float]) -> dict[str, float]:
    """Count, sum, min, max and mean of an array of numbers (at least one)."""
    if not numbers:
        raise ValueError("stats needs at least one number")
    return {
        "count": len(numbers),
        "sum": sum(numbers),
        "min": min(numbers),
        "max": max(numbers),
        "mean": statistics.fmean(numbers),
    }


def sha256(data: bytes) -> str:
    """Hex SHA-256 digest of a base64 argument."""
    raw = data.data if isinstance(data, xmlrpc.client.Binary) else bytes(data)
    return hashlib.sha256(raw).hexdigest()


def describe(value: Any) -> str:
    """The XML-RPC type name of the argument: int, boolean, string, double, array, struct, ..."""
    if isinstance(value, bool):
        return "boolean"
    names: list[tuple[type | tuple[type, ...], str]] = [
        (int, "int"),
        (str, "string"),
        (float, "double"),
        ((list, tuple), "array"),
        (dict, "struct"),
        ((datetime.datetime, xmlrpc.client.DateTime), "dateTime.iso8601"),
        ((bytes, bytearray, xmlrpc.client.Binary), "base64"),
        (type(None), "nil"),
    ]
    for types, name in names:
        if isinstance(value, types):
            return name
    return type(value).__name__
