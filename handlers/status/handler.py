"""The ``status`` handler: an operator's live status page, and the same numbers as JSON.

GET/HEAD on the mount path answers JSON -- the master's metrics snapshot (``porch.metrics``)
plus the identity of the worker answering -- to clients that do not ask for HTML (curl, load
balancers, ``?format=json``), and a static HTML page to browsers (``?format=html``).  The page's
script and stylesheet are served beside it (``<mount>/status.js``, ``<mount>/status.css``); the
script fetches the JSON every few seconds and draws it.  The page carries no data and no inline
code, so a strict Content-Security-Policy holds and whatever a client put in a path can only
ever be text.  Anything else below the mount is a 404; methods other than GET and HEAD a 405.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from html import escape
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, quote

from porch.config.settings import Mount
from porch.handlers.base import Handler, HandlerContext
from porch.handlers.static.handler import etag_in
from porch.http.errors import BadRequest, MethodNotAllowed, NotFound
from porch.http.grammar import accept_weight, weighted_elements
from porch.http.messages import Headers, Request, Response

ALLOWED_METHODS = ("GET", "HEAD")
# The page runs its own script and stylesheet and talks to its own origin, nothing else.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# On every answer of the mount: browsers must not guess types, nor tell other sites where they were.
COMMON_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
PAGE_TYPE = "text/html; charset=utf-8"
ASSET_TYPES = {"status.js": "text/javascript; charset=utf-8", "status.css": "text/css; charset=utf-8"}
ASSETS = files(__name__.rpartition(".")[0]).joinpath("assets")  # package data: porch/handlers/status/assets


@dataclass(frozen=True)
class Asset:
    """A file of the page, read once, when the module is imported."""

    body: bytes
    content_type: str
    etag: str


def asset(name: str, content_type: str) -> Asset:
    """``assets/name`` from the package, with a strong ETag of its bytes."""
    body = ASSETS.joinpath(name).read_bytes()
    return Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


# Read when the module is imported -- by the config loader, in the master, before workers give up
# root: a worker running as `user:` may not be allowed to read the installed package's files.
PAGE_SHELL = ASSETS.joinpath("status.html").read_text("utf-8")
PAGE_ASSETS = {name: asset(name, content_type) for name, content_type in ASSET_TYPES.items()}


def wants_html(request: Request) -> bool:
    """``?format=`` decides; else HTML only for clients whose Accept names text/html and prefers
    it to JSON -- browsers.  curl (``*/*``), probes and scripts get JSON."""
    formats = parse_qs(request.query).get("format")
    if formats:
        if formats[0] not in ("json", "html"):
            raise BadRequest("format must be json or html")
        return formats[0] == "html"
    accept = weighted_elements(request.headers.joined("accept") or "")
    if not any(media_range == "text/html" for media_range, _ in accept):
        return False
    html_weight = accept_weight(accept, "text/html") or 0.0
    return html_weight > 0 and html_weight >= (accept_weight(accept, "application/json") or 0.0)


class StatusHandler(Handler):
    """The status page, its script and stylesheet, and the JSON they show."""

    local_only = True  # the page shows clients' paths and addresses: loopback unless access says otherwise

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, context)
        self.started = time.monotonic()
        prefix = quote(mount.path.rstrip("/"))
        json_url = (prefix or "/") + "?format=json"
        self.page = PAGE_SHELL.replace("{{assets}}", escape(prefix)).replace("{{json}}", escape(json_url)).encode()
        self.assets = PAGE_ASSETS

    def handle(self, request: Request) -> Response:
        below = self.path_info(request)
        on_mount = below in ("", "/")
        found = None if on_mount else self.assets.get(below[1:])
        if not on_mount and found is None:
            raise NotFound()
        if request.method not in ALLOWED_METHODS:
            raise MethodNotAllowed(ALLOWED_METHODS)
        if found is not None:
            return self.file(request, found)
        if wants_html(request):
            headers = self.headers(PAGE_TYPE, "no-cache", ("Vary", "Accept"), ("Content-Security-Policy", PAGE_POLICY))
            return Response(200, headers, self.page)
        body = json.dumps(self.document(), separators=(",", ":")).encode() + b"\n"
        return Response(200, self.headers("application/json", "no-store", ("Vary", "Accept")), body)

    def document(self) -> dict[str, Any]:
        """The master's snapshot with this worker's identity; without a master (``{}``), the identity alone.

        ``uptime_seconds`` and the rest of the snapshot's own fields are the master's when it publishes."""
        own = {
            "software": self.context.software,
            "concurrency": self.context.concurrency,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
        }
        return {"status": "ok", **own, **self.context.snapshot(), "pid": os.getpid()}

    def file(self, request: Request, found: Asset) -> Response:
        """A script or stylesheet; revalidated each time (``no-cache``), so a 304 when it did not change."""
        headers = self.headers(found.content_type, "no-cache")
        headers.add("ETag", found.etag)
        if_none_match = request.headers.joined("if-none-match")
        if if_none_match is not None and etag_in(if_none_match, found.etag, weak=True):
            return Response(304, headers)
        return Response(200, headers, found.body)

    @staticmethod
    def headers(content_type: str, cache_control: str, *more: tuple[str, str]) -> Headers:
        return Headers([("Content-Type", content_type), ("Cache-Control", cache_control), *COMMON_HEADERS, *more])
