"""The ``redirect`` handler: send every request below a prefix somewhere else.

``to`` is the target URL (or path); with ``keep_path`` the part of the path below the mount and
the query string are appended, as nginx's ``return 301 https://example.org$request_uri`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from porch.config.settings import setting
from porch.handlers.base import Handler
from porch.http.messages import Headers, Request, Response


@dataclass(frozen=True)
class RedirectOptions:
    to: str = setting(doc="target URL or absolute path")
    status: Literal[301, 302, 303, 307, 308] = setting(301, doc="redirect status code")
    keep_path: bool = setting(True, doc="append the path below the mount and the query string")


class RedirectHandler(Handler):
    """Answers with a redirect to ``to``."""

    Options = RedirectOptions

    def handle(self, request: Request) -> Response:
        options: RedirectOptions = self.options
        location = options.to
        if options.keep_path:
            prefix = self.mount.path.rstrip("/")
            location = location.rstrip("/") + request.raw_path[len(prefix) :]
            if request.query:
                location += "?" + request.query
        body = f'<a href="{location}">moved</a>\n'.encode()
        headers = Headers([("Location", location), ("Content-Type", "text/html; charset=utf-8")])
        return Response(options.status, headers, body)
