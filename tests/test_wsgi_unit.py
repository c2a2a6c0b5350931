"""WSGI handler, called directly: loading, environ, start_response rules, body assembly.

Requests are parsed from raw bytes by the real parser (porch.http.head, porch.http.body), their
bodies read from an in-memory source, and responses consumed the way the connection does
(iterate, then close).
The fixture apps wrap themselves in ``wsgiref.validate.validator``, so a PEP 3333 violation
raises here.  The real-socket behaviour is in ``test_wsgi.py``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes, unquote_to_bytes

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from porch.config.settings import Limits, Mount
from porch.handlers.base import HandlerContext, OptionError
from porch.handlers.wsgi import (
    AppBody,
    ApplicationError,
    ErrorStream,
    FileWrapper,
    WSGIHandler,
    check_headers,
    check_status,
)
from porch.http.body import body_reader
from porch.http.errors import ProtocolError
from porch.http.head import find_head_end, parse_head
from porch.http.messages import Address, FileRegion, Request, Response

APPS_DIR = Path(__file__).parent / "wsgi_apps"
CORE = "wsgitest_core:application"
RAW = "wsgitest_core:raw_application"


def make_handler(
    app: str = CORE, path: str = "/", context: HandlerContext | None = None, **options: Any
) -> WSGIHandler:
    options.setdefault("pythonpath", (APPS_DIR,))
    mount = Mount(path=path, type="wsgi", options=WSGIHandler.Options(app=app, **options))
    return WSGIHandler(mount, context or HandlerContext(software="porch/test"))


def make_request(
    raw: bytes,
    *,
    client: Address = ("127.0.0.1", 50123),
    server: Address = ("127.0.0.1", 8000),
    scheme: str = "http",
    on_first_read: Any = None,
) -> Request:
    """Parse ``raw`` (head + body) exactly as the connection would."""
    end = find_head_end(raw, Limits())
    head = parse_head(raw[:end], Limits())
    body = body_reader(head, io.BytesIO(raw[end:]), None, on_first_read, limits=Limits())
    return Request(
        method=head.method,
        target=head.target,
        raw_path=head.raw_path,
        path=head.path,
        query=head.query,
        version=head.version,
        headers=head.headers,
        body=body,
        client=client,
        server=server,
        scheme=scheme,
        request_id="req-1",
    )


def get(target: str, *headers: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}", *(["Host: example.com"] if version == "HTTP/1.1" else []), *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def consume(response: Response) -> bytes:
    """The body bytes as the connection would send them (before truncation), then close()."""
    body = response.body
    try:
        if isinstance(body, bytes):
            return body
        if isinstance(body, FileRegion):
            body.file.seek(body.offset)
            return body.file.read(body.length)
        return b"".join(body)
    finally:
        target = body.file if isinstance(body, FileRegion) else body
        getattr(target, "close", lambda: None)()


def serve(handler: WSGIHandler, raw: bytes, **kw: Any) -> tuple[Response, bytes]:
    response = handler.handle(make_request(raw, **kw))
    return response, consume(response)


def environ_of(handler: WSGIHandler, raw: bytes, **kw: Any) -> dict[str, Any]:
    response, body = serve(handler, raw, **kw)
    assert response.status == 200, body
    return json.loads(body)


@functools.cache
def nested_handler() -> WSGIHandler:
    """One handler at /app/nested shared by every hypothesis example."""
    return make_handler(path="/app/nested")


@pytest.fixture(scope="module")
def root() -> WSGIHandler:
    return make_handler(path="/")


@pytest.fixture(scope="module")
def raw_root() -> WSGIHandler:
    return make_handler(RAW, path="/")


# -- loading -------------------------------------------------------------------------------------


class TestLoading:
    def test_module_callable(self, root: WSGIHandler) -> None:
        assert callable(root.app)

    def test_module_alone_means_application(self) -> None:
        handler = make_handler("wsgitest_core")
        _response, body = serve(handler, get("/list"))
        assert body == b"list"

    def test_factory_with_literal_arguments(self) -> None:
        handler = make_handler("wsgitest_core:create_app('hi', punctuation='?')")
        assert serve(handler, get("/"))[1] == b"hi?"
        assert serve(make_handler("wsgitest_core:create_app()"), get("/"))[1] == b"hello!"

    @pytest.mark.parametrize(
        "spec", ["wsgitest_core:create_app(open('x'))", "wsgitest_core:create_app(**{})", "wsgitest_core:create_app(("]
    )
    def test_factory_arguments_must_be_literals(self, spec: str) -> None:
        with pytest.raises(OptionError) as info:
            make_handler(spec)
        assert info.value.key == "app"

    def test_not_callable(self) -> None:
        with pytest.raises(OptionError, match="not a WSGI callable"):
            make_handler("wsgitest_core:not_callable")

    def test_missing_module_names_pythonpath(self) -> None:
        with pytest.raises(OptionError) as info:
            make_handler("no_such_module_xyz:application")
        assert info.value.key == "app"
        assert "ModuleNotFoundError" in info.value.message
        assert str(APPS_DIR) in info.value.message

    def test_missing_attribute(self) -> None:
        with pytest.raises(OptionError, match="AttributeError"):
            make_handler("wsgitest_core:nothing_here")

    def test_import_error_carries_the_traceback(self) -> None:
        with pytest.raises(OptionError) as info:
            make_handler("wsgitest_broken:application")
        message = info.value.message
        assert "LookupError: the database settings are missing" in message
        assert "Traceback" in message and "wsgitest_broken.py" in message and "in read_settings" in message
        assert "importlib" not in message and "load_application" not in message  # the app's frames only

    def test_missing_pythonpath_directory(self, tmp_path: Path) -> None:
        with pytest.raises(OptionError) as info:
            make_handler(pythonpath=(tmp_path / "nope",))
        assert info.value.key == "pythonpath"

    def test_pythonpath_is_prepended_once(self) -> None:
        make_handler()
        make_handler()
        assert sys.path.count(str(APPS_DIR)) == 1

    def test_chdir(self, tmp_path: Path) -> None:
        before = os.getcwd()
        try:
            make_handler(chdir=tmp_path)
            assert os.getcwd() == str(tmp_path)
        finally:
            os.chdir(before)
        with pytest.raises(OptionError) as info:
            make_handler(chdir=tmp_path / "missing")
        assert info.value.key == "chdir"

    def test_same_module_name_from_two_directories_is_refused(self, tmp_path: Path) -> None:
        first, second = tmp_path / "a", tmp_path / "b"
        for directory, word in ((first, b"first"), (second, b"second")):
            directory.mkdir()
            (directory / "wsgitest_twin.py").write_text(
                "def application(environ, start_response):\n"
                "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
                f"    return [{word!r}]\n"
            )
        try:
            make_handler("wsgitest_twin:application", pythonpath=(first,))
            with pytest.raises(OptionError, match="already imported"):
                make_handler("wsgitest_twin:application", pythonpath=(second,))
        finally:
            sys.modules.pop("wsgitest_twin", None)


# -- environ -------------------------------------------------------------------------------------


class TestEnviron:
    def test_required_keys(self, root: WSGIHandler) -> None:
        env = environ_of(root, get("/environ/x?a=1&b=%20"))
        assert env["REQUEST_METHOD"] == "GET"
        assert env["SCRIPT_NAME"] == ""
        assert env["PATH_INFO"] == "/environ/x"
        assert env["QUERY_STRING"] == "a=1&b=%20"
        assert env["SERVER_NAME"] == "example.com" and env["SERVER_PORT"] == "80"
        assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert env["SERVER_SOFTWARE"] == "porch/test"
        assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
        assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"] == "50123"
        assert env["REQUEST_URI"] == env["RAW_URI"] == "/environ/x?a=1&b=%20"
        assert env["wsgi.version"] == [1, 0]
        assert env["wsgi.url_scheme"] == "http" and "HTTPS" not in env
        assert env["wsgi.run_once"] is False and env["wsgi.input_terminated"] is True
        assert env["has_file_wrapper"] is True
        assert env["errors_methods"] == ["write", "writelines", "flush"]
        assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env
        assert env["porch.request_id"] == "req-1"

    @pytest.mark.parametrize(
        "concurrency, workers, thread, process",
        [
            ("threading", 1, True, False),
            ("threading", 4, True, True),
            ("forking", 1, False, True),
            ("forking", 2, False, True),
        ],
    )
    def test_concurrency_flags(self, concurrency: str, workers: int, thread: bool, process: bool) -> None:
        handler = make_handler(context=HandlerContext(concurrency=concurrency, workers=workers))
        env = environ_of(handler, get("/environ"))
        assert (env["wsgi.multithread"], env["wsgi.multiprocess"]) == (thread, process)

    @pytest.mark.parametrize(
        "mount, target, script_name, path_info",
        [
            ("/", "/environ", "", "/environ"),
            ("/app", "/app", "/app", ""),
            ("/app", "/app/environ", "/app", "/environ"),
            ("/app/", "/app/environ/", "/app", "/environ/"),
            ("/app/nested", "/app/nested/environ/a/b", "/app/nested", "/environ/a/b"),
            # percent-decoded, then the UTF-8 bytes as latin-1 (PEP 3333 "Unicode Issues")
            ("/app", "/app/environ/%C3%A9t%C3%A9%20x", "/app", "/environ/\u00c3\u00a9t\u00c3\u00a9 x"),
            ("/app", "/app/environ/a%2Fb%3F", "/app", "/environ/a/b?"),
            ("/app", "/%61pp/environ", "/app", "/environ"),
            ("/app", "/app/environ/%FF%FE", "/app", "/environ/\u00ff\u00fe"),  # not UTF-8: bytes kept
            ("/caf\u00e9", "/caf%C3%A9/environ", "/caf\u00c3\u00a9", "/environ"),
        ],
    )
    def test_script_name_and_path_info(self, mount: str, target: str, script_name: str, path_info: str) -> None:
        handler = make_handler(path=mount)
        env = environ_of(handler, get(target))
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (script_name, path_info)
        assert env["REQUEST_URI"] == target

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.binary(min_size=1, max_size=12).filter(lambda b: b not in (b".", b"..")), min_size=1, max_size=4)
    )
    def test_path_info_is_the_decoded_bytes_as_latin_1(self, segments: list[bytes]) -> None:
        """PEP 3333 "Unicode Issues": whatever the bytes, PATH_INFO.encode("latin-1") gives them back."""
        handler = nested_handler()
        encoded = "/".join(quote_from_bytes(segment, safe="") for segment in segments)
        try:
            request = make_request(f"GET /app/nested/{encoded}?q HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        except ProtocolError:
            assume(False)  # NUL or an encoded dot-segment: refused before any handler runs
        environ = handler.environ(request, ErrorStream("/"))
        assert environ["SCRIPT_NAME"] == "/app/nested"
        assert environ["PATH_INFO"].encode("latin-1") == b"/" + unquote_to_bytes(encoded)

    def test_http_variables(self, root: WSGIHandler) -> None:
        env = environ_of(
            root,
            get(
                "/environ",
                "Accept: text/html",
                "X-Multi: a",
                "x-multi: b",
                "Cookie: a=1",
                "Cookie: b=2",
                "X_Forwarded_For: 6.6.6.6",
                "X-Forwarded-For: 10.0.0.1",
                "Proxy: http://evil:1",
                "User-Agent: t/1",
            ),
        )
        assert env["HTTP_ACCEPT"] == "text/html"
        assert env["HTTP_X_MULTI"] == "a, b"
        assert env["HTTP_COOKIE"] == "a=1; b=2"
        assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"  # the "_" spelling was dropped
        assert env["HTTP_HOST"] == "example.com"
        assert env["HTTP_USER_AGENT"] == "t/1"
        assert "HTTP_PROXY" not in env

    def test_header_keys_remembered_are_bounded(self, root: WSGIHandler) -> None:
        """Header names are the client's words: past the bound they are converted, not kept."""
        from porch.http import grammar

        names = [f"X-Client-{n}" for n in range(grammar.MAX_REMEMBERED_NAMES + 20)]
        for start in range(0, len(names), 50):
            request = make_request(get("/", *(f"{name}: {n}" for n, name in enumerate(names[start : start + 50]))))
            env = root.environ(request, ErrorStream("/"))
            assert all(env[f"HTTP_X_CLIENT_{n}"] == str(n - start) for n in range(start, min(start + 50, len(names))))
        assert len(grammar.HTTP_VARIABLES) <= grammar.MAX_REMEMBERED_NAMES

    def test_content_type_and_length(self, root: WSGIHandler) -> None:
        raw = get("/environ", "Content-Type: text/plain", "Content-Length: 5", method="POST") + b"hello"
        env = environ_of(root, raw)
        assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "5"
        assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env

    def test_chunked_has_no_content_length(self, root: WSGIHandler) -> None:
        raw = get("/environ", "Transfer-Encoding: chunked", method="POST") + b"3\r\nabc\r\n0\r\n\r\n"
        env = environ_of(root, raw)
        assert "CONTENT_LENGTH" not in env and env["wsgi.input_terminated"] is True

    @pytest.mark.parametrize(
        "host, name, port",
        [
            ("example.com:8080", "example.com", "8080"),
            ("Example.COM", "Example.COM", "80"),
            ("[::1]:9000", "[::1]", "9000"),
            ("[::1]", "[::1]", "80"),
            ("10.1.2.3:81", "10.1.2.3", "81"),
        ],
    )
    def test_server_name_and_port_from_host(self, root: WSGIHandler, host: str, name: str, port: str) -> None:
        raw = f"GET /environ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        env = environ_of(root, raw)
        assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (name, port)

    def test_server_name_from_bound_address_without_host(self, root: WSGIHandler) -> None:
        env = environ_of(root, get("/environ", version="HTTP/1.0"), server=("::1", 8443))
        assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("[::1]", "8443")
        assert env["SERVER_PROTOCOL"] == "HTTP/1.0"

    def test_https(self, root: WSGIHandler) -> None:
        env = environ_of(root, get("/environ"), scheme="https")
        assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"
        assert env["SERVER_PORT"] == "443"

    def test_unix_socket_client(self, root: WSGIHandler) -> None:
        env = environ_of(root, get("/environ"), client="", server="/run/porch.sock")
        assert env["REMOTE_ADDR"] == "unix" and "REMOTE_PORT" not in env
        assert env["SERVER_NAME"] == "example.com"


# -- wsgi.input ----------------------------------------------------------------------------------


BODY = b"".join(b"line %d of the body\n" % i for i in range(2000)) + b"no newline at the end"


def chunked(data: bytes, size: int = 777) -> bytes:
    return (
        b"".join(b"%x\r\n%b\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size))
        + b"0\r\n\r\n"
    )


class TestInput:
    @pytest.mark.parametrize(
        "mode, framing",
        [
            *(
                (mode, framing)
                for mode in ("all", "sized", "line", "line-hint", "lines", "iter")
                for framing in ("length", "chunked")
            ),
            ("length", "length"),
        ],
    )
    def test_read_patterns(self, raw_root: WSGIHandler, root: WSGIHandler, mode: str, framing: str) -> None:
        handler = raw_root if mode == "all" else root  # the validator forbids read() without size
        if framing == "length":
            raw = get(f"/read?mode={mode}&size=1000", f"Content-Length: {len(BODY)}", method="POST") + BODY
        else:
            raw = get(f"/read?mode={mode}&size=1000", "Transfer-Encoding: chunked", method="POST") + chunked(BODY)
        response, body = serve(handler, raw + b"GET /next HTTP/1.1\r\n\r\n")  # never read past the body
        assert response.status == 200, body
        assert json.loads(body)["sha256"] == hashlib.sha256(BODY).hexdigest()

    def test_100_continue_only_when_the_app_reads(self, root: WSGIHandler) -> None:
        calls: list[int] = []
        raw = get("/expect", "Expect: 100-continue", "Content-Length: 5", method="POST") + b"hello"
        _response, body = serve(root, raw, on_first_read=lambda: calls.append(1))
        assert body == b"read 0" and calls == []
        raw = get("/expect?read=1", "Expect: 100-continue", "Content-Length: 5", method="POST") + b"hello"
        _response, body = serve(root, raw, on_first_read=lambda: calls.append(1))
        assert body == b"read 5" and calls == [1]


# -- start_response ------------------------------------------------------------------------------


class TestStartResponseRules:
    @pytest.mark.parametrize(
        "status",
        [
            "200",
            "200OK",
            " 200 OK",
            "2000 OK",
            "20 OK",
            "200  \r\nX: y",
            "099 Low",
            "100 Continue",
            "600 High",
            "abc OK",
            b"200 OK",
            "200 \u20ac",
            "200 OK\x00",
        ],
    )
    def test_bad_status(self, status: object) -> None:
        with pytest.raises(ApplicationError):
            check_status(status)

    @pytest.mark.parametrize(
        "status, code, reason",
        [
            ("200 OK", 200, "OK"),
            ("404 Not Found", 404, "Not Found"),
            ("599 Whatever\tok", 599, "Whatever\tok"),
            ("204 ", 204, ""),
            ("200 Caf\u00e9", 200, "Caf\u00e9"),
        ],
    )
    def test_good_status(self, status: str, code: int, reason: str) -> None:
        assert check_status(status) == (code, reason)

    @pytest.mark.parametrize(
        "headers",
        [
            (("Content-Type", "text/plain"),),
            [["Content-Type", "text/plain"]],
            [("Content-Type",)],
            [("Content-Type", b"text/plain")],
            [("Bad Name", "x")],
            [("Bad:Name", "x")],
            [("", "x")],
            [("X-A", "a\r\nSet-Cookie: evil=1")],
            [("X-A", "a\nb")],
            [("X-A", "a\x00")],
            [("X-A", "\u20ac")],
            [("Connection", "close")],
            [("Transfer-Encoding", "chunked")],
            [("Keep-Alive", "5")],
            [("Upgrade", "h2c")],
            [("Proxy-Connection", "keep-alive")],
            [("Trailer", "X-Sum")],
            [("Proxy-Authenticate", "Basic")],
            [("Content-Length", "-1")],
            [("Content-Length", "1e3")],
            [("Content-Length", "5"), ("Content-Length", "6")],
            [("Content-Length", "\u0661")],
        ],
    )
    def test_bad_headers(self, headers: object) -> None:
        with pytest.raises(ApplicationError):
            check_headers(headers)

    def test_good_headers(self) -> None:
        assert (
            check_headers(
                [
                    ("Content-Type", "text/plain"),
                    ("X-Tab", "a\tb"),
                    ("X-Latin", "caf\u00e9"),
                    ("Content-Length", "5"),
                    ("content-length", "5"),
                ]
            )
            == 5
        )
        assert check_headers([]) is None

    def test_remembered_names_and_statuses_admit_nothing_new(self) -> None:
        """Statuses and names that passed are remembered (bounded); values are checked every time."""
        from porch.handlers import wsgi

        assert check_status("200 OK") == (200, "OK") == check_status("200 OK")
        for bad in ("200 OK\x00", "200 OK\r\nX: y"):
            with pytest.raises(ApplicationError):
                check_status(bad)
        assert check_headers([("Content-Type", "text/plain")]) is None
        with pytest.raises(ApplicationError):
            check_headers([("Content-Type", "text/plain\r\nSet-Cookie: a=1")])
        with pytest.raises(ApplicationError):
            check_headers([("Connection", "close")])  # never remembered, however often sent
        with pytest.raises(ApplicationError):
            check_headers([("Connection", "close")])
        for n in range(wsgi.MAX_REMEMBERED_NAMES + 10):
            check_headers([(f"X-Made-Up-{n}", "1")])
            check_status(f"299 Reason {n}")
        assert len(wsgi._VALID_NAMES) <= wsgi.MAX_REMEMBERED_NAMES
        assert len(wsgi._VALID_STATUSES) <= wsgi.MAX_REMEMBERED_NAMES
        with pytest.raises(ApplicationError):
            check_headers([("X-Made-Up-Bad Name", "1")])

    @pytest.mark.parametrize(
        "target",
        [
            "/status?status=200",
            "/status?status=600+Odd",
            "/header?name=Connection&value=close",
            "/header?name=X-A&value=a%0D%0AX-Injected:+1",
        ],
    )
    def test_bad_status_or_header_from_app_raises_before_headers(self, raw_root: WSGIHandler, target: str) -> None:
        with pytest.raises(ApplicationError):
            raw_root.handle(make_request(get(target)))

    def test_start_response_twice_without_exc_info(self) -> None:
        def app(environ: dict, start_response: Any) -> list[bytes]:
            start_response("200 OK", [])
            start_response("404 Not Found", [])
            return []

        handler = make_handler(RAW)
        handler.app = app
        with pytest.raises(ApplicationError, match="second time"):
            handler.handle(make_request(get("/")))

    def test_no_start_response(self) -> None:
        handler = make_handler(RAW)
        handler.app = lambda environ, start_response: iter([b"data"])
        with pytest.raises(ApplicationError, match="before start_response"):
            handler.handle(make_request(get("/")))
        handler.app = lambda environ, start_response: [b"data"]
        with pytest.raises(ApplicationError, match="without calling start_response"):
            handler.handle(make_request(get("/")))

    @pytest.mark.parametrize("result", [None, b"body", "body"])
    def test_result_must_be_an_iterable_of_bytes(self, result: object) -> None:
        def app(environ: dict, start_response: Any) -> Any:
            start_response("200 OK", [])
            return result

        handler = make_handler(RAW)
        handler.app = app
        with pytest.raises(ApplicationError, match="not an iterable of bytes"):
            handler.handle(make_request(get("/")))

    def test_str_body_chunk(self) -> None:
        def app(environ: dict, start_response: Any) -> Iterator[Any]:
            start_response("200 OK", [])
            yield "text"

        handler = make_handler(RAW)
        handler.app = app
        with pytest.raises(ApplicationError, match="yielded str"):
            handler.handle(make_request(get("/")))

    def test_reason_phrase_kept(self) -> None:
        response, _ = serve(make_handler(RAW), get("/status?status=299+Custom+Reason"))
        assert (response.status, response.reason) == (299, "Custom Reason")


# -- body assembly -------------------------------------------------------------------------------


class TestBody:
    def test_list_gets_content_length(self, raw_root: WSGIHandler) -> None:
        response, body = serve(raw_root, get("/list"))
        assert body == b"list" and response.headers.get("Content-Length") == "4"

    def test_head_gets_no_invented_length(self, raw_root: WSGIHandler) -> None:
        response, _body = serve(raw_root, get("/list", method="HEAD"))
        assert "Content-Length" not in response.headers

    def test_generator_streams_without_length(self, root: WSGIHandler) -> None:
        response, body = serve(root, get("/stream?count=3&size=4"))
        assert body == b"000011112222" and "Content-Length" not in response.headers

    def test_exhausted_generator_gets_length(self, root: WSGIHandler) -> None:
        _response, body = serve(root, get("/generator"))
        assert body == b"generated"

    def test_headers_fixed_only_at_first_non_empty_chunk(self, root: WSGIHandler) -> None:
        response, body = serve(root, get("/generator?fail=1"))
        assert (response.status, body) == (502, b"replaced")

    def test_write_ordering(self, root: WSGIHandler) -> None:
        _response, body = serve(root, get("/write"))
        assert body == b"one,two,three,four,five,six"

    @pytest.mark.parametrize("validated", [True, False])
    def test_big_write_spools_to_a_file(self, root: WSGIHandler, raw_root: WSGIHandler, validated: bool) -> None:
        size = 3 * 1024 * 1024 + 17
        response, body = serve(root if validated else raw_root, get(f"/big-write?size={size}"))
        assert len(body) == size and body[:512] == bytes(range(256)) * 2
        # an exhausted list: the length is known; the validator's iterator is not pulled
        assert response.headers.get("Content-Length") == (None if validated else str(size))

    def test_exc_info_before_headers_replaces_status(self, root: WSGIHandler) -> None:
        response, body = serve(root, get("/exc-before"))
        assert (response.status, body) == (503, b"handled by the app")

    def test_exc_info_after_headers_reraises(self, root: WSGIHandler) -> None:
        response = root.handle(make_request(get("/exc-after")))
        assert response.status == 200
        assert isinstance(response.body, AppBody)
        chunks = iter(response.body)
        assert next(chunks) == b"partial"
        with pytest.raises(ValueError, match="too late"):
            next(chunks)
        response.body.close()

    def test_app_error_before_headers_closes_iterable(
        self, root: WSGIHandler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("WSGITEST_MARKERS", str(tmp_path))
        with pytest.raises(RuntimeError, match="failed in the iterable"):
            root.handle(make_request(get("/raise-in-iter?marker=m1")))
        assert (tmp_path / "m1").read_text() == "closed"

    def test_close_called_when_the_body_is_abandoned(
        self, root: WSGIHandler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("WSGITEST_MARKERS", str(tmp_path))
        response = root.handle(make_request(get("/stream?count=100&marker=m2")))
        assert isinstance(response.body, AppBody)
        assert next(iter(response.body)) == b"0" * 10
        assert not (tmp_path / "m2").exists()
        response.body.close()
        assert (tmp_path / "m2").exists()

    def test_file_wrapper_real_file_is_a_file_region(self, raw_root: WSGIHandler, tmp_path: Path) -> None:
        data = os.urandom(100_000)
        (tmp_path / "f.bin").write_bytes(data)
        response, body = serve(raw_root, get(f"/file?path={tmp_path / 'f.bin'}&offset=1000"))
        assert isinstance(response.body, FileRegion)
        assert (response.body.offset, response.body.length) == (1000, 99_000)
        assert body == data[1000:]

    def test_file_wrapper_honours_content_length(self, raw_root: WSGIHandler, tmp_path: Path) -> None:
        (tmp_path / "f.bin").write_bytes(b"0123456789")
        response, body = serve(raw_root, get(f"/file?path={tmp_path / 'f.bin'}&offset=2&length=5"))
        assert isinstance(response.body, FileRegion) and body == b"23456"

    def test_file_wrapper_without_fileno_is_iterated(self, raw_root: WSGIHandler, tmp_path: Path) -> None:
        data = os.urandom(10_000)
        (tmp_path / "f.bin").write_bytes(data)
        response, body = serve(raw_root, get(f"/file?path={tmp_path / 'f.bin'}&buffer=1&offset=5"))
        assert isinstance(response.body, AppBody) and body == data[5:]

    def test_file_wrapper_through_middleware_is_iterated(self, root: WSGIHandler, tmp_path: Path) -> None:
        (tmp_path / "f.bin").write_bytes(b"abc" * 5000)
        response, body = serve(root, get(f"/file?path={tmp_path / 'f.bin'}"))
        assert isinstance(response.body, AppBody) and body == b"abc" * 5000

    def test_file_wrapper_text_mode_is_iterated(self, tmp_path: Path) -> None:
        (tmp_path / "t.txt").write_text("text")
        with open(tmp_path / "t.txt") as handle:
            assert FileWrapper(handle).region(None) is None  # type: ignore[arg-type]

    def test_app_exception_propagates(self, root: WSGIHandler) -> None:
        with pytest.raises(RuntimeError, match="on purpose"):
            root.handle(make_request(get("/raise")))
        assert serve(root, get("/list"))[1] == b"list"


class TestErrorStream:
    def test_lines_go_to_the_error_log(self, root: WSGIHandler, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.INFO, logger="porch.handlers.wsgi"):
            serve(root, get("/errors"))
        messages = [r.getMessage() for r in caplog.records if r.name == "porch.handlers.wsgi"]
        assert messages == [
            "/: first line from the app",
            "/: second line",
            "/: forged",
            "/: [fake] log line",
            "/: unterminated",
        ]

    def test_control_characters_escaped(self, caplog: pytest.LogCaptureFixture) -> None:
        stream = ErrorStream("/x")
        with caplog.at_level(logging.INFO, logger="porch.handlers.wsgi"):
            stream.write("a\x1b[31mred\rb\n")
        assert caplog.records[-1].getMessage() == "/x: a\\x1b[31mred\\x0db"

    def test_rejects_bytes(self) -> None:
        with pytest.raises(TypeError):
            ErrorStream("/").write(b"bytes")  # type: ignore[arg-type]
