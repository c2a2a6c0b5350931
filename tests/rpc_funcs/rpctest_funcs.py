"""Functions the XML-RPC tests expose: every type, failures of every kind, slow and big answers."""

from __future__ import annotations

import os
import sys
import threading
import time
import xmlrpc.client
from typing import Any

_calls = 0
_calls_lock = threading.Lock()


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def echo(value: Any) -> Any:
    return value


def echo_all(*values: Any) -> list[Any]:
    return list(values)


def type_names(*values: Any) -> list[str]:
    """The Python type name of each argument as the server received it."""
    return [type(value).__name__ for value in values]


def optional(a: int, b: int = 1) -> int:
    """a times b."""
    return a * b


def keyword_only(a: int, *, b: int) -> int:
    return a + b


def fail(message: str) -> None:
    """Raises ValueError(message)."""
    raise ValueError(message)


def fault(code: int, message: str) -> None:
    """Answers the fault the caller asked for."""
    raise xmlrpc.client.Fault(code, message)


def inner_type_error() -> int:
    """A TypeError raised inside the function, not by a wrong call."""
    return len(5)  # type: ignore[arg-type]


def exit_worker() -> None:
    sys.exit(3)


def return_none() -> None:
    return None


def return_set() -> set[int]:
    return {1, 2}


def too_big_int() -> int:
    return 2**40


def pid() -> int:
    return os.getpid()


def slow_echo(value: Any, seconds: float) -> Any:
    time.sleep(seconds)
    return value


def big(size: int) -> str:
    return "x" * size


def count() -> int:
    """Calls so far in this process (thread-safe)."""
    global _calls
    with _calls_lock:
        _calls += 1
        return _calls


def make_adder(offset: int = 10) -> Any:
    """A factory: functions may be "module:factory()" too."""

    def add_offset(value: int) -> int:
        return value + offset

    return add_offset


not_callable = 42


def bad_fault() -> None:
    """Raises a Fault that cannot be marshalled (its code is not an int)."""
    raise xmlrpc.client.Fault({1, 2}, "set as code")  # type: ignore[arg-type]
