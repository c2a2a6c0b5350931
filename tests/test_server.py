"""The core over real sockets, under both concurrency models: keep-alive, pipelining, framing,
errors, access rules, logs and request ids."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import CONCURRENCY_MODELS
from porchtest import PorchServer, wait_until

from porch.config.load import config_from_mapping
from porch.net.listener import bind_all
from porch.spine.logs import ACCESS_LOGGER, ERROR_LOGGER, PACKAGE_LOGGERS
from porch.workers.pool import ThreadPoolServer
from porch.workers.runtime import HANDLED_SIGNALS, build_server

TESTS_DIR = Path(__file__).parent
ECHO = "core_handlers:EchoHandler"


def echo_config(concurrency: str, **extra: object) -> dict:
    config = {
        "concurrency": concurrency,
        "threads": 4,
        "timeouts": {"header": 2, "keepalive": 2, "body": 5, "graceful": 5},
        "mounts": [
            {"path": "/", "type": ECHO},
            {"path": "/private", "type": ECHO, "access": {"allow": ["10.0.0.0/8"]}},
            {"path": "/small", "type": ECHO, "limits": {"body": 10}},
        ],
    }
    config.update(extra)
    return config


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    srv = PorchServer.start(
        echo_config(request.param), tmp_path_factory.mktemp(request.param), env={"PYTHONPATH": str(TESTS_DIR)}
    )
    yield srv
    srv.stop()


class NonClosingFile(io.BufferedReader):
    """A socket file that http.client may "close" after each response without losing the rest."""

    def close(self) -> None:
        pass


class ResponseReader:
    """Reads consecutive responses from one socket (http.client would buffer past each one)."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = NonClosingFile(socket.SocketIO(sock, "rb"))

    def makefile(self, mode: str) -> object:
        return self.file

    def next(self, method: str = "GET") -> http.client.HTTPResponse:
        response = http.client.HTTPResponse(self, method=method)  # type: ignore[arg-type]
        response.begin()
        return response


def logged_line(server: PorchServer, before: int, needle: str) -> str:
    """The access line containing ``needle`` written after the first ``before`` lines.

    Lines are written after each response, so another request's line may still arrive late."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [line for line in server.access_lines()[before:] if needle in line]
        if found:
            return found[-1]
        time.sleep(0.02)
    raise AssertionError(f"no access line with {needle!r}: {server.access_lines()[before:]}")


def status_of(raw: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    assert match, raw[:200]
    return int(match.group(1))


class TestKeepAlive:
    def test_connection_is_reused(self, server: PorchServer) -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
        ports = set()
        for n in range(5):
            conn.request("GET", f"/n{n}")
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["path"] == f"/n{n}"
            ports.add(conn.sock.getsockname()[1])
        assert len(ports) == 1
        conn.close()

    def test_pipelined_requests_are_answered_in_order(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(b"".join(f"GET /p{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in range(3)))
            reader = ResponseReader(sock)
            paths = [json.loads(reader.next().read())["path"] for _ in range(3)]
        assert paths == ["/p0", "/p1", "/p2"]

    def test_http10_closes_unless_asked(self, server: PorchServer) -> None:
        raw = server.raw(b"GET /old HTTP/1.0\r\n\r\n")
        assert raw.startswith(b"HTTP/1.0 200 ") or raw.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" in raw
        with server.connect() as sock:
            reader = ResponseReader(sock)
            sock.sendall(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            first = reader.next()
            assert first.getheader("Connection") == "keep-alive"
            first.read()
            sock.sendall(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert json.loads(reader.next().read())["path"] == "/b"

    def test_connection_close_is_honoured(self, server: PorchServer) -> None:
        raw = server.raw(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert raw.count(b"HTTP/1.1 200") == 1

    def test_idle_keepalive_connection_is_closed(self, server: PorchServer) -> None:
        with server.connect(timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            ResponseReader(sock).next().read()
            started = time.monotonic()
            assert sock.recv(10) == b""  # closed by the server after keepalive (2 s)
            assert 1.0 < time.monotonic() - started < 5.0


class TestFraming:
    def test_head_has_no_body(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            reader = ResponseReader(sock)
            head = reader.next("HEAD")
            assert int(head.getheader("Content-Length")) > 0
            assert head.read() == b""
            assert json.loads(reader.next().read())["path"] == "/after"

    def test_streamed_body_is_chunked_on_11(self, server: PorchServer) -> None:
        raw = server.raw(b"GET /?stream=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in raw
        assert raw.endswith(b"0\r\n\r\n")
        assert requests.get(server.url + "/?stream=3").text == "chunk 0\nchunk 1\nchunk 2\n"

    def test_streamed_body_on_10_is_close_delimited(self, server: PorchServer) -> None:
        raw = server.raw(b"GET /?stream=2 HTTP/1.0\r\n\r\n")
        assert b"Transfer-Encoding" not in raw and raw.endswith(b"chunk 0\nchunk 1\n")

    def test_body_is_truncated_to_declared_length(self, server: PorchServer) -> None:
        raw = server.raw(b"GET /?length=3&send=10 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.endswith(b"\r\n\r\nxxx")

    def test_short_body_closes_connection(self, server: PorchServer) -> None:
        raw = server.raw(b"GET /?length=10&send=3 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.count(b"HTTP/1.1") == 1 and raw.endswith(b"xxx")

    def test_chunked_request_body_with_trailers(self, server: PorchServer) -> None:
        raw = server.raw(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
        )
        document = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        assert document["body"] == "hello world"
        assert document["trailers"] == [["X-Trailer", "yes"]]

    def test_expect_100_continue(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"hello")
            assert json.loads(ResponseReader(sock).next().read())["body"] == "hello"

    def test_no_100_continue_when_handler_does_not_read(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(b"POST /?read=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            data = sock.recv(4096)
            assert data.startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in data

    def test_unread_body_is_drained_for_keepalive(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(
                b"POST /?read=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            reader = ResponseReader(sock)
            reader.next().read()
            assert json.loads(reader.next().read())["path"] == "/next"

    def test_date_and_server_headers(self, server: PorchServer) -> None:
        response = requests.get(server.url)
        assert response.headers["Server"].startswith("porch")
        assert response.headers["Date"].endswith("GMT")


class TestErrors:
    def test_handler_exception_is_500_and_server_goes_on(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/?crash=1")
        assert response.status_code == 500
        assert "Traceback" not in response.text and "asked to crash" not in response.text
        assert requests.get(server.url + "/fine").status_code == 200
        assert "asked to crash" in server.error_text() and "Traceback" in server.error_text()

    def test_invalid_response_header_is_500_not_injection(self, server: PorchServer) -> None:
        raw = server.raw(b"GET /?badheader=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(raw) == 500 and b"X-Injected" not in raw

    @pytest.mark.parametrize("method, status", [("BREW", 501), ("TRACE", 405), ("CONNECT", 405)])
    def test_unserved_methods(self, server: PorchServer, method: str, status: int) -> None:
        target = "x:443" if method == "CONNECT" else "/"
        raw = server.raw(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert status_of(raw) == status
        if status == 405:
            assert b"Allow: " in raw

    def test_malformed_request_gets_400_and_close(self, server: PorchServer) -> None:
        raw = server.raw(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(raw) == 400 and raw.count(b"HTTP/1.1 ") == 1
        assert requests.get(server.url).status_code == 200

    def test_body_limit_per_mount(self, server: PorchServer) -> None:
        assert requests.post(server.url + "/small", data=b"x" * 11).status_code == 413
        assert requests.post(server.url + "/small", data=b"x" * 10).status_code == 200

    def test_chunked_body_over_limit(self, server: PorchServer) -> None:
        raw = server.raw(
            b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
        )
        assert status_of(raw) == 413

    def test_slow_head_gets_408(self, server: PorchServer) -> None:
        with server.connect(timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n")
            started = time.monotonic()
            data = sock.recv(4096)
            assert status_of(data) == 408
            assert time.monotonic() - started < 5


class TestAccess:
    def test_denied_mount_is_403(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/private/x").status_code == 403
        assert requests.get(server.url + "/privateer").status_code == 200  # segment boundary

    def test_global_deny(self, porch) -> None:
        srv = porch(echo_config("threading", access={"deny": ["127.0.0.0/8"]}), env={"PYTHONPATH": str(TESTS_DIR)})
        assert requests.get(srv.url).status_code == 403


class TestLogs:
    def test_combined_access_line(self, server: PorchServer) -> None:
        before = len(server.access_lines())
        requests.get(server.url + "/logged?q=1", headers={"User-Agent": "tester/1", "Referer": "http://r/"})
        line = logged_line(server, before, "/logged?q=1")
        pattern = (
            r"^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "
            r'"GET /logged\?q=1 HTTP/1\.1" 200 \d+ "http://r/" "tester/1" \d+\.\d{6} [0-9a-f]{16}$'
        )
        assert re.match(pattern, line), line

    def test_control_characters_are_escaped(self, server: PorchServer) -> None:
        before = len(server.access_lines())
        requests.get(server.url + "/esc", headers={"User-Agent": 'evil" "forged\\'})
        line = logged_line(server, before, "/esc")
        assert '"evil\\" \\"forged\\\\"' in line

    def test_rejected_requests_are_logged(self, server: PorchServer) -> None:
        before = len(server.access_lines())
        server.raw(b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
        line = logged_line(server, before, "\\x01")
        assert '" 400 ' in line and "\\x01" in line

    def test_request_id_is_generated_and_logged(self, server: PorchServer) -> None:
        before = len(server.access_lines())
        document = requests.get(server.url + "/id", headers={"X-Request-ID": "forged"}).json()
        assert re.fullmatch(r"[0-9a-f]{16}", document["request_id"])  # not trusted
        assert logged_line(server, before, "GET /id ").endswith(document["request_id"])

    def test_trusted_proxy_request_id_and_json_log(self, porch) -> None:
        srv = porch(
            echo_config("threading", trusted_proxies=["127.0.0.1"], log={"access_format": "json"}),
            env={"PYTHONPATH": str(TESTS_DIR)},
        )
        document = requests.get(srv.url + "/j", headers={"X-Request-ID": "abc-123"}).json()
        assert document["request_id"] == "abc-123"
        entry = json.loads(srv.wait_access_lines(1)[-1])
        assert entry["request_id"] == "abc-123" and entry["status"] == 200 and entry["path"] == "/j"

    def test_error_log_lines_carry_the_request_id(self, server: PorchServer) -> None:
        before = len(server.access_lines())
        requests.get(server.url + "/?crash=2")
        request_id = logged_line(server, before, "crash=2").rsplit(" ", 1)[1]
        lines = [line for line in server.error_text().splitlines() if "crash=2" in line]
        assert lines and all(f"[{request_id}]" in line for line in lines)


def test_discard_body_decides_whether_an_unread_body_keeps_the_connection(porch, concurrency: str) -> None:
    """``limits.discard_body: 1024``: of a 512-byte body the handler leaves unread, no more than
    that is still to come, so it is read and discarded and the connection serves the next
    request; of a 4 KiB one more is, so the response says Connection: close."""
    limits = {"discard_body": 1024, "buffered_body": 0}  # no body is received before the handler runs
    srv = porch(echo_config(concurrency, limits=limits), env={"PYTHONPATH": str(TESTS_DIR)})
    for size, kept in ((512, True), (4096, False)):
        with srv.connect() as sock:
            sock.sendall(b"POST /?read=0 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            reader = ResponseReader(sock)
            first = reader.next()
            first.read()
            assert (first.getheader("Connection") != "close") == kept, size
            sock.sendall(b"x" * size + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            if kept:
                assert json.loads(reader.next().read())["path"] == "/next"


@pytest.mark.parametrize("linger", [0, 1])
def test_linger_is_how_long_a_closing_connection_reads_on(porch, concurrency: str, linger: int) -> None:
    """A body left unread closes the connection after the response (``limits.discard_body: 0``).
    With ``timeouts.linger: 1`` porch shuts its side, then reads and discards what the client
    still sends for a second before it closes; with 0 it closes at once, and the client's next
    bytes meet a reset."""
    config = echo_config(concurrency, limits={"discard_body": 0, "buffered_body": 0})
    config["timeouts"] = {**config["timeouts"], "linger": linger}
    srv = porch(config, env={"PYTHONPATH": str(TESTS_DIR)})
    with srv.connect() as sock:
        sock.sendall(b"POST /?read=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # to porch's end of file: it sends nothing more
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in answer
        started = time.monotonic()
        with pytest.raises(OSError):  # ECONNRESET or EPIPE once porch's socket is closed
            while time.monotonic() - started < 5:
                sock.sendall(b"x" * 1000)
                time.sleep(0.02)
        took = time.monotonic() - started
    assert took < 0.5 if linger == 0 else 0.9 < took < 1.7, took  # the default would be 2 s


def test_slow_clients_do_not_hold_threads(porch) -> None:
    """100 clients trickling a head byte by byte must not delay a normal request (threads: 4)."""
    srv = porch(echo_config("threading", timeouts={"header": 30, "keepalive": 30}), env={"PYTHONPATH": str(TESTS_DIR)})
    with connections_sending(srv, 100, b"G") as slow:
        for _ in range(2):
            for sock in slow:
                sock.sendall(b"E")
            time.sleep(0.5)
            started = time.monotonic()
            assert requests.get(srv.url + "/fast", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0


@contextlib.contextmanager
def connections_sending(srv: PorchServer, count: int, data: bytes) -> Iterator[list[socket.socket]]:
    """``count`` connections that sent ``data`` and then nothing more; closed afterwards."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = srv.connect()
            sock.sendall(data)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def timed_gets(urls: list[str]) -> list[float]:
    """GET every URL at once, each on its own connection; the seconds each took to answer."""
    import concurrent.futures

    def timed(url: str) -> float:
        started = time.monotonic()
        assert requests.get(url, timeout=10).status_code == 200
        return time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(timed, urls))


def test_blocked_work_lets_other_threads_in(porch) -> None:
    """One thread at a time takes work, but a request that blocks lets the next thread in: four
    requests sleeping 1 s on threads: 4 overlap, and a fast request is not queued behind them."""
    srv = porch(echo_config("threading"), env={"PYTHONPATH": str(TESTS_DIR)})
    fast: list[float] = []

    def fast_request() -> None:
        time.sleep(0.3)
        fast.extend(timed_gets([srv.url + "/fast"]))

    import threading

    thread = threading.Thread(target=fast_request)
    thread.start()
    slow = timed_gets([srv.url + "/?sleep=1"] * 3)
    thread.join()
    assert max(slow) < 2.0, slow  # one after another would take 3 s
    assert fast[0] < 0.7, fast


def test_clients_that_stop_reading_do_not_stop_the_others(porch, tmp_path: Path) -> None:
    """Three clients fetch 20 MiB each and read nothing: their threads wait for the window to
    open, and the fourth thread still answers everyone else at once."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "big.bin").write_bytes(b"\0" * (20 << 20))
    (root / "small.txt").write_text("small")
    srv = porch({"threads": 4, "timeouts": {"body": 5}, "mounts": [{"path": "/", "type": "static", "root": str(root)}]})
    with connections_sending(srv, 3, b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"):
        time.sleep(0.3)
        for _ in range(20):
            started = time.monotonic()
            assert requests.get(srv.url + "/small.txt", timeout=5).text == "small"
            assert time.monotonic() - started < 0.5


def test_a_burst_of_new_connections_is_let_in_at_once(porch) -> None:
    """16 clients connect together and each sends three slow requests on its connection; all
    are accepted promptly rather than one per round of the busy threads, so every first
    request is answered within the time four threads need for sixteen of them."""
    import concurrent.futures

    srv = porch(echo_config("threading"), env={"PYTHONPATH": str(TESTS_DIR)})

    def client(_: int) -> float:
        with requests.Session() as session:
            started = time.monotonic()
            assert session.get(srv.url + "/?sleep=0.2", timeout=30).status_code == 200
            first = time.monotonic() - started
            for _ in range(2):
                assert session.get(srv.url + "/?sleep=0.2", timeout=30).status_code == 200
            return first

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        firsts = list(pool.map(client, range(16)))
    assert max(firsts) < 1.5, sorted(firsts)  # 16 x 0.2 s on 4 threads: 0.8 s


def test_thread_pool_is_bounded(porch) -> None:
    """threads: 4 means at most four requests in progress: a fifth sleeper waits for a thread."""
    srv = porch(echo_config("threading"), env={"PYTHONPATH": str(TESTS_DIR)})
    took = sorted(timed_gets([srv.url + "/?sleep=1"] * 5))
    assert max(took[:4]) < 1.8, took
    assert took[4] >= 1.9, took


def test_term_lets_in_flight_request_finish(porch) -> None:
    import signal
    import threading

    srv = porch(echo_config("threading"), env={"PYTHONPATH": str(TESTS_DIR)})
    result: dict[str, object] = {}

    def slow_request() -> None:
        result["response"] = requests.get(srv.url + "/?sleep=1", timeout=10)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.3)
    srv.signal(signal.SIGTERM)
    thread.join()
    assert result["response"].status_code == 200  # type: ignore[attr-defined]
    assert srv.proc.wait(10) == 0


def test_virtual_hosts_route_by_host_header(porch, tmp_path: Path) -> None:
    sites = {}
    for name in ("a.example", "b.example", "default"):
        root = tmp_path / name
        root.mkdir()
        (root / "index.html").write_text(f"site {name}")
        sites[name] = str(root)
    srv = porch(
        {
            "mounts": [
                {"path": "/", "type": "static", "root": sites["a.example"], "host": "a.example"},
                {"path": "/", "type": "static", "root": sites["b.example"], "host": "b.example"},
                {"path": "/", "type": "static", "root": sites["default"]},
            ]
        }
    )
    assert requests.get(srv.url, headers={"Host": "a.example"}).text == "site a.example"
    assert requests.get(srv.url, headers={"Host": "B.Example:8080"}).text == "site b.example"
    assert requests.get(srv.url, headers={"Host": "c.example"}).text == "site default"
    raw = srv.raw(b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n")
    assert raw.endswith(b"site a.example")  # RFC 9112 3.2.2: the absolute-form target wins


def test_request_ids_are_unique_across_connections(server: PorchServer) -> None:
    """Forked children and threads alike must never hand out the same id twice."""
    ids = [requests.get(server.url + "/unique").json()["request_id"] for _ in range(30)]
    assert len(set(ids)) == 30


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """An in-process server configures porch's loggers (handlers, no propagation); undo it after."""
    loggers = [logging.getLogger(name) for name in (ACCESS_LOGGER, ERROR_LOGGER, *PACKAGE_LOGGERS)]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)


def test_accepted_tcp_connections_have_nagle_off(tmp_path: Path, logging_restored: None) -> None:
    """TCP_NODELAY is set once on the listening socket and Linux copies it to what accept()
    returns; a kernel that did not would make every small response wait for an ACK."""
    config = config_from_mapping(
        {"listen": ["127.0.0.1:0"], "threads": 2, "mounts": [{"path": "/", "type": "status"}]},
        source="<test>",
        base_dir=tmp_path,
    )
    saved = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    runtime = build_server(config, bind_all(config.listen))  # it takes the worker's signals: given back below
    server = runtime.server
    assert isinstance(server, ThreadPoolServer)
    acceptor = threading.Thread(target=server.serve_forever, daemon=True)
    acceptor.start()
    try:
        with socket.create_connection(runtime.listeners[0].sock.getsockname()[:2], timeout=5) as client:
            client.sendall(b"GET / HTTP/1.1\r\n")  # an unfinished head: the connection waits, parked
            parked = wait_until(lambda: list(server.parking.parked.values()), "the connection to be parked")
            assert parked[0].sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        server.shutdown()
        runtime.close()
        for signum, handler in saved.items():
            signal.signal(signum, handler)
