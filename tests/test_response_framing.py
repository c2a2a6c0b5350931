"""The response framing decision (porch.http.response.frame_response): a table of requests and
responses in, the head's fields, body length, chunking and keep-alive out."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pytest

from porch.http.messages import FileRegion, ResponseBody
from porch.http.response import Framing, frame_response

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
SERVER = "porch"


@dataclass
class Case:
    """One response to frame; ``fields`` are the handler's, the defaults a plain GET over 1.1."""

    name: str
    method: str = "GET"
    version: str = "HTTP/1.1"
    status: int = 200
    fields: list[tuple[str, str]] = field(default_factory=list)
    body: ResponseBody = b""
    keep_alive: bool = True
    draining: bool = False


def stream() -> ResponseBody:
    return iter([b"a", b"b"])


def region(length: int) -> FileRegion:
    return FileRegion(io.BytesIO(b"x" * length), 0, length)


def own(*fields: tuple[str, str], connection: str | None = None) -> list[tuple[str, str]]:
    """``fields``, then the ones the server always sends, then Connection if ``connection``."""
    return [*fields, ("Date", DATE), ("Server", SERVER), *([("Connection", connection)] if connection else [])]


TEXT = ("Content-Type", "text/plain")

CASES: list[tuple[Case, Framing]] = [
    # bytes and file bodies carry their own length; the handler's Content-Length gives way
    (Case("bytes", fields=[TEXT], body=b"hello"), Framing(own(TEXT, ("Content-Length", "5")), 5, False, True)),
    (
        Case("bytes-declared-wrong", fields=[("Content-Length", "99")], body=b"hello"),
        Framing(own(("Content-Length", "5")), 5, False, True),
    ),
    (Case("file", body=region(7)), Framing(own(("Content-Length", "7")), 7, False, True)),
    # HEAD: the length a GET would have had, when the handler declares one; never chunked
    (
        Case("head-declared", method="HEAD", fields=[("Content-Length", "42")]),
        Framing(own(("Content-Length", "42")), 42, False, True),
    ),
    (Case("head-bytes", method="HEAD", body=b"hello"), Framing(own(("Content-Length", "5")), 5, False, True)),
    (Case("head-no-length", method="HEAD", body=stream()), Framing(own(), None, False, True)),
    (
        Case("head-no-length-1.0", method="HEAD", version="HTTP/1.0", body=stream()),
        Framing(own(connection="keep-alive"), None, False, True),
    ),
    # 1xx, 204 and 304 have no body: no Content-Length, no chunking, the connection stays
    (Case("204", status=204, body=stream()), Framing(own(), None, False, True)),
    (
        Case("304", status=304, fields=[("ETag", '"x"'), ("Content-Length", "10")], body=b""),
        Framing(own(("ETag", '"x"')), None, False, True),
    ),
    (
        Case("1xx", status=103, fields=[("Link", "</a.css>; rel=preload")]),
        Framing(own(("Link", "</a.css>; rel=preload")), None, False, True),
    ),
    (Case("304-1.0", status=304, version="HTTP/1.0"), Framing(own(connection="keep-alive"), None, False, True)),
    # a stream without a length: chunked on HTTP/1.1, delimited by the close on HTTP/1.0
    (
        Case("stream-1.1", fields=[TEXT], body=stream()),
        Framing(own(TEXT, ("Transfer-Encoding", "chunked")), None, True, True),
    ),
    (Case("stream-1.0", version="HTTP/1.0", body=stream()), Framing(own(connection="close"), None, False, False)),
    (
        Case("stream-declared", version="HTTP/1.0", fields=[("Content-Length", "2")], body=stream()),
        Framing(own(("Content-Length", "2"), connection="keep-alive"), 2, False, True),
    ),
    # HTTP/1.0 keep-alive (the request asked for it) is answered with Connection: keep-alive
    (
        Case("1.0-keep-alive", version="HTTP/1.0", body=b"ok"),
        Framing(own(("Content-Length", "2"), connection="keep-alive"), 2, False, True),
    ),
    (
        Case("1.0-no-keep-alive", version="HTTP/1.0", body=b"ok", keep_alive=False),
        Framing(own(("Content-Length", "2"), connection="close"), 2, False, False),
    ),
    # hop-by-hop fields are the server's: dropped, though a Connection: close is honoured
    (
        Case(
            "hop-by-hop-dropped",
            fields=[
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("TE", "trailers"),
                ("Upgrade", "h2c"),
                ("Proxy-Connection", "keep-alive"),
                ("Proxy-Authenticate", "Basic"),
                ("Proxy-Authorization", "Basic eA=="),
                ("Trailer", "X-Sum"),
                ("Trailers", "X-Sum"),
                TEXT,
                ("Connection", "keep-alive"),
            ],
            body=b"ok",
        ),
        Framing(own(TEXT, ("Content-Length", "2")), 2, False, True),
    ),
    (
        Case("handler-close", fields=[("connection", "Close"), TEXT], body=b"ok"),
        Framing(own(TEXT, ("Content-Length", "2"), connection="close"), 2, False, False),
    ),
    (
        Case("handler-close-1.0", version="HTTP/1.0", fields=[("Connection", "keep-alive, close")], body=b""),
        Framing(own(("Content-Length", "0"), connection="close"), 0, False, False),
    ),
    # the request's own close, and a server that is draining, close after this response
    (
        Case("request-close", keep_alive=False, body=b"ok"),
        Framing(own(("Content-Length", "2"), connection="close"), 2, False, False),
    ),
    (
        Case("draining", draining=True, body=b"ok"),
        Framing(own(("Content-Length", "2"), connection="close"), 2, False, False),
    ),
    (
        Case("draining-1.0", version="HTTP/1.0", draining=True, body=b"ok"),
        Framing(own(("Content-Length", "2"), connection="close"), 2, False, False),
    ),
]


@pytest.mark.parametrize("case, expected", CASES, ids=[case.name for case, _ in CASES])
def test_frame_response(case: Case, expected: Framing) -> None:
    framing = frame_response(
        case.method, case.version, case.status, case.fields, case.body, case.keep_alive, case.draining, DATE, SERVER
    )
    assert framing == expected


def test_no_server_field_when_none_is_configured() -> None:
    framing = frame_response("GET", "HTTP/1.1", 200, [], b"", True, False, DATE, "")
    assert framing.headers == [("Content-Length", "0"), ("Date", DATE)]


@pytest.mark.parametrize("value", ["-1", "1e3", "0x10", "", " 5", "5 ", "\u0663", "\u00b2", "1" * 21])
def test_an_invalid_declared_length_is_an_error(value: str) -> None:
    """The connection answers 500 to such a response (its ValueError)."""
    with pytest.raises(ValueError):
        frame_response("GET", "HTTP/1.1", 200, [("Content-Length", value)], stream(), True, False, DATE, SERVER)
