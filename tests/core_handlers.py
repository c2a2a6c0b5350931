"""Handlers used by the core tests, mounted as ``core_handlers:EchoHandler`` (tests/ on PYTHONPATH)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

from porch.handlers.base import Handler
from porch.http.messages import Headers, Request, Response


class OkHandler(Handler):
    """``200 ok`` for every method and path; never reads the request body."""

    def handle(self, request: Request) -> Response:
        return Response(200, Headers([("Content-Type", "text/plain")]), b"ok\n")


class EchoHandler(Handler):
    """Echoes the request as JSON; query switches make it misbehave on purpose.

    ?crash=1 raises; ?sleep=S sleeps first; ?stream=N streams N chunks without a length;
    ?length=N&send=M declares N bytes and sends M; ?badheader=1 returns a header with a newline;
    ?read=0 does not read the body.
    """

    def handle(self, request: Request) -> Response:
        query = {k: v[0] for k, v in parse_qs(request.query).items()}
        if "sleep" in query:
            time.sleep(float(query["sleep"]))
        if "crash" in query:
            raise RuntimeError("the echo handler was asked to crash")
        if "badheader" in query:
            return Response(200, Headers([("X-Bad", "a\r\nX-Injected: yes")]), b"bad")
        if "stream" in query:
            count = int(query["stream"])
            return Response(200, Headers([("Content-Type", "text/plain")]), stream(count))
        if "length" in query:
            headers = Headers([("Content-Length", query["length"])])
            return Response(200, headers, iter([b"x" * int(query["send"])]))
        body = b"" if query.get("read") == "0" else request.body.read()
        document = {
            "method": request.method,
            "target": request.target,
            "path": request.path,
            "query": request.query,
            "version": request.version,
            "headers": request.headers.items(),
            "body": body.decode("latin-1"),
            "client": list(request.client) if isinstance(request.client, tuple) else request.client,
            "request_id": request.request_id,
            "scheme": request.scheme,
            "trailers": request.body.trailers.items(),
        }
        return Response(200, Headers([("Content-Type", "application/json")]), json.dumps(document).encode())


def stream(count: int) -> Iterator[bytes]:
    for number in range(count):
        yield f"chunk {number}\n".encode()
