"""Objects whose public methods the XML-RPC tests expose through ``instance:``."""

from __future__ import annotations

import os
from typing import Any


class Inner:
    def secret(self) -> str:
        return "reached through a dotted name"


class Calculator:
    """Public methods are exposed; names with "_" and attribute paths are not."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.inner = Inner()
        self.settings = {"password": "hunter2"}

    def add(self, a: int, b: int) -> int:
        """Add two integers (plus the offset)."""
        return a + b + self.offset

    def environment(self) -> str:
        return "visible"

    def _private(self) -> str:
        return "private"


def make_calculator() -> Calculator:
    return Calculator(offset=100)


calculator = Calculator()


class Router:
    """An instance with its own _dispatch sees every method name."""

    def _dispatch(self, method: str, params: tuple[Any, ...]) -> str:
        if method == "boom":
            raise RuntimeError("router exploded")
        return f"{method}/{len(params)}"

    def _listMethods(self) -> list[str]:
        return ["anything"]

    def _methodHelp(self, method: str) -> str:
        return f"help for {method}"


router = Router()
pid_at_import = os.getpid()
