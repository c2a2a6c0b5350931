"""HTTPS listeners over real sockets, under both concurrency models: certificates made by the
test, keep-alive, ALPN, handshakes that fail or never finish, the TLS version floor, client
certificates, and the scheme reaching CGI and WSGI."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from certs import Pki, make_pki
from conftest import CONCURRENCY_MODELS
from porchtest import PorchServer

from porch.config.settings import TLSSettings
from porch.net.tls import TLSSetupError, server_context

TESTS_DIR = Path(__file__).parent
ECHO = "core_handlers:EchoHandler"
HEADER_TIMEOUT = 1.0
HTTPS_SCRIPT = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"HTTPS=$HTTPS\"\n"
# The server's listeners, in config order (the "listening on" lines come in this order too).
BIG_FILE = bytes(range(256)) * 1200  # 300 KiB: many TLS records, sent by socket.sendfile's fallback
DEFAULT, TLS13_ONLY, CLIENT_REQUIRED, CLIENT_OPTIONAL, PLAIN = range(5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls(pki: Pki, **extra: str) -> dict[str, str]:
    return {"cert": str(pki.server_cert), "key": str(pki.server_key), **extra}


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def server(request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    cgi_root = tmp_path_factory.mktemp("cgi")
    script = cgi_root / "https.sh"
    script.write_text(HTTPS_SCRIPT)
    script.chmod(0o755)
    files = tmp_path_factory.mktemp("files")
    (files / "big.bin").write_bytes(BIG_FILE)
    config = {
        "listen": [
            {"address": "127.0.0.1:0", "tls": tls(pki)},
            {"address": "127.0.0.1:0", "tls": tls(pki, min_version="TLSv1.3")},
            {"address": "127.0.0.1:0", "tls": tls(pki, ca=str(pki.ca_cert))},
            {"address": "127.0.0.1:0", "tls": tls(pki, ca=str(pki.ca_cert), verify_client="optional")},
            "127.0.0.1:0",
        ],
        "concurrency": request.param,
        "threads": 2,
        "max_children": 16,
        "timeouts": {"header": HEADER_TIMEOUT, "keepalive": HEADER_TIMEOUT, "body": 5, "graceful": 2},
        "mounts": [
            {"path": "/", "type": ECHO},
            {
                "path": "/app",
                "type": "wsgi",
                "app": "wsgitest_core:application",
                "pythonpath": [str(TESTS_DIR / "wsgi_apps")],
            },
            {"path": "/cgi-bin", "type": "cgi", "root": str(cgi_root)},
            {"path": "/files", "type": "static", "root": str(files)},
        ],
    }
    srv = PorchServer.start(
        config,
        tmp_path_factory.mktemp(f"tls-{request.param}"),
        env={"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])},
    )
    yield srv
    srv.stop()


def url(server: PorchServer, listener: int = DEFAULT, path: str = "/") -> str:
    """https://localhost:PORT/path for a TLS listener (the certificate names localhost)."""
    port = server.addresses[listener].rpartition(":")[2]
    return f"{'http' if listener == PLAIN else 'https'}://localhost:{port}{path}"


def port_of(server: PorchServer, listener: int) -> int:
    return int(server.addresses[listener].rpartition(":")[2])


def client_context(pki: Pki, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.server_cert))
    for name, version in versions.items():
        setattr(context, name, version)
    return context


def tls_connect(server: PorchServer, pki: Pki, listener: int = DEFAULT, **versions: ssl.TLSVersion) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port_of(server, listener)), timeout=5)
    return client_context(pki, **versions).wrap_socket(raw, server_hostname="localhost")


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, ssl.SSLError):
        pass
    return b"".join(chunks)


# --- serving HTTPS ---------------------------------------------------------------------------


def test_a_request_over_tls_verified_against_the_test_certificate(server: PorchServer, pki: Pki) -> None:
    response = requests.get(url(server, path="/hello?x=1"), verify=str(pki.server_cert), timeout=5)
    assert response.status_code == 200
    document = response.json()
    assert (document["path"], document["query"], document["scheme"]) == ("/hello", "x=1", "https")
    assert requests.get(url(server, PLAIN), timeout=5).json()["scheme"] == "http"


def test_keep_alive_over_tls(server: PorchServer, pki: Pki) -> None:
    connection = http.client.HTTPSConnection(
        "localhost", port_of(server, DEFAULT), timeout=5, context=client_context(pki)
    )
    clients = []
    for number in range(3):
        connection.request("POST", f"/n{number}", body=b"x" * 1000 * number)
        response = connection.getresponse()
        document = json.loads(response.read())
        assert (response.status, len(document["body"])) == (200, 1000 * number)
        clients.append(tuple(document["client"]))
    connection.close()
    assert len(set(clients)) == 1, f"each request came on a new connection: {clients}"


def test_a_file_body_arrives_intact_over_tls(server: PorchServer, pki: Pki) -> None:
    with requests.Session() as session:
        for _ in range(2):
            response = session.get(url(server, path="/files/big.bin"), verify=str(pki.server_cert), timeout=5)
            assert (response.status_code, response.content == BIG_FILE) == (200, True)
        ranged = session.get(
            url(server, path="/files/big.bin"),
            headers={"Range": "bytes=1000-1999"},
            verify=str(pki.server_cert),
            timeout=5,
        )
        assert (ranged.status_code, ranged.content) == (206, BIG_FILE[1000:2000])


def test_alpn_selects_http_1_1(server: PorchServer, pki: Pki) -> None:
    context = client_context(pki)
    context.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port_of(server, DEFAULT)), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"


def test_a_pipelined_request_behind_a_body_in_the_same_record_is_answered(server: PorchServer, pki: Pki) -> None:
    """The body and the next request arrive in one TLS record; reading the body takes only part
    of it, so the rest waits in OpenSSL's buffer, where no selector sees it."""
    with tls_connect(server, pki) as sock:
        sock.sendall(b"POST /first HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.05)
        sock.sendall(b"hello" + b"GET /second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        started = time.monotonic()
        data = read_until_closed(sock)
    assert data.count(b"HTTP/1.1 200 ") == 2, data
    assert b'"body": "hello"' in data and b'"path": "/second"' in data
    assert time.monotonic() - started < HEADER_TIMEOUT, "the second request waited for a timeout"


# --- handshakes that fail or never finish ---------------------------------------------------


def test_plain_http_on_the_tls_port_is_dropped_and_others_are_served(server: PorchServer, pki: Pki) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server, DEFAULT)), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        started = time.monotonic()
        answer = read_until_closed(sock)
    assert b"HTTP/1.1 200" not in answer
    assert time.monotonic() - started < HEADER_TIMEOUT + 2
    assert requests.get(url(server), verify=str(pki.server_cert), timeout=5).status_code == 200


def test_the_failed_handshake_is_logged_at_info(server: PorchServer, pki: Pki) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server, DEFAULT)), timeout=5) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        read_until_closed(sock)
    deadline = time.monotonic() + 3
    needle = f"[INFO] [-] porch.net.connection: TLS handshake with 127.0.0.1:{local_port} failed: http request"
    while needle not in server.error_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert needle in server.error_text()


def test_clients_that_never_finish_the_handshake_hold_no_worker(server: PorchServer, pki: Pki) -> None:
    """Five silent clients and five that stop inside their ClientHello, against two threads:
    a real client is still served at once, and the stalled ones are dropped at the timeout."""
    address = ("127.0.0.1", port_of(server, DEFAULT))
    stalled = [socket.create_connection(address, timeout=5) for _ in range(5)]
    partial = [socket.create_connection(address, timeout=5) for _ in range(5)]
    for sock in partial:
        sock.sendall(b"\x16\x03\x01\x00\xc8\x01\x00")  # a handshake record promising 200 bytes
    opened = time.monotonic()
    try:
        response = requests.get(url(server), verify=str(pki.server_cert), timeout=5)
        assert response.status_code == 200
        assert time.monotonic() - opened < HEADER_TIMEOUT / 2, "the request waited behind stalled clients"
        for sock in stalled + partial:
            assert read_until_closed(sock) == b""
        assert time.monotonic() - opened < HEADER_TIMEOUT * 2 + 1.5
    finally:
        for sock in stalled + partial:
            sock.close()
    assert requests.get(url(server), verify=str(pki.server_cert), timeout=5).status_code == 200


# --- protocol versions and client certificates ----------------------------------------------


def test_tls_1_2_is_accepted_by_default(server: PorchServer, pki: Pki) -> None:
    with tls_connect(server, pki, maximum_version=ssl.TLSVersion.TLSv1_2) as sock:
        assert sock.version() == "TLSv1.2"


def test_min_version_tls_1_3_refuses_a_tls_1_2_client(server: PorchServer, pki: Pki) -> None:
    with pytest.raises(ssl.SSLError):
        tls_connect(server, pki, TLS13_ONLY, maximum_version=ssl.TLSVersion.TLSv1_2).close()
    with tls_connect(server, pki, TLS13_ONLY) as sock:
        assert sock.version() == "TLSv1.3"
    assert requests.get(url(server, TLS13_ONLY), verify=str(pki.server_cert), timeout=5).status_code == 200


def test_a_required_client_certificate(server: PorchServer, pki: Pki) -> None:
    verify = str(pki.server_cert)
    assert requests.get(url(server, CLIENT_REQUIRED), verify=verify, cert=pki.client, timeout=5).status_code == 200
    for cert in (None, pki.rogue):
        with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
            requests.get(url(server, CLIENT_REQUIRED), verify=verify, cert=cert, timeout=5)


def test_an_optional_client_certificate(server: PorchServer, pki: Pki) -> None:
    verify = str(pki.server_cert)
    assert requests.get(url(server, CLIENT_OPTIONAL), verify=verify, timeout=5).status_code == 200
    assert requests.get(url(server, CLIENT_OPTIONAL), verify=verify, cert=pki.client, timeout=5).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url(server, CLIENT_OPTIONAL), verify=verify, cert=pki.rogue, timeout=5)


# --- the scheme reaches applications ---------------------------------------------------------


def test_cgi_scripts_see_https_on(server: PorchServer, pki: Pki) -> None:
    response = requests.get(url(server, path="/cgi-bin/https.sh"), verify=str(pki.server_cert), timeout=5)
    assert (response.status_code, response.text) == (200, "HTTPS=on\n")
    assert requests.get(url(server, PLAIN, "/cgi-bin/https.sh"), timeout=5).text == "HTTPS=\n"


def test_wsgi_url_scheme_is_https(server: PorchServer, pki: Pki) -> None:
    environ = requests.get(url(server, path="/app/environ"), verify=str(pki.server_cert), timeout=5).json()
    assert (environ["wsgi.url_scheme"], environ["SERVER_PORT"]) == ("https", str(port_of(server, DEFAULT)))
    assert requests.get(url(server, PLAIN, "/app/environ"), timeout=5).json()["wsgi.url_scheme"] == "http"


# --- certificate problems are start-up errors ------------------------------------------------


def write_config(directory: Path, listener: dict[str, object]) -> Path:
    path = directory / "porch.yaml"
    path.write_text(json.dumps({"listen": [listener], "mounts": [], "log": {"error": str(directory / "error.log")}}))
    return path


def porch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "porch", *args], cwd=cwd, capture_output=True, text=True, timeout=20)


def test_a_missing_certificate_is_a_config_error_naming_the_key(pki: Pki, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"address": "127.0.0.1:0", "tls": {"cert": "missing.pem", "key": str(pki.server_key)}}
    )
    checked = porch("check", "-c", str(config), cwd=tmp_path)
    assert checked.returncode == 1
    assert "listen[0].tls.cert: file 'missing.pem' does not exist" in checked.stderr


def test_a_key_that_does_not_match_is_a_startup_error_naming_the_listener(pki: Pki, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"address": "127.0.0.1:0", "tls": {"cert": str(pki.server_cert), "key": str(pki.other_key)}}
    )
    started = porch("-c", str(config), cwd=tmp_path)
    assert started.returncode == 1
    assert (
        f"porch.yaml:1: listen[0].tls: the key {pki.other_key} does not belong to the certificate {pki.server_cert}"
    ) in started.stderr


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(pki: Pki, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pki.server_key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted)],
        check=True,
        capture_output=True,
    )
    with pytest.raises(TLSSetupError, match="is encrypted; porch needs it without a passphrase"):
        server_context(TLSSettings(pki.server_cert, encrypted))


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("garbage", "server_key", "{cert} holds no PEM certificate"),
        ("server_cert", "garbage", "{key} holds no PEM private key"),
        ("server_key", "server_cert", "{cert} holds no PEM certificate"),
        ("server_cert", "absent", "cannot read {key}: No such file or directory"),
    ],
)
def test_unusable_files_are_named(pki: Pki, tmp_path: Path, cert: str, key: str, message: str) -> None:
    (tmp_path / "garbage").write_text("not a certificate\n")
    paths = {name: getattr(pki, name, tmp_path / name) for name in (cert, key)}
    with pytest.raises(TLSSetupError) as caught:
        server_context(TLSSettings(paths[cert], paths[key]))
    assert str(caught.value) == message.format(cert=paths[cert], key=paths[key])


def test_the_context_sets_the_version_floor_alpn_and_client_verification(pki: Pki) -> None:
    context = server_context(TLSSettings(pki.server_cert, pki.server_key))
    assert (context.minimum_version, context.verify_mode) == (ssl.TLSVersion.TLSv1_2, ssl.CERT_NONE)
    assert context.options & ssl.OP_NO_RENEGOTIATION
    strict = server_context(TLSSettings(pki.server_cert, pki.server_key, ca=pki.ca_cert, min_version="TLSv1.3"))
    assert (strict.minimum_version, strict.verify_mode) == (ssl.TLSVersion.TLSv1_3, ssl.CERT_REQUIRED)
    optional = server_context(TLSSettings(pki.server_cert, pki.server_key, ca=pki.ca_cert, verify_client="optional"))
    assert optional.verify_mode == ssl.CERT_OPTIONAL
