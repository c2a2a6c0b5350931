"""Connections at the edges: a worker out of file descriptors, request bodies the handler leaves
unread, forked children kept for complete requests only -- each against a real server process."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import CONCURRENCY_MODELS
from porchtest import PorchServer, wait_until

TESTS_DIR = Path(__file__).parent
ECHO = "core_handlers:EchoHandler"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def echo_server(porch, concurrency: str, **extra: object) -> PorchServer:
    config: dict[str, object] = {
        "concurrency": concurrency,
        "threads": 2,
        "timeouts": {"header": 30, "keepalive": 30, "body": 5},
        "mounts": [{"path": "/", "type": ECHO}],
    }
    config.update(extra)
    return porch(config, env={"PYTHONPATH": str(TESTS_DIR)})


def worker_pid(server: PorchServer) -> int:
    """The one worker process of ``server`` (a child of the master)."""
    master = server.proc.pid

    def found() -> int | None:
        for task in Path(f"/proc/{master}/task").iterdir():  # children are listed per thread
            with contextlib.suppress(FileNotFoundError):
                if children := (task / "children").read_text().split():
                    return int(children[0])
        return None

    return wait_until(found, "the worker process")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (proc(5): fields 14 and 15 of stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextlib.contextmanager
def held_connections(server: PorchServer, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing; closed afterwards."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(server.connect())
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("concurrency", CONCURRENCY_MODELS)
def test_out_of_descriptors_rests_the_listener_instead_of_spinning(porch, concurrency: str) -> None:
    """A worker whose descriptors are all taken stops accepting for a moment at a time (one log
    line each time) instead of retrying accept() in a busy loop, keeps serving, and accepts
    again by itself once descriptors are free."""
    server = echo_server(porch, concurrency)
    pid = worker_pid(server)
    kept = http.client.HTTPConnection(server.host, server.port, timeout=5)  # connected before
    kept.request("GET", "/warm")
    assert kept.getresponse().read()
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 8, hard))
    with held_connections(server, 40):
        wait_until(lambda: "Too many open files" in server.error_text(), "accept() to run out of descriptors")
        logged = server.error_text().count("accept failed")
        cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
        time.sleep(3)
        cpu = cpu_seconds(pid) - cpu_before
        wall = time.monotonic() - wall_before
        assert cpu < 0.25 * wall, f"{cpu:.2f}s of CPU in {wall:.2f}s"
        assert server.error_text().count("accept failed") - logged <= 10
        kept.request("GET", "/meanwhile")
        assert kept.getresponse().status == 200
    kept.close()
    assert requests.get(server.url + "/after", timeout=10).status_code == 200


@contextlib.contextmanager
def sending(sock: socket.socket, data: bytes) -> Iterator[None]:
    """Send ``data`` from another thread (the server may read it slowly, or never); joined after.

    A send the server cuts short (it closed, having answered) is fine: what matters is what the
    client reads."""

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(10)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; ConnectionResetError if it resets instead."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def split_responses(data: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each Content-Length response in ``data``."""
    responses = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])  # type: ignore[index]
        responses.append((head, rest[:length]))
        data = rest[length:]
    return responses


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def echo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    """One echo server per concurrency model for the tests below that need nothing special."""
    config = {
        "concurrency": request.param,
        "threads": 4,
        "timeouts": {"header": 5, "keepalive": 5, "body": 5},
        "mounts": [{"path": "/", "type": ECHO}],
    }
    server = PorchServer.start(config, tmp_path_factory.mktemp(request.param), env={"PYTHONPATH": str(TESTS_DIR)})
    yield server
    server.stop()


PIPELINED = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


def test_a_large_unread_body_closes_after_the_response_without_a_reset(echo: PorchServer) -> None:
    """RFC 9112 9.6: the server that will not read the rest of a body says Connection: close,
    then closes gently (its side first, then reading and discarding for a while), so that the
    client reads the whole response rather than a reset."""
    body = b"x" * (4 << 20)
    request = b"POST /?read=0 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with echo.connect(timeout=10) as sock, sending(sock, request + PIPELINED):
        [(head, document)] = split_responses(read_to_end(sock))
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close" in head
    assert json.loads(document)["body"] == ""


def test_a_large_unread_chunked_body_closes_after_the_response_without_a_reset(echo: PorchServer) -> None:
    chunks = b"".join(b"%x\r\n%s\r\n" % (16384, b"y" * 16384) for _ in range(256)) + b"0\r\n\r\n"
    request = b"POST /?read=0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    with echo.connect(timeout=10) as sock, sending(sock, request + PIPELINED):
        [(head, _)] = split_responses(read_to_end(sock))
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close" in head


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_small_unread_body_keeps_the_connection(echo: PorchServer, framing: str) -> None:
    """An unread body within the drain limit is read and discarded: the request pipelined
    behind it is answered on the same connection."""
    body = b"z" * 30000
    if framing == "chunked":
        request = b"POST /?read=0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        request += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        request = b"POST /?read=0 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with echo.connect() as sock:
        sock.sendall(request + PIPELINED + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        responses = split_responses(read_to_end(sock))
    assert [json.loads(document)["path"] for _, document in responses] == ["/", "/next", "/last"]
    assert b"Connection: close" not in responses[0][0]


def test_forking_reads_heads_before_it_forks(porch) -> None:
    """A child is forked for a complete request head only: clients stalled halfway through
    their heads cost the worker a descriptor each, not one of its ``max_children``."""
    server = echo_server(porch, "forking", max_children=2, timeouts={"header": 10, "keepalive": 10, "body": 5})
    with held_connections(server, 4) as stalled:
        for sock in stalled:
            sock.sendall(b"GET /stalled HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        for _ in range(3):
            started = time.monotonic()
            assert requests.get(server.url + "/fast", timeout=10).status_code == 200
            assert time.monotonic() - started < 2.0
