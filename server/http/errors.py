"""Errors that know how to answer.

An ``HTTPError`` carries the status it must be answered with, so no code anywhere maps exception
types to statuses: ``raise PayloadTooLarge()`` is the whole story.  ``ProtocolError`` is an
``HTTPError`` raised by the wire parser; after one, the connection is closed because the framing
of whatever follows cannot be trusted (RFC 9112 section 11.2).  ``ConfigError`` collects every
problem found in a config file, each with the file, line and key path it is about.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from http import HTTPStatus


class HTTPError(Exception):
    """An error answered with ``status``; ``detail`` is safe to show the client (no internals)."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    close_connection: bool = False

    def __init__(self, detail: str = "", headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(detail or self.status.phrase)
        self.detail = detail
        self.headers: list[tuple[str, str]] = list(headers)

    def body(self) -> bytes:
        """A short HTML page; 5xx pages never include the detail (it may describe internals)."""
        title = f"{self.status.value} {self.status.phrase}"
        text = self.detail if self.detail and self.status < 500 else self.status.description
        return (
            f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>"
            f"<body><h1>{title}</h1><p>{html.escape(text)}</p></body></html>\n"
        ).encode()


class BadRequest(HTTPError):
    status = HTTPStatus.BAD_REQUEST


class Unauthorized(HTTPError):
    """401; RFC 9110 section 15.5.2 requires a ``WWW-Authenticate`` challenge saying how to log in."""

    status = HTTPStatus.UNAUTHORIZED

    def __init__(self, challenge: str, detail: str = "") -> None:
        super().__init__(detail, headers=[("WWW-Authenticate", challenge)])


class Forbidden(HTTPError):
    status = HTTPStatus.FORBIDDEN


class NotFound(HTTPError):
    status = HTTPStatus.NOT_FOUND


class MethodNotAllowed(HTTPError):
    """405; RFC 9110 section 15.5.6 requires an ``Allow`` header listing what is allowed."""

    status = HTTPStatus.METHOD_NOT_ALLOWED

    def __init__(self, allowed: Iterable[str], detail: str = "") -> None:
        self.allowed = tuple(allowed)
        super().__init__(detail, headers=[("Allow", ", ".join(self.allowed))])


class RequestTimeout(HTTPError):
    status = HTTPStatus.REQUEST_TIMEOUT
    close_connection = True


class PreconditionFailed(HTTPError):
    """412: an If-Match or If-Unmodified-Since condition is false (RFC 9110 section 13.2.2)."""

    status = HTTPStatus.PRECONDITION_FAILED


class PayloadTooLarge(HTTPError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    close_connection = True


class UnsupportedMediaType(HTTPError):
    """415 (RFC 9110 section 15.5.16): a body type or content coding the handler cannot take."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class RangeNotSatisfiable(HTTPError):
    """416; RFC 9110 section 15.5.17: ``Content-Range: bytes */SIZE`` tells the real length."""

    status = HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE

    def __init__(self, size: int) -> None:
        super().__init__(headers=[("Content-Range", f"bytes */{size}")])


class TooManyRequests(HTTPError):
    """429 (RFC 6585 section 4): a rate limit; ``Retry-After`` says in whole seconds (at least 1)
    when a request would be served again."""

    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, retry_after: float, detail: str = "") -> None:
        super().__init__(detail, headers=[("Retry-After", str(max(1, math.ceil(retry_after))))])


class InternalServerError(HTTPError):
    status = HTTPStatus.INTERNAL_SERVER_ERROR


class MethodNotImplemented(HTTPError):
    status = HTTPStatus.NOT_IMPLEMENTED


class BadGateway(HTTPError):
    status = HTTPStatus.BAD_GATEWAY


class ServiceUnavailable(HTTPError):
    status = HTTPStatus.SERVICE_UNAVAILABLE


class GatewayTimeout(HTTPError):
    status = HTTPStatus.GATEWAY_TIMEOUT


class ProtocolError(HTTPError):
    """The bytes on the wire are not a valid HTTP/1.x message; answer ``status`` and close."""

    status = HTTPStatus.BAD_REQUEST
    close_connection = True

    def __init__(self, detail: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(detail)
        self.status = status


class ClientDisconnected(Exception):
    """The client went away while its request was being served (nginx logs such a request as 499).

    Raised by handlers that wait a long time (a silent CGI script) and notice it through
    ``Request.client_gone``; the pipeline logs status 499 and the connection is closed.
    """


CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client closed the connection first"


class InternalRedirect(Exception):
    """Raised by a handler to have the request served again at another local path.

    Used for CGI local redirects (RFC 3875 section 6.2.2): the pipeline re-dispatches a GET for
    ``target`` with no body, a bounded number of times.
    """

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target
