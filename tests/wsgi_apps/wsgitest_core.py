"""Fixture WSGI apps for the WSGI handler tests.

``application`` is wrapped in ``wsgiref.validate.validator``: any PEP 3333 violation by the
server (or the app) raises AssertionError, and validator warnings are turned into errors, so
either shows up as a 500 plus a traceback in the error log.  A validator complaint raised from
``__del__`` cannot propagate; ``sys.unraisablehook`` sends it to the error log instead.
``raw_application`` is the same router unwrapped, for what the validator forbids on purpose
(``read()`` without a size, a bad status) and for ``wsgi.file_wrapper`` sent with sendfile.

Routes (the first PATH_INFO segment naming one; "" for an empty PATH_INFO): environ, read, write,
exc-before, exc-after, raise, raise-in-iter, stream, file, errors, length, generator, list,
status, header, expect.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import time
import warnings
import wsgiref.validate
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import StartResponse

warnings.simplefilter("error", wsgiref.validate.WSGIWarning)
log = logging.getLogger("porch.testapp")  # a "porch" logger reaches the error log


def _unraisable(info: Any) -> None:
    log.error("unraisable in %r: %s: %s", info.object, info.exc_type.__name__, info.exc_value)


sys.unraisablehook = _unraisable

Environ = dict[str, Any]


def marker_dir() -> Path:
    return Path(os.environ.get("WSGITEST_MARKERS", "/nonexistent"))


def query(environ: Environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def text(
    start_response: StartResponse,
    body: str | bytes,
    status: str = "200 OK",
    content_type: str = "text/plain; charset=utf-8",
) -> list[bytes]:
    data = body.encode() if isinstance(body, str) else body
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return [data]


def environ_view(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Every str key, plus the wsgi.* values a test can compare."""
    view: dict[str, Any] = {k: v for k, v in environ.items() if isinstance(v, str)}
    for key in ("wsgi.version", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.input_terminated"):
        view[key] = environ.get(key)
    view["wsgi.version"] = list(view["wsgi.version"])
    view["has_file_wrapper"] = callable(environ.get("wsgi.file_wrapper"))
    view["errors_methods"] = [m for m in ("write", "writelines", "flush") if hasattr(environ["wsgi.errors"], m)]
    view["pid"] = os.getpid()
    return text(start_response, json.dumps(view), content_type="application/json")


def read_view(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Read wsgi.input in the pattern ?mode= names; answer its length and sha256."""
    stream = environ["wsgi.input"]
    mode = query(environ).get("mode", "sized")
    digest = hashlib.sha256()
    count = 0
    if mode == "all":  # read() with no size: not allowed through the validator
        data = stream.read()
        digest.update(data)
        count = 1
    elif mode == "sized":
        while data := stream.read(int(query(environ).get("size", "65536"))):
            digest.update(data)
            count += 1
    elif mode == "length":  # exactly CONTENT_LENGTH bytes, the classic CGI way
        data = stream.read(int(environ.get("CONTENT_LENGTH") or 0))
        digest.update(data)
        count = 1
    elif mode == "line":
        while line := stream.readline():
            digest.update(line)
            count += 1
    elif mode == "line-hint":
        while line := stream.readline(5):
            assert len(line) <= 5
            digest.update(line)
            count += 1
    elif mode == "lines":
        for line in stream.readlines():
            digest.update(line)
            count += 1
    elif mode == "iter":
        for line in stream:
            digest.update(line)
            count += 1
    assert stream.read(10) == b""  # past the end of the body: nothing, and never blocks
    return text(
        start_response, json.dumps({"sha256": digest.hexdigest(), "pieces": count}), content_type="application/json"
    )


def write_view(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """write() before returning, then a generator that also calls write() while iterating."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"one,")
    write(b"")
    write(b"two,")

    def rest() -> Iterator[bytes]:
        yield b"three,"
        write(b"four,")
        yield b"five"
        write(b",six")

    return rest()


def big_write_view(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Several MiB through write(), to go past the in-memory spool."""
    size = int(query(environ)["size"])
    write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
    block = bytes(range(256)) * 256
    for offset in range(0, size, len(block)):
        write(block[: size - offset])
    return []


def exc_before_view(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """An error after start_response but before any body: exc_info replaces the status."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("something broke")
    except ValueError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"handled by the app"]


def exc_after_view(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """An error after the first body chunk: start_response(exc_info) must re-raise it."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial"
    try:
        raise ValueError("too late to change the status")
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
    yield b"never sent"


def raise_view(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError("the application failed on purpose")


class ClosingIterable:
    """An iterable whose close() leaves a marker file, so a test can see it was called."""

    def __init__(self, chunks: Iterable[bytes], marker: str | None, delay: float = 0.0) -> None:
        self.chunks = chunks
        self.marker = marker
        self.delay = delay

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            if self.delay:
                time.sleep(self.delay)
            yield chunk

    def close(self) -> None:
        if self.marker:
            (marker_dir() / self.marker).write_text("closed")


def raise_in_iter_view(environ: Environ, start_response: StartResponse) -> ClosingIterable:
    """Fails while producing the first chunk: a 500, and close() still runs."""

    def failing() -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("failed in the iterable")
        yield b""  # pragma: no cover

    return ClosingIterable(failing(), query(environ).get("marker"))


def stream_view(environ: Environ, start_response: StartResponse) -> ClosingIterable:
    """?count= chunks of ?size= bytes, ?delay= seconds apart; close() leaves ?marker=."""
    q = query(environ)
    count, size = int(q.get("count", "5")), int(q.get("size", "10"))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    chunks = (b"%d" % (i % 10) * size for i in range(count))
    return ClosingIterable(chunks, q.get("marker"), float(q.get("delay", "0")))


def file_view(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """?path= through wsgi.file_wrapper, from ?offset=, as a file or (?buffer=1) a BytesIO."""
    q = query(environ)
    headers = [("Content-Type", "application/octet-stream")]
    if "length" in q:
        headers.append(("Content-Length", q["length"]))
    start_response("200 OK", headers)
    handle: io.IOBase = open(q["path"], "rb")
    if q.get("buffer"):
        with handle:
            handle = io.BytesIO(handle.read())
    handle.seek(int(q.get("offset", "0")))
    return environ["wsgi.file_wrapper"](handle, 4096)


def errors_view(environ: Environ, start_response: StartResponse) -> list[bytes]:
    errors = environ["wsgi.errors"]
    errors.write("first line from the app\nsecond ")
    errors.writelines(["line\n", "forged\r\n[fake] log line\n", "unterminated"])
    errors.flush()
    return text(start_response, "logged")


def length_view(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Declares ?declared= bytes and sends ?actual= (a generator: no length from the list)."""
    q = query(environ)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", q["declared"])])
    actual = int(q["actual"])
    yield b"x" * (actual // 2)
    yield b"y" * (actual - actual // 2)


def generator_view(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """start_response called from inside the iterable, then empty chunks (no headers yet), so
    with ?fail=1 start_response(exc_info) may still replace the status."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b""
    yield b""
    if query(environ).get("fail"):
        try:
            raise KeyError("late but not too late")
        except KeyError:
            start_response("502 Bad Gateway", [("Content-Type", "text/plain")], sys.exc_info())
        yield b"replaced"
        return
    yield b"gen"
    yield b"erated"


def list_view(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"li", b"", b"st"]


def status_view(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """?status= as given; a way to send a bad one."""
    return text(start_response, "status", status=query(environ)["status"])


def header_view(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """One header from ?name= and ?value= (both as given)."""
    q = query(environ)
    start_response("200 OK", [("Content-Type", "text/plain"), (q["name"], q["value"])])
    return [b"header"]


def expect_view(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Reads the body only when ?read=1; either way says how much it read."""
    data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)) if query(environ).get("read") else b""
    return text(start_response, f"read {len(data)}")


ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "": environ_view,
    "environ": environ_view,
    "read": read_view,
    "write": write_view,
    "big-write": big_write_view,
    "exc-before": exc_before_view,
    "exc-after": exc_after_view,
    "raise": raise_view,
    "raise-in-iter": raise_in_iter_view,
    "stream": stream_view,
    "file": file_view,
    "errors": errors_view,
    "length": length_view,
    "generator": generator_view,
    "list": list_view,
    "status": status_view,
    "header": header_view,
    "expect": expect_view,
}


def raw_application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    segments = [segment for segment in environ.get("PATH_INFO", "").split("/") if segment] or [""]
    view = next((ROUTES[segment] for segment in segments if segment in ROUTES), None)
    if view is None:
        return text(start_response, f"no route in {segments!r}", status="404 Not Found")
    return view(environ, start_response)


application = wsgiref.validate.validator(raw_application)


def create_app(greeting: str = "hello", punctuation: str = "!") -> Callable[..., Iterable[bytes]]:
    """An app factory, for "module:create_app('hi')"."""

    def greet(environ: Environ, start_response: StartResponse) -> list[bytes]:
        return text(start_response, f"{greeting}{punctuation}")

    return wsgiref.validate.validator(greet)


not_callable = 42
