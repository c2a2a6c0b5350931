"""Handlers used by tests/test_config.py, mounted as ``config_handlers:EchoHandler`` and so on.

They exist so the config tests do not depend on the real handlers: ``EchoHandler`` declares an
option of every type the loader supports, the others fail in the ways a handler can fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from porch.config.settings import CIDR, Mount, existing_directory, positive, setting
from porch.handlers.base import Handler, HandlerContext, OptionError
from porch.handlers.user_code import load_object
from porch.http.messages import Headers, Request, Response

closed: list[str] = []  # mount paths of handlers whose close() ran, in order


@dataclass(frozen=True)
class EchoOptions:
    root: Path = setting(doc="a directory that must exist", check=existing_directory)
    name: str = setting("echo", doc="a string")
    count: int = setting(1, doc="a positive integer", check=positive)
    ratio: float = setting(0.5, doc="a number")
    enabled: bool = setting(False, doc="a boolean")
    mode: Literal["fast", "safe"] = setting("safe", doc="one of two words")
    code: Literal[301, 302] = setting(301, doc="one of two integers")
    label: str | None = setting(None, doc="an optional string")
    script: Path | None = setting(None, doc="an optional path")
    index: tuple[str, ...] = setting(("index.html",), doc="a list of strings")
    search: tuple[Path, ...] = setting(default_factory=tuple, doc="a list of paths")
    env: dict[str, str] = setting(default_factory=dict, doc="a mapping of strings")
    sizes: dict[str, int] = setting(default_factory=dict, doc="a mapping of integers")
    networks: tuple[CIDR, ...] = setting(default_factory=tuple, doc="a list of networks")
    extra: Any = setting(None, doc="anything at all")


class EchoHandler(Handler):
    """Answers with its mount path; ``count: 13`` is refused by the constructor (OptionError)."""

    Options = EchoOptions

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, context)
        if mount.options.count == 13:
            raise OptionError("count", "13 is unlucky")
        if "bad" in mount.options.env:
            raise OptionError("env.bad", "this variable is refused")

    def handle(self, request: Request) -> Response:
        return Response(200, Headers([("Content-Type", "text/plain")]), self.mount.path.encode())

    def close(self) -> None:
        closed.append(self.mount.path)


@dataclass(frozen=True)
class AppOptions:
    app: str = setting(doc='"module:callable" imported when the handler is built')


class AppHandler(Handler):
    """Imports an application at build time, as the WSGI handler does."""

    Options = AppOptions

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, context)
        self.app = load_object(mount.options.app)

    def handle(self, request: Request) -> Response:
        return Response(200, body=b"app")


class PlainValueErrorHandler(Handler):
    """Takes no options and refuses to be built with a plain ValueError."""

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        raise ValueError("this handler cannot work here")


class CrashingHandler(Handler):
    """Fails with an unexpected exception while being built."""

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, context)
        raise RuntimeError("the constructor crashed")


@dataclass(frozen=True)
class StaticLikeOptions:
    root: Path = setting(doc="document root", check=existing_directory)


class StaticLikeHandler(Handler):
    """Has a ``root`` like the static handler (the shadowing check looks for type "static")."""

    Options = StaticLikeOptions


@dataclass(frozen=True)
class UnsupportedTypeOptions:
    tags: set[str] = setting(default_factory=set, doc="a type the loader does not convert")


class UnsupportedTypeHandler(Handler):
    Options = UnsupportedTypeOptions


@dataclass(frozen=True)
class ClashOptions:
    host: str = setting("", doc="named like a mount key, so it could never be set")


class ClashHandler(Handler):
    Options = ClashOptions
