"""The ``status`` handler: a health and identity endpoint for load balancers and operators.

Answers every method on every path below its mount with ``200`` and a small JSON document (the
server software, process id, uptime); HEAD gets the headers only.  It reads no request body.
"""

from __future__ import annotations

import json
import os
import time

from porch.config.settings import Mount
from porch.handlers.base import Handler, HandlerContext
from porch.http.messages import Headers, Request, Response


class StatusHandler(Handler):
    """``{"status": "ok", ...}`` for health checks."""

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, context)
        self.started = time.monotonic()

    def handle(self, request: Request) -> Response:
        body = (
            json.dumps(
                {
                    "status": "ok",
                    "software": self.context.software,
                    "pid": os.getpid(),
                    "uptime_seconds": round(time.monotonic() - self.started, 3),
                    "concurrency": self.context.concurrency,
                }
            ).encode()
            + b"\n"
        )
        return Response(200, Headers([("Content-Type", "application/json"), ("Cache-Control", "no-store")]), body)
