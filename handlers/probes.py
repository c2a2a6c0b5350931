"""The ``health`` and ``ready`` mount types: what a load balancer or an orchestrator asks.

``health`` (liveness): this process is up and serving requests -- always ``200`` when it can
answer at all.  ``ready`` (readiness): this instance should get new requests -- ``200`` once
every worker has booted, ``503`` with the reason while the master starts, reloads or stops, or
while this worker drains.  A stop or the switch of a reload turns ``ready`` to 503 before any
listener closes, so a balancer that probes it stops sending first.  Both answer GET and HEAD on
their path, with a small JSON body; they read no request body and keep no state.
"""

from __future__ import annotations

import json
import os

from porch.handlers.base import Handler
from porch.http.errors import MethodNotAllowed, NotFound
from porch.http.messages import Headers, Request, Response

PROBE_METHODS = ("GET", "HEAD")


class HealthHandler(Handler):
    """``200 {"status": "ok"}`` from any worker that can answer."""

    local_only = True

    def handle(self, request: Request) -> Response:
        check_probe(self, request)
        return probe_response(200, {"status": "ok", "pid": os.getpid()})


class ReadyHandler(Handler):
    """``200`` when this instance takes new requests, ``503`` with the reason when it should not."""

    local_only = True

    def handle(self, request: Request) -> Response:
        check_probe(self, request)
        reason = self.context.readiness()
        if reason is None:
            return probe_response(200, {"status": "ready", "pid": os.getpid()})
        response = probe_response(503, {"status": "not ready", "reason": reason, "pid": os.getpid()})
        response.headers.set("Retry-After", "1")
        return response


def check_probe(handler: Handler, request: Request) -> None:
    """A probe answers GET and HEAD on its own path only."""
    if handler.path_info(request) not in ("", "/"):
        raise NotFound()
    if request.method not in PROBE_METHODS:
        raise MethodNotAllowed(list(PROBE_METHODS))


def probe_response(status: int, document: dict[str, object]) -> Response:
    body = json.dumps(document).encode() + b"\n"
    return Response(status, Headers([("Content-Type", "application/json"), ("Cache-Control", "no-store")]), body)
