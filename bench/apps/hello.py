"""The WSGI application every WSGI server of the benchmark serves (porch, gunicorn, waitress, uWSGI).

``GET /hello`` answers 14 bytes; ``POST /upload`` reads the whole request body and answers its
length, so the cost measured is the server's request-body path.  Both responses carry a
Content-Length, so every server can keep the connection alive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

HELLO = b"Hello, world!\n"
READ_BYTES = 65536


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/upload":
        stream = environ["wsgi.input"]
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
        received = 0
        while remaining > 0:
            chunk = stream.read(min(remaining, READ_BYTES))
            if not chunk:
                break
            received += len(chunk)
            remaining -= len(chunk)
        body = b"%d\n" % received
    else:
        body = HELLO
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = app
