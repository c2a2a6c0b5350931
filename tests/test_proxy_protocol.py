"""The PROXY protocol over real sockets, under both concurrency models: version 1 and 2 headers
sent by hand (whole, byte by byte, truncated, garbage, from an untrusted peer, missing), TLS
behind a PROXY header, and HAProxy itself in front with ``send-proxy-v2``."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from certs import make_pki
from conftest import CONCURRENCY_MODELS, need_program
from porchtest import PorchServer, free_port, wait_until

from porch.net.proxy_protocol import ProxyHeader, ProxyProtocolError, parse

APPS_DIR = Path(__file__).resolve().parent / "wsgi_apps"
HEADER_TIMEOUT = 1.5
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
UNTRUSTED = "127.0.0.2"  # on loopback, not in trusted_proxies


def v1(source: str, port: int = 5555, destination: str = "127.0.0.1", dport: int = 80, family: str = "TCP4") -> bytes:
    return f"PROXY {family} {source} {destination} {port} {dport}\r\n".encode()


def v2(source: str, port: int = 5555, tlvs: bytes = b"", *, local: bool = False, six: bool = False) -> bytes:
    """A version 2 header: PROXY (or LOCAL) over TCP4 or TCP6, then ``tlvs``."""
    if local:
        return SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    family = socket.AF_INET6 if six else socket.AF_INET
    destination = "::1" if six else "127.0.0.1"
    addresses = socket.inet_pton(family, source) + socket.inet_pton(family, destination) + struct.pack("!HH", port, 80)
    block = addresses + tlvs
    return SIGNATURE + bytes([0x21, 0x21 if six else 0x11]) + struct.pack("!H", len(block)) + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def request(path: str = "/environ", keep_alive: bool = False) -> bytes:
    connection = "" if keep_alive else "Connection: close\r\n"
    return f"GET {path} HTTP/1.1\r\nHost: example.test\r\n{connection}\r\n".encode()


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    config = {
        "concurrency": request.param,
        "threads": 4,
        "listen": [{"address": "127.0.0.1:0", "proxy_protocol": True}],
        "trusted_proxies": ["127.0.0.1"],
        "timeouts": {"header": HEADER_TIMEOUT, "keepalive": 5, "body": 5, "graceful": 5},
        "mounts": [{"path": "/", "type": "wsgi", "app": "wsgitest_core:application", "pythonpath": [str(APPS_DIR)]}],
    }
    srv = PorchServer.start(config, tmp_path_factory.mktemp(f"proxy-protocol-{request.param}"))
    yield srv
    srv.stop()


def connect(server: PorchServer, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=5, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(stream: BinaryIO) -> tuple[bytes, dict[str, object]]:
    """One response with a Content-Length body, from a socket's buffered reader (responses to
    pipelined requests may arrive together): its head and its JSON body."""
    lines = []
    while (line := stream.readline()) not in (b"\r\n", b""):
        lines.append(line)
    assert lines, "closed without a response"
    length = int(next(line for line in lines if line.lower().startswith(b"content-length:"))[15:])
    return b"".join(lines), json.loads(stream.read(length))


def environ_after(server: PorchServer, preface: bytes, source: str = "127.0.0.1") -> dict[str, object]:
    with connect(server, source) as sock:
        sock.sendall(preface + request())
        head, environ = read_response(sock.makefile("rb"))
    assert head.startswith(b"HTTP/1.1 200 ")
    return environ


def access_line(server: PorchServer, target: str) -> str:
    """The access line of the request for ``target`` (lines are written after the response)."""
    found = wait_until(lambda: [line for line in server.access_lines() if f" {target} " in line], target)
    return str(found[0])


def closed_without_answer(sock: socket.socket) -> bool:
    """Whether the server closes the connection without sending a byte."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def log_lines_about(server: PorchServer, sock_name: tuple[str, int], since: int) -> list[str]:
    """The error log's lines about PROXY headers from the peer ``sock_name``, written after the
    first ``since`` characters of the log (an earlier connection may have had the same port)."""
    peer = f"{sock_name[0]}:{sock_name[1]}"
    return [line for line in server.error_text()[since:].splitlines() if peer in line and "PROXY" in line]


# --- the parser on its own --------------------------------------------------------------------


def test_the_parser_needs_more_then_answers_at_every_split() -> None:
    for header in (v1("203.0.113.7"), v2("203.0.113.7", tlvs=tlv(0x04, b"x" * 40))):
        for cut in range(1, len(header)):
            assert parse(header[:cut]) is None
        assert parse(header + b"GET") == ProxyHeader(len(header), ("203.0.113.7", 5555), ("127.0.0.1", 80))


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 080\r\n",  # a leading zero
        b"PROXY TCP4 203.0.113.7 127.0.0.1 65536 80\r\n",
        b"PROXY TCP4 2001:db8::1 127.0.0.1 1 80\r\n",
        b"PROXY TCP4  203.0.113.7 127.0.0.1 1 80\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 1 80\n",
        b"PROXY " + b"1" * 110,
        SIGNATURE + bytes([0x31, 0x11, 0, 12]) + bytes(12),  # version 3
        SIGNATURE + bytes([0x22, 0x11, 0, 12]) + bytes(12),  # command 2
        SIGNATURE + bytes([0x21, 0x11, 0, 8]) + bytes(8),  # too short for two IPv4 addresses
        SIGNATURE + bytes([0x21, 0x12, 0, 12]) + bytes(12),  # a datagram
        SIGNATURE + bytes([0x21, 0x11, 0, 14]) + v2("203.0.113.7")[16:] + b"\x04\x00",  # a TLV cut short
        SIGNATURE + bytes([0x21, 0x11, 0, 18]) + v2("203.0.113.7")[16:] + b"\x01\x00\x05abc",  # a TLV too long
    ],
)
def test_the_parser_refuses(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


def test_headers_naming_nobody_leave_the_peer() -> None:
    assert parse(b"PROXY UNKNOWN whatever\r\n") == ProxyHeader(24)
    assert parse(v2("", local=True, tlvs=tlv(0x03, b"\0\0\0\0"))) == ProxyHeader(23)
    unspec = SIGNATURE + bytes([0x21, 0x00, 0, 0])
    assert parse(unspec) == ProxyHeader(16)


# --- over real sockets ------------------------------------------------------------------------


def test_version_1_names_the_client_for_apps_and_the_access_log(server: PorchServer) -> None:
    with connect(server) as sock:
        sock.sendall(v1("203.0.113.7", 40001) + request("/environ?v1"))
        _, environ = read_response(sock.makefile("rb"))
    assert environ["REMOTE_ADDR"] == "203.0.113.7" and environ["REMOTE_PORT"] == "40001"
    assert environ["wsgi.url_scheme"] == "http"
    assert access_line(server, "/environ?v1").startswith("203.0.113.7 ")


def test_version_2_with_tlvs(server: PorchServer) -> None:
    tlvs = tlv(0x01, b"http/1.1") + tlv(0x02, b"example.test") + tlv(0x04, bytes(100)) + tlv(0x05, b"id-1")
    environ = environ_after(server, v2("198.51.100.20", 443, tlvs))
    assert environ["REMOTE_ADDR"] == "198.51.100.20" and environ["REMOTE_PORT"] == "443"


def test_version_2_tcp6(server: PorchServer) -> None:
    environ = environ_after(server, v2("2001:db8::7", 6000, six=True))
    assert environ["REMOTE_ADDR"] == "2001:db8::7" and environ["REMOTE_PORT"] == "6000"


def test_local_and_unknown_keep_the_peer(server: PorchServer) -> None:
    for preface in (v2("", local=True), b"PROXY UNKNOWN\r\n"):
        with connect(server) as sock:
            sock.sendall(preface + request())
            _, environ = read_response(sock.makefile("rb"))
            assert environ["REMOTE_ADDR"] == "127.0.0.1"
            assert environ["REMOTE_PORT"] == str(sock.getsockname()[1])


def test_keep_alive_after_the_header_keeps_the_client(server: PorchServer) -> None:
    with connect(server) as sock:
        stream = sock.makefile("rb")
        sock.sendall(v2("192.0.2.9", 7000) + request(keep_alive=True))
        _, first = read_response(stream)
        sock.sendall(request(keep_alive=True) + request(keep_alive=True))  # pipelined too
        seconds = [read_response(stream)[1] for _ in range(2)]
    assert {e["REMOTE_ADDR"] for e in (first, *seconds)} == {"192.0.2.9"}
    assert len({e["REMOTE_PORT"] for e in (first, *seconds)}) == 1


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_header_split_byte_by_byte(server: PorchServer, version: str) -> None:
    header = v1("203.0.113.8", 8080) if version == "v1" else v2("203.0.113.8", 8080, tlv(0x04, bytes(5)))
    with connect(server) as sock:
        for byte in header:
            sock.send(bytes([byte]))
            time.sleep(0.005)
        sock.sendall(request())
        _, environ = read_response(sock.makefile("rb"))
    assert environ["REMOTE_ADDR"] == "203.0.113.8" and environ["REMOTE_PORT"] == "8080"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid PROXY header: not a PROXY protocol header"),
        (b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 80\r\n" + request(), "is not a port"),
        (v2("203.0.113.7")[:20], "no PROXY header from"),  # truncated, then the peer closes
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x00\x00", "no PROXY header from"),
    ],
)
def test_a_bad_header_closes_unanswered_and_is_logged_once(server: PorchServer, data: bytes, reason: str) -> None:
    since = len(server.error_text())
    with connect(server) as sock:
        name = sock.getsockname()
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # closed (reset) already
            pass
        assert closed_without_answer(sock)
    lines = wait_until(lambda: log_lines_about(server, name, since), "the log line")
    time.sleep(0.1)
    assert len(log_lines_about(server, name, since)) == 1
    assert reason in lines[0]
    assert environ_after(server, v1("203.0.113.1"))["REMOTE_ADDR"] == "203.0.113.1"  # others are served


def test_a_header_from_an_untrusted_peer_is_refused(server: PorchServer) -> None:
    since = len(server.error_text())
    with connect(server, UNTRUSTED) as sock:
        name = sock.getsockname()
        try:
            sock.sendall(v1("203.0.113.7") + request())
        except OSError:  # closed (reset) already
            pass
        assert closed_without_answer(sock)
    lines = wait_until(lambda: log_lines_about(server, name, since), "the log line")
    assert "accepted from trusted_proxies only" in lines[0]


def test_a_missing_header_closes_after_the_header_timeout(server: PorchServer) -> None:
    since = len(server.error_text())
    with connect(server) as silent:
        name = silent.getsockname()
        started = time.monotonic()
        assert environ_after(server, v1("203.0.113.2"))["REMOTE_ADDR"] == "203.0.113.2"  # meanwhile, others
        silent.settimeout(HEADER_TIMEOUT + 5)
        assert closed_without_answer(silent)
        waited = time.monotonic() - started
    assert HEADER_TIMEOUT - 0.1 <= waited < HEADER_TIMEOUT + 2
    lines = wait_until(lambda: log_lines_about(server, name, since), "the log line")
    assert len(lines) == 1 and "no PROXY header within" in lines[0]


# --- TLS behind the header ----------------------------------------------------------------------


def test_tls_after_the_header(porch, tmp_path: Path, concurrency: str) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key)}
    srv = porch(
        {
            "concurrency": concurrency,
            "listen": [{"address": "127.0.0.1:0", "proxy_protocol": True, "tls": tls}],
            "trusted_proxies": ["127.0.0.1"],
            "mounts": [
                {"path": "/", "type": "wsgi", "app": "wsgitest_core:application", "pythonpath": [str(APPS_DIR)]}
            ],
        }
    )
    context = ssl.create_default_context(cafile=str(pki.server_cert))
    with connect(srv) as raw:
        raw.sendall(v2("203.0.113.30", 3000))  # in clear, then the handshake
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            stream = sock.makefile("rb")
            sock.sendall(request(keep_alive=True))
            _, first = read_response(stream)
            sock.sendall(request())
            _, second = read_response(stream)
    for environ in (first, second):
        assert environ["REMOTE_ADDR"] == "203.0.113.30" and environ["wsgi.url_scheme"] == "https"


# --- HAProxy in front ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", ["", " proxy-v2-options crc32c,unique-id"])
def test_through_haproxy_send_proxy_v2(porch, tmp_path: Path, concurrency: str, options: str) -> None:
    haproxy = need_program("haproxy")
    srv = porch(
        {
            "concurrency": concurrency,
            "listen": [{"address": "127.0.0.1:0", "proxy_protocol": True}],
            "trusted_proxies": ["127.0.0.1"],
            "mounts": [
                {"path": "/", "type": "wsgi", "app": "wsgitest_core:application", "pythonpath": [str(APPS_DIR)]}
            ],
        }
    )
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n"
        '  unique-id-format "%{+X}o%ci%cp"\n'
        f"frontend porch_front\n  bind 127.0.0.1:{port}\n  default_backend porch_back\n"
        f"backend porch_back\n  server porch 127.0.0.1:{srv.port} send-proxy-v2{options}\n"
    )
    with open(tmp_path / "haproxy.log", "wb") as output:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=output, stderr=subprocess.STDOUT)
    try:

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return proc.poll() is not None  # stop waiting: it failed (asserted below)
            return True

        wait_until(listening, "haproxy to listen")
        assert proc.poll() is None, (tmp_path / "haproxy.log").read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(UNTRUSTED, 0)) as sock:
            client_port = sock.getsockname()[1]
            stream = sock.makefile("rb")
            sock.sendall(request("/environ?first", keep_alive=True))
            _, first = read_response(stream)
            sock.sendall(request("/environ?second"))
            _, second = read_response(stream)
        for environ in (first, second):
            assert environ["REMOTE_ADDR"] == UNTRUSTED and environ["REMOTE_PORT"] == str(client_port)
        for target in ("/environ?first", "/environ?second"):
            assert access_line(srv, target).startswith(f"{UNTRUSTED} ")
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
