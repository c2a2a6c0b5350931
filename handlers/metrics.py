"""The ``metrics`` handler: the server's metrics for Prometheus to scrape.

GET (or HEAD) on the mount path answers the master's latest snapshot (``porch.metrics``) in
OpenMetrics 1.0.0 when the client's ``Accept`` lists ``application/openmetrics-text``, else in
the Prometheus text format 0.0.4; gzip-compressed when ``Accept-Encoding`` allows it (Prometheus
asks for gzip on every scrape).  Other methods get ``405``, paths below the mount ``404``.  Like
``status``, the mount admits loopback clients only unless its own ``access`` says otherwise.
"""

from __future__ import annotations

import gzip
from typing import ClassVar

from porch.handlers.base import Handler
from porch.http.errors import MethodNotAllowed, NotFound
from porch.http.grammar import GZIP_LEVEL, accepts_coding, weighted_elements
from porch.http.messages import Headers, Request, Response
from porch.metrics.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    OPENMETRICS_MEDIA_TYPE,
    PROMETHEUS_CONTENT_TYPE,
    openmetrics_text,
    prometheus_text,
)

ALLOWED_METHODS = ("GET", "HEAD")
# Fast over ratio: a scrape every few seconds of a few tens of KiB of very repetitive text.


def wants_openmetrics(accept: str) -> bool:
    """Whether an Accept field value lists OpenMetrics with a weight above 0 (RFC 9110 12.5.1).

    A client that lists it (Prometheus does, ahead of text/plain) gets it; everyone else, curl and
    a browser included, gets the Prometheus text format, which every scraper reads.
    """
    return any(
        media_range == OPENMETRICS_MEDIA_TYPE and weight > 0 for media_range, weight in weighted_elements(accept)
    )


class MetricsHandler(Handler):
    """Prometheus text or OpenMetrics from ``self.context.snapshot()``."""

    local_only: ClassVar[bool] = True

    def handle(self, request: Request) -> Response:
        if self.path_info(request) not in ("", "/"):
            raise NotFound()
        if request.method not in ALLOWED_METHODS:
            raise MethodNotAllowed(ALLOWED_METHODS)
        snapshot = self.context.snapshot()
        if wants_openmetrics(request.headers.joined("accept") or ""):
            content_type, text = OPENMETRICS_CONTENT_TYPE, openmetrics_text(snapshot)
        else:
            content_type, text = PROMETHEUS_CONTENT_TYPE, prometheus_text(snapshot)
        body = text.encode()
        headers = Headers(
            [("Content-Type", content_type), ("Cache-Control", "no-store"), ("Vary", "Accept, Accept-Encoding")]
        )
        if accepts_coding(request.headers.joined("accept-encoding"), "gzip"):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
            headers.add("Content-Encoding", "gzip")
        return Response(200, headers, body)
