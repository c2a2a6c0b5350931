"""The request spine, in one function: validate → dispatch → handle → write → log.

``Pipeline.run`` is the only place where exceptions become responses: an ``HTTPError`` answers
with its own status; any other exception is a 500 whose traceback goes to the error log (the
client sees a generic page).  Every request is an ``Exchange``, recorded -- metrics, the access
line -- exactly once, failures included, when its response has ended: in ``finally`` if sending
failed, else where the connection sees the last byte go, maybe after ``run`` has returned (a slow
client), so the line counts the body bytes sent and the time to the last.  A handler's
``InternalRedirect`` (CGI local redirect) is served again here as a GET of the new target, at
most ``MAX_INTERNAL_REDIRECTS`` times.

The pipeline also knows what the worker is doing, for its heartbeat: the requests in flight and
when that set last changed (``in_progress``, ``changed``); and it is where a request completes,
so ``retire_after(n, retire)`` calls ``retire`` the moment the n-th one has (``max_requests``).
A forked child tells its acceptor instead (``report``), which counts there (``complete``).
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


class Exchange:
    """A request and its response on the way out: recorded -- metrics, the access line -- once,
    when the response has ended, sent whole or cut off.

    A slow client's response is finished after the thread that produced it has moved on, so
    whoever sends its bytes counts those of the body the socket takes (``sent``), and whoever
    sees the end calls ``end``: the line then says what was sent, as Apache's ``%B`` and nginx's
    ``$body_bytes_sent`` do, and its time runs to the last byte, as nginx's ``$request_time``.
    ``request`` is None for a request rejected before it was parsed (``line`` is what came).
    """

    __slots__ = ("client", "line", "mount", "pipeline", "request", "response", "sent", "start")

    def __init__(
        self, pipeline: Pipeline | None, client: object, start: float, request: Request | None, line: str = ""
    ) -> None:
        self.pipeline = pipeline  # None once recorded (or for ``NO_EXCHANGE``)
        self.client = client
        self.start = start
        self.request = request
        self.line = line
        self.mount = UNMATCHED
        self.response: Response | None = None  # None: no response was made (500)
        self.sent = 0  # body bytes the socket has taken

    def end(self) -> None:
        """Record the exchange, the first time only."""
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is None:
            return
        seconds = time.monotonic() - self.start
        request = self.request
        status = self.response.status if self.response is not None else 500
        if request is None:
            method, received, request_id = self.line.partition(" ")[0], 0, "-"
        else:
            method, received, request_id = request.method, request.body.received, request.request_id
        pipeline.metrics.request(self.mount, method, status, seconds, received, self.sent)
        if pipeline.logs.access_enabled:  # else not even the line's parts are worth building
            line = self.line if request is None else request_line(request)
            pipeline.logs.log_request(request, client_host(self.client), line, status, self.sent, seconds, request_id)


NO_EXCHANGE = Exchange(None, None, 0.0, None)  # no response on the way: records nothing
Send = Callable[[Request, Response, Exchange], None]  # writes the response, counting and ending the exchange


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
        # A forked child's: told when a request starts (False) and completes (True), for its acceptor.
        self.report: Callable[[Request, bool], None] | None = None

    def retire_after(self, max_requests: int, retire: Callable[[], None]) -> None:
        """Call ``retire`` once, on the thread completing the ``max_requests``-th request -- or
        here, if that many have completed already (pool threads serve as soon as they exist)."""
        self.retire, self.max_requests = retire, max_requests
        if self.served >= max_requests:
            self.retire_once()

    def complete(self) -> None:
        """Count a completed request: the ``max_requests``-th retires the worker (a forking
        acceptor counts here what its children report)."""
        self.served = served = next(self.completed)
        if served >= self.max_requests > 0:
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
        """Serve one parsed request; returns False if the response could not be sent.

        ``send`` ends the exchange once the response is out -- or leaves that to whoever
        finishes sending it; when sending fails, it ends here, with what was sent.
        """
        if self.proxies is not None:  # first: access rules, logs, metrics and handlers see the client
            request = self.proxies.apply(request)
        token = current_request_id.set(request.request_id)
        exchange = Exchange(self, request.client, request.start, request)
        complete = False
        key = threading.get_ident()
        self.in_flight[key] = request
        self.changed = time.monotonic()
        if self.report is not None:
            self.report(request, False)
        try:
            response, exchange.mount = self.respond(request)
            exchange.response = response
            send(request, response, exchange)
            complete = True
        finally:
            del self.in_flight[key]
            self.changed = time.monotonic()
            self.complete()
            if self.report is not None:
                self.report(request, True)
            if not complete:
                exchange.end()
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
        return [in_flight(r, names.get(ident, "?")) for ident, r in serving]

    def body_limit(self, host: str, path: str) -> int:
        """The body limit of the mount that will serve ``path`` on ``host`` (the global one when
        none does), so a body is not received ahead only to be refused."""
        try:
            return self.router.match(host, path).mount.limits.body
        except NotFound:
            return self.config.limits.body


def in_flight(request: Request, serving: str) -> InFlight:
    """``request`` as the heartbeat reports it, served by the thread (or child) ``serving``."""
    return InFlight(
        request.start, escape(request.request_id), escape(request_line(request)), serving, client_host(request.client)
    )


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
