"""The request spine, in one function: validate → dispatch → handle → write → log.

``Pipeline.run`` is the only place where exceptions become responses: an ``HTTPError`` answers
with its own status; any other exception is a 500 whose traceback goes to the error log (the
client sees a generic page).  The access line is written in ``finally``, so every request is
logged exactly once, failures included.  A handler's ``InternalRedirect`` (CGI local redirect)
is served again here as a GET of the new target, at most ``MAX_INTERNAL_REDIRECTS`` times.

The pipeline also knows what the worker is doing, for its heartbeat: the requests in flight and
when that set last changed (``in_progress``, ``changed``); and it is where a request completes,
so ``retire_after(n, retire)`` calls ``retire`` the moment the n-th one has (``max_requests``).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import unquote

from porch.config.settings import AccessRules, Config
from porch.http.body import EmptyBody
from porch.http.errors import (
    CLIENT_CLOSED_REQUEST,
    ClientDisconnected,
    HTTPError,
    InternalRedirect,
    InternalServerError,
    NotFound,
)
from porch.http.messages import Headers, Request, Response, client_host, escape, nothing
from porch.metrics.counters import NO_METRICS, UNMATCHED, Recorder
from porch.spine.dispatch import Router
from porch.spine.logs import Logs, current_request_id
from porch.spine.proxies import TrustedProxies
from porch.spine.validate import validate

log = logging.getLogger(__name__)

MAX_INTERNAL_REDIRECTS = 10

Send = Callable[[Request, Response], int]  # writes the response; returns body bytes sent


@dataclass(frozen=True)
class InFlight:
    """A request being served, as the heartbeat reports it (its request line escaped for logs)."""

    start: float
    request_id: str
    request_line: str
    thread: str  # the name of the thread serving it
    client: str

    @property
    def method(self) -> str:
        return self.request_line.partition(" ")[0]

    @property
    def target(self) -> str:
        """The request-target: the request line without method and version."""
        rest = self.request_line.partition(" ")[2]
        return rest.rpartition(" ")[0] or rest


def error_response(error: HTTPError) -> Response:
    """The response that answers ``error``; asks the connection to close when the error says so."""
    headers = Headers([("Content-Type", "text/html; charset=utf-8"), *error.headers])
    if error.close_connection:
        headers.set("Connection", "close")
    return Response(int(error.status), headers, error.body())


class Pipeline:
    """Runs requests through the stages; one instance per server process, shared by all threads."""

    def __init__(self, config: Config, router: Router, logs: Logs, metrics: Recorder = NO_METRICS) -> None:
        self.config = config
        self.router = router
        self.logs = logs
        self.metrics = metrics
        self.trusted_proxies = AccessRules(allow=config.trusted_proxies, deny=())
        # None without trusted_proxies (the common case): then no request pays for reading proxy headers
        self.proxies = TrustedProxies(self.trusted_proxies, config.proxy_headers) if config.trusted_proxies else None
        self.in_flight: dict[int, Request] = {}  # for the heartbeat: what each thread serves, by its ident
        self.changed = time.monotonic()  # when a request last entered or left ``in_flight``
        self.new_id_sequence()
        self.completed = itertools.count(1)  # next() is atomic: each completion gets its own number
        self.served = 0  # the last completion number stored (threads may store theirs out of order)
        self.max_requests = 0
        self.retire: Callable[[], None] = nothing
        self.retire_calls = itertools.count()  # the first caller retires, once

    def retire_after(self, max_requests: int, retire: Callable[[], None]) -> None:
        """Call ``retire`` once, on the thread completing the ``max_requests``-th request -- or
        here, if that many have completed already (pool threads serve as soon as they exist)."""
        self.retire, self.max_requests = retire, max_requests
        if self.served >= max_requests:
            self.retire_once()

    def retire_once(self) -> None:
        """Retire on the first call only: completions past the count, and ``retire_after``, all try."""
        if next(self.retire_calls) == 0:
            self.retire()

    def new_id_sequence(self) -> None:
        """Request ids are a random prefix per process, then a counter; a forked child calls
        this again so that it does not repeat its parent's ids."""
        self.id_prefix = secrets.token_hex(4)
        self.id_counter = itertools.count(secrets.randbelow(1 << 32))

    def request_id(self, headers: Headers, client: object) -> str:
        """The incoming X-Request-ID when a trusted proxy sent it (judged by the peer, before
        ``proxy_headers`` name another client), else a fresh one."""
        incoming = headers.get("x-request-id")
        if (
            incoming
            and self.proxies is not None
            and self.proxies.trusts(client)
            and len(incoming) <= 200
            and incoming.isprintable()
        ):
            return incoming
        return f"{self.id_prefix}{next(self.id_counter) & 0xFFFFFFFF:08x}"

    def run(self, request: Request, send: Send) -> bool:
        """Serve one parsed request completely; returns False if the response could not be sent."""
        if self.proxies is not None:  # first: access rules, logs, metrics and handlers see the client
            request = self.proxies.apply(request)
        token = current_request_id.set(request.request_id)
        response: Response | None = None
        mount = UNMATCHED
        sent = 0
        complete = False
        key = threading.get_ident()
        self.in_flight[key] = request
        self.changed = time.monotonic()
        try:
            response, mount = self.respond(request)
            sent = send(request, response)
            complete = True
        finally:
            del self.in_flight[key]
            self.changed = now = time.monotonic()
            self.served = served = next(self.completed)
            if served >= self.max_requests > 0:
                self.retire_once()
            status = response.status if response is not None else 500
            self.metrics.request(mount, request.method, status, now - request.start, request.body.received, sent)
            if self.logs.access_enabled:  # else not even the line's parts are worth building
                self.logs.log_request(
                    request,
                    client_host(request.client),
                    request_line(request),
                    status,
                    sent,
                    now - request.start,
                    request.request_id,
                )
            current_request_id.reset(token)
        return complete

    def respond(self, request: Request) -> tuple[Response, str]:
        """validate → dispatch → handle, with every failure turned into a response; the response
        and the path of the mount that answered (``UNMATCHED`` when none did)."""
        mount = UNMATCHED
        try:
            for _ in range(MAX_INTERNAL_REDIRECTS + 1):
                route = self.router.match(request.host, request.path)
                mount = route.mount.path
                request = validate(request, route, self.config)
                try:
                    return route.handler.handle(request), mount
                except InternalRedirect as redirect:
                    request = redirected(request, redirect.target)
            raise InternalServerError("too many internal redirects")
        except ClientDisconnected:
            log.info("%s %s: the client went away", request.method, escape(request.target))
            closed = Response(
                CLIENT_CLOSED_REQUEST, Headers([("Connection", "close")]), b"", reason="Client Closed Request"
            )
            return closed, mount
        except HTTPError as error:
            if error.status >= 500:
                log.error("%s %s: %s", request.method, escape(request.target), error)
            return error_response(error), mount
        except Exception:
            log.exception("unhandled exception serving %s %s", request.method, escape(request.target))
            return error_response(InternalServerError()), mount

    def in_progress(self) -> list[InFlight]:
        """The requests being served, oldest first, with the names of the threads serving them."""
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        serving = sorted(self.in_flight.copy().items(), key=lambda item: item[1].start)
        return [
            InFlight(
                r.start, escape(r.request_id), escape(request_line(r)), names.get(ident, "?"), client_host(r.client)
            )
            for ident, r in serving
        ]

    def body_limit(self, host: str, path: str) -> int:
        """The body limit of the mount that will serve ``path`` on ``host`` (the global one when
        none does), so a body is not received ahead only to be refused."""
        try:
            return self.router.match(host, path).mount.limits.body
        except NotFound:
            return self.config.limits.body

    def log_rejected(self, client: object, request_line_text: str, status: int, sent: int, start: float) -> None:
        """Count and access-log a request rejected before it could be parsed into a Request."""
        seconds = time.monotonic() - start
        method = request_line_text.partition(" ")[0]
        self.metrics.request(UNMATCHED, method, status, seconds, 0, sent)
        self.logs.log_request(None, client_host(client), request_line_text, status, sent, seconds, "-")


def request_line(request: Request) -> str:
    return f"{request.method} {request.target} {request.version}"


def redirected(request: Request, target: str) -> Request:
    """``request`` turned into a body-less GET of the local ``target`` (RFC 3875 6.2.2)."""
    raw_path, _, query = target.partition("?")
    headers = Headers(
        [(k, v) for k, v in request.headers if k.lower() not in ("content-length", "transfer-encoding", "content-type")]
    )
    return replace(
        request,
        method="GET",
        target=target,
        raw_path=raw_path,
        path=unquote(raw_path, errors="surrogateescape"),
        query=query,
        headers=headers,
        body=EmptyBody(limit=0),
    )
