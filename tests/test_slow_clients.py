"""Slow clients cost a descriptor, not a thread (or a forked child): uploads that trickle and
downloads nobody reads, against a real server, under both concurrency models where they apply."""

from __future__ import annotations

import contextlib
import http.client
import io
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
ECHO = "core_handlers:EchoHandler"
WINDOW = 2.0  # timeouts.body: the minimum rate is judged over each such window of waiting
MIN_RATE = 100  # bytes a second; the slow clients below send one


def slow_server(porch, tmp_path: Path, concurrency: str) -> PorchServer:
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
            ],
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
