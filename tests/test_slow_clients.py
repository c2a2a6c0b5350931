"""Slow clients cost a descriptor, not a thread (or a forked child): uploads that trickle and
downloads nobody reads, against a real server, under both concurrency models where they apply."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from certs import make_pki
from porchtest import PorchServer

TESTS_DIR = Path(__file__).parent
APPS_DIR = TESTS_DIR / "wsgi_apps"
ECHO = "core_handlers:EchoHandler"
WINDOW = 2.0  # timeouts.body: the minimum rate is judged over each such window of waiting
MIN_RATE = 100  # bytes a second; the slow clients below send one


def slow_server(porch, tmp_path: Path, concurrency: str, **extra: object) -> PorchServer:
    root = tmp_path / "www"
    root.mkdir()
    (root / "big.bin").write_bytes(b"\0" * (16 << 20))
    (root / "small.txt").write_text("small")
    return porch(
        {
            "concurrency": concurrency,
            "threads": 2,
            "max_children": 2,
            "timeouts": {"header": 10, "keepalive": 10, "body": WINDOW, "body_min_rate": MIN_RATE},
            "mounts": [
                {"path": "/", "type": ECHO},
                {"path": "/files", "type": "static", "root": str(root)},
                {"path": "/app", "type": "wsgi", "app": "wsgitest_core:application", "pythonpath": [str(APPS_DIR)]},
            ],
            **extra,
        },
        env={"PYTHONPATH": str(TESTS_DIR)},
    )


class SlowUpload(threading.Thread):
    """A client that sends ``head`` and then one byte of body a second, until it is answered;
    ``answer`` is the response (read to the end), ``took`` the seconds it took."""

    def __init__(self, server: PorchServer, head: bytes, byte: bytes = b"x") -> None:
        super().__init__(daemon=True)
        self.sock = server.connect(timeout=10)
        self.head, self.byte = head, byte
        self.answer = b""
        self.took = 0.0

    def run(self) -> None:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            self.sock.sendall(self.head)
            while not select.select([self.sock], [], [], 1.0)[0]:
                self.sock.sendall(self.byte)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(65536):
                chunks.append(chunk)
        self.answer, self.took = b"".join(chunks), time.monotonic() - started
        self.sock.close()


@contextlib.contextmanager
def slow_uploads(server: PorchServer, count: int, head: bytes, byte: bytes = b"x") -> Iterator[list[SlowUpload]]:
    uploads = [SlowUpload(server, head, byte) for _ in range(count)]
    for upload in uploads:
        upload.start()
    try:
        yield uploads
    finally:
        for upload in uploads:
            upload.join(15)


@contextlib.contextmanager
def stalled_downloads(server: PorchServer, count: int, target: str) -> Iterator[None]:
    """``count`` clients that ask for ``target`` and never read the answer."""
    socks = []
    try:
        for _ in range(count):
            sock = server.connect()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append(sock)
        yield
    finally:
        for sock in socks:
            sock.close()


def assert_answers_at_once(server: PorchServer) -> None:
    for _ in range(5):
        started = time.monotonic()
        assert requests.get(server.url + "/files/small.txt", timeout=5).text == "small"
        assert requests.post(server.url + "/echo", data=b"payload", timeout=5).json()["body"] == "payload"
        assert time.monotonic() - started < 1.0, "a normal request waited"


def test_slow_uploads_and_stalled_downloads_hold_no_thread(porch, tmp_path: Path) -> None:
    """threads: 2, and four uploads at one byte a second plus four 16 MiB downloads nobody reads:
    the bodies are received by the event loop, the responses finished by it, so a normal request
    is answered at once; the uploads fall below the minimum rate and get 408 at the window's end."""
    server = slow_server(porch, tmp_path, "threading")
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    with slow_uploads(server, 4, head) as uploads, stalled_downloads(server, 4, "/files/big.bin"):
        time.sleep(0.3)
        assert_answers_at_once(server)
    for upload in uploads:
        assert upload.answer.startswith(b"HTTP/1.1 408 "), upload.answer[:100]
        assert upload.took < WINDOW + 2, upload.took


def test_forking_receives_small_bodies_before_it_forks(porch, tmp_path: Path) -> None:
    """max_children: 2 and four uploads at one byte a second: no child is spent on them."""
    server = slow_server(porch, tmp_path, "forking")
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    with slow_uploads(server, 4, head) as uploads:
        time.sleep(0.3)
        assert_answers_at_once(server)
    assert all(upload.answer.startswith(b"HTTP/1.1 408 ") for upload in uploads)


class TricklingClient(threading.Thread):
    """A client that asks for ``target``, reads the answer, then sends its next head one byte a
    second for ``trickled`` bytes before the rest; ``second`` is the second response's status."""

    def __init__(self, server: PorchServer, target: str, trickled: int = 3) -> None:
        super().__init__(daemon=True)
        self.sock = server.connect(timeout=10)
        self.head = f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        self.trickled = trickled
        self.first_answered = threading.Event()
        self.second: int | None = None

    def run(self) -> None:
        with self.sock, contextlib.suppress(OSError, http.client.HTTPException):
            responses = Responses(self.sock)
            self.sock.sendall(self.head)
            responses.next().read()
            self.first_answered.set()
            for byte in self.head[: self.trickled]:
                time.sleep(1.0)
                self.sock.sendall(bytes([byte]))
            self.sock.sendall(self.head[self.trickled :])
            answer = responses.next()
            answer.read()
            self.second = answer.status


def test_forking_hands_idle_connections_back_between_requests(porch, tmp_path: Path) -> None:
    """max_children: 2, and two kept-alive clients that trickle their second head one byte a
    second: between requests their connections wait in the acceptor, not in a child, so a third
    client is answered at once and the trickling ones still get their second answer."""
    server = slow_server(porch, tmp_path, "forking")
    clients = [TricklingClient(server, "/files/small.txt") for _ in range(2)]
    for client in clients:
        client.start()
    try:
        for client in clients:
            assert client.first_answered.wait(5), "the first answer"
        time.sleep(1.5)  # both are trickling now
        started = time.monotonic()
        assert requests.get(server.url + "/files/small.txt", timeout=5).text == "small"
        assert time.monotonic() - started < 1.0, "the third client waited for a child"
    finally:
        for client in clients:
            client.join(15)
    assert [client.second for client in clients] == [200, 200]


@pytest.mark.parametrize("concurrency", ["threading", "forking"])
def test_a_slow_streamed_upload_is_cut_by_the_minimum_rate(porch, tmp_path: Path, concurrency: str) -> None:
    """A chunked body is read as the handler asks, in its thread: one byte a second never trips
    the per-read timeout, but falls below the minimum rate within the window (408)."""
    server = slow_server(porch, tmp_path, concurrency)
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with slow_uploads(server, 1, head, b"1\r\nx\r\n") as [upload]:
        pass
    assert upload.answer.startswith(b"HTTP/1.1 408 "), upload.answer[:100]
    assert upload.took < WINDOW + 2, upload.took


PATTERN = bytes(range(256)) * 4096  # 1 MiB that shows any byte out of place


@pytest.mark.parametrize("concurrency", ["threading", "forking"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_responses_finished_later_arrive_whole_and_in_order(
    porch, tmp_path: Path, concurrency: str, scheme: str
) -> None:
    """A client that reads late gets a file, a streamed body and a small answer pipelined behind
    them, whole and in order, whoever finished sending them."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "big.bin").write_bytes(PATTERN * 6)
    listen: dict[str, object] = {"address": "127.0.0.1:0"}
    context = None
    if scheme == "https":
        pki = make_pki(tmp_path / "pki")
        listen["tls"] = {"cert": str(pki.server_cert), "key": str(pki.server_key)}
        context = ssl.create_default_context(cafile=str(pki.server_cert))
    server = porch(
        {
            "listen": [listen],
            "concurrency": concurrency,
            "threads": 2,
            "mounts": [{"path": "/", "type": ECHO}, {"path": "/files", "type": "static", "root": str(root)}],
        },
        env={"PYTHONPATH": str(TESTS_DIR)},
    )
    sock: socket.socket = server.connect(timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="localhost")
    with sock:
        sock.sendall(
            b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /?stream=30000 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        time.sleep(0.5)  # the server meets a full socket: the rest is left to the driver
        responses = Responses(sock)
        assert responses.next().read() == PATTERN * 6
        assert responses.next().read() == b"".join(b"chunk %d\n" % n for n in range(30000))
        assert b'"path": "/last"' in responses.next().read()


class Responses(io.BufferedReader):
    """Consecutive responses on one socket: http.client closes its file after each one, and
    this file does not close."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(socket.SocketIO(sock, "rb"))

    def close(self) -> None:
        pass

    def makefile(self, mode: str) -> Responses:
        return self

    def next(self) -> http.client.HTTPResponse:
        response = http.client.HTTPResponse(self, method="GET")  # type: ignore[arg-type]
        response.begin()
        return response


@pytest.mark.parametrize("concurrency", ["threading", "forking"])
def test_a_body_over_the_mounts_limit_is_refused_before_it_is_received(porch, tmp_path: Path, concurrency: str) -> None:
    """The mount's own body limit decides whether a body is received ahead, so a 500 kB upload
    to a mount taking 1 kB is refused at its head, not after its bytes have all arrived."""
    (tmp_path / "www").mkdir()
    server = porch(
        {
            "concurrency": concurrency,
            "timeouts": {"body": 30},
            "mounts": [
                {"path": "/", "type": "static", "root": str(tmp_path / "www")},
                {"path": "/small", "type": "static", "root": str(tmp_path / "www"), "limits": {"body": 1000}},
            ],
        }
    )
    with socket.create_connection((server.host, server.port), timeout=5) as client:
        client.sendall(b"POST /small/x HTTP/1.1\r\nHost: t\r\nContent-Length: 500000\r\n\r\n" + b"x" * 100)
        answer = client.recv(4096)  # within the 5 s timeout: nobody waits for the other 499,900 bytes
    assert answer.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(("buffer", "waits"), [(0, True), (32 << 20, False)])
def test_the_response_buffer_decides_whether_a_streaming_thread_waits(
    porch, tmp_path: Path, buffer: int, waits: bool
) -> None:
    """threads: 1, and a client that never reads a 16 MiB stream: with ``limits.response_buffer:
    0`` the one thread waits for that client, and another request waits until the stream is cut
    off; with a buffer larger than the stream the event loop takes all of it, the thread is free."""
    server = slow_server(porch, tmp_path, "threading", threads=1, limits={"response_buffer": buffer})
    with stalled_downloads(server, 1, STREAM):
        time.sleep(0.5)
        started = time.monotonic()
        assert requests.get(server.url + "/files/small.txt", timeout=10).text == "small"
        took = time.monotonic() - started
    assert (took > 0.8) == waits, took


# -- the access line of a response a slow client takes: written at its end, with what was sent --

BIG = 16 << 20  # the size of big.bin, and of the body STREAM sends
STREAM = f"/app/stream?count=256&size={BIG // 256}"  # a WSGI app's body, chunked


def slow_reader(server: PorchServer, target: str) -> socket.socket:
    """A client with a small receive window that has asked for ``target``, and to close after it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return sock


def read_slowly(sock: socket.socket, limit: int | None = None) -> bytes:
    """``limit`` bytes (without one, all to the end), at most 32 KiB a read and 2 ms apart: some
    16 MB a second at most, far less than the server can send."""
    data = bytearray()
    deadline = time.monotonic() + 30
    while limit is None or len(data) < limit:
        assert time.monotonic() < deadline, "the response took too long"
        chunk = sock.recv(32768 if limit is None else min(32768, limit - len(data)))
        if not chunk:
            break
        data += chunk
        time.sleep(0.002)
    return bytes(data)


def body_of(response: bytes) -> bytes:
    """The body data of a response as far as it came (a chunked one decoded, cut off anywhere)."""
    head, _, wire = response.partition(b"\r\n\r\n")
    if b"\r\nTransfer-Encoding: chunked\r\n" not in head + b"\r\n":
        return wire
    data, at = bytearray(), 0
    while (end := wire.find(b"\r\n", at)) >= 0 and (size := int(wire[at:end], 16)):
        data += wire[end + 2 : end + 2 + size]
        at = end + 2 + size + 2
    return bytes(data)


def logged_bytes(server: PorchServer) -> int:
    """The body bytes of the one access line (json), once it is written."""
    [line] = server.wait_access_lines(1, timeout=10)
    return int(json.loads(line)["bytes"])


@pytest.mark.parametrize("concurrency", ["threading", "forking"])
def test_a_file_read_slowly_is_logged_once_all_of_it_is_sent(porch, tmp_path: Path, concurrency: str) -> None:
    """16 MiB of file to a slow reader are left to the event loop once the socket is full; the
    access line waits for the last byte -- half-way through there is none -- and counts them all."""
    server = slow_server(porch, tmp_path, concurrency, log={"access_format": "json"})
    with slow_reader(server, "/files/big.bin") as sock:
        response = read_slowly(sock, BIG // 2)
        assert server.access_lines() == [], "logged with half the file still to send"
        response += read_slowly(sock)
    assert len(body_of(response)) == BIG
    assert logged_bytes(server) == BIG


@pytest.mark.parametrize("concurrency", ["threading", "forking"])
def test_a_wsgi_response_read_slowly_counts_its_body_not_its_framing(porch, tmp_path: Path, concurrency: str) -> None:
    """16 MiB streamed by a WSGI app to a slow reader: its thread waits while more than the
    response buffer waits unsent, and leaves the rest to the event loop; the line counts the
    body data, not the chunked framing around it."""
    server = slow_server(porch, tmp_path, concurrency, log={"access_format": "json"})
    with slow_reader(server, STREAM) as sock:
        response = read_slowly(sock)
    assert len(body_of(response)) == BIG
    assert logged_bytes(server) == BIG


@pytest.mark.parametrize("concurrency", ["threading", "forking"])
@pytest.mark.parametrize("target", ["/files/big.bin", STREAM], ids=["file", "wsgi"])
def test_a_response_the_client_stops_reading_counts_what_was_sent(
    porch, tmp_path: Path, concurrency: str, target: str
) -> None:
    """A client reads 1 MiB and stops: after ``timeouts.body`` the response is cut off -- by the
    event loop (the file) or in its thread (the stream) -- and its line counts what the kernel
    took, which the client, reading on, gets exactly before the end of file."""
    server = slow_server(porch, tmp_path, concurrency, log={"access_format": "json"})
    with slow_reader(server, target) as sock:
        response = read_slowly(sock, 1 << 20)
        sent = logged_bytes(server)
        response += read_slowly(sock)
    assert len(body_of(response)) == sent < BIG


@pytest.mark.parametrize("concurrency", ["threading", "forking"])
@pytest.mark.parametrize("target", ["/files/big.bin", STREAM], ids=["file", "wsgi"])
def test_a_response_to_a_client_gone_counts_what_was_sent(porch, tmp_path: Path, concurrency: str, target: str) -> None:
    """A client reads 1 MiB and closes: the response is cut off at the next send, and its line
    counts what the kernel took -- at least what the client read, not the whole."""
    server = slow_server(porch, tmp_path, concurrency, log={"access_format": "json"})
    with slow_reader(server, target) as sock:
        read = len(body_of(read_slowly(sock, 1 << 20)))
    assert read <= logged_bytes(server) < BIG
