"""The WSGI handler over real sockets, under both concurrency models.

One server per concurrency model serves the fixture apps of ``wsgi_apps/wsgitest_core.py`` at
several prefixes.  Everything under ``/raw`` is unwrapped; everything else runs inside
``wsgiref.validate.validator`` with its warnings turned into errors, and the last test of the
class checks that the error log never recorded a validator complaint.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import requests
from conftest import CONCURRENCY_MODELS
from porchtest import PorchServer

APPS_DIR = Path(__file__).resolve().parent / "wsgi_apps"
DEMO_DIR = Path(__file__).resolve().parent.parent / "apps"
TEN_MIB = 10 * 1024 * 1024
VALIDATOR_COMPLAINTS = re.compile(r"AssertionError|WSGIWarning|unraisable")


def core_mount(path: str, app: str = "wsgitest_core:application", **extra: object) -> dict[str, object]:
    return {"path": path, "type": "wsgi", "app": app, "pythonpath": [str(APPS_DIR)], **extra}


def wsgi_config(concurrency: str) -> dict[str, object]:
    return {
        "concurrency": concurrency,
        "threads": 4,
        "limits": {"body": 2 * TEN_MIB},
        "timeouts": {"header": 5, "keepalive": 5, "body": 10, "graceful": 5},
        "mounts": [
            core_mount("/"),
            core_mount("/mounted"),
            core_mount("/mounted/deeper"),
            core_mount("/caf\u00e9"),
            core_mount("/raw", "wsgitest_core:raw_application"),
            core_mount("/factory", "wsgitest_core:create_app('hey')"),
            core_mount("/small", limits={"body": 1000}),
            {
                "path": "/demo",
                "type": "wsgi",
                "app": "wsgitest_demo:application",
                "pythonpath": [str(APPS_DIR), str(DEMO_DIR)],
            },
        ],
    }


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    tmp = tmp_path_factory.mktemp(f"wsgi-{request.param}")
    markers = tmp / "markers"
    markers.mkdir()
    srv = PorchServer.start(wsgi_config(request.param), tmp, env={"WSGITEST_MARKERS": str(markers)})
    srv.concurrency = request.param  # type: ignore[attr-defined]
    srv.markers = markers  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def read_until_close(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


class TestWSGI:
    def test_environ(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(
                b"GET /mounted/deeper/environ/x?q=1 HTTP/1.1\r\nHost: site.test:8123\r\n"
                b"X-One: a\r\nX-One: b\r\nCookie: a=1\r\nCookie: b=2\r\n"
                b"X_Sneaky: 1\r\nConnection: close\r\n\r\n"
            )
            local_port = sock.getsockname()[1]
            raw = read_until_close(sock)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), raw
        env = json.loads(body)
        assert env["SCRIPT_NAME"] == "/mounted/deeper" and env["PATH_INFO"] == "/environ/x"
        assert env["QUERY_STRING"] == "q=1" and env["REQUEST_METHOD"] == "GET"
        assert env["REQUEST_URI"] == "/mounted/deeper/environ/x?q=1"
        assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("site.test", "8123")
        assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["SERVER_SOFTWARE"].startswith("porch")
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(local_port))
        assert env["HTTP_X_ONE"] == "a, b" and env["HTTP_COOKIE"] == "a=1; b=2"
        assert not any(key.startswith("HTTP_X_SNEAKY") for key in env)
        assert env["wsgi.url_scheme"] == "http" and env["wsgi.version"] == [1, 0]
        assert env["wsgi.run_once"] is False and env["wsgi.input_terminated"] is True
        threading = server.concurrency == "threading"  # type: ignore[attr-defined]
        assert env["wsgi.multithread"] is threading
        assert env["wsgi.multiprocess"] is not threading
        request_id = env["porch.request_id"]
        assert re.fullmatch(r"[0-9a-f]{16}", request_id)
        assert wait_for(lambda: any(line.endswith(" " + request_id) for line in server.access_lines()))

    def test_server_name_without_host(self, server: PorchServer) -> None:
        raw = server.raw(b"GET /environ HTTP/1.0\r\n\r\n")
        env = json.loads(raw.partition(b"\r\n\r\n")[2])
        assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(server.port))
        assert "HTTP_HOST" not in env

    @pytest.mark.parametrize(
        "target, script_name, path_info",
        [
            ("/environ", "", "/environ"),
            ("/mounted", "/mounted", ""),
            ("/mounted/", "/mounted", "/"),
            ("/mounted/deeper/environ", "/mounted/deeper", "/environ"),
            ("/mounted/deeperx/environ", "/mounted", "/deeperx/environ"),
            ("/mounted/environ/%C3%A9t%C3%A9%20a%2Fb", "/mounted", "/environ/\u00c3\u00a9t\u00c3\u00a9 a/b"),
            ("/caf%C3%A9/environ", "/caf\u00c3\u00a9", "/environ"),
        ],
    )
    def test_script_name_and_path_info(
        self, server: PorchServer, target: str, script_name: str, path_info: str
    ) -> None:
        response = requests.get(server.url + target, timeout=5)
        assert response.status_code == 200, response.text
        env = response.json()
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (script_name, path_info)

    def test_factory_mount(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/factory/", timeout=5).text == "hey!"

    @pytest.mark.parametrize("mode", ["sized", "line", "iter", "lines", "line-hint"])
    def test_small_chunked_upload(self, server: PorchServer, mode: str) -> None:
        data = b"".join(b"row %d\n" % i for i in range(5000)) + b"tail"
        pieces = (data[i : i + 999] for i in range(0, len(data), 999))
        response = requests.post(f"{server.url}/read?mode={mode}", data=pieces, timeout=10)
        assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()

    @pytest.mark.parametrize("framing", ["chunked", "length"])
    def test_ten_mib_upload(self, server: PorchServer, framing: str) -> None:
        data = os.urandom(TEN_MIB)
        if framing == "chunked":
            body: Iterable[bytes] | bytes = (data[i : i + 300_000] for i in range(0, len(data), 300_000))
        else:
            body = data
        response = requests.post(f"{server.url}/read?mode=sized&size=100000", data=body, timeout=30)
        assert response.status_code == 200
        assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()

    def test_read_all_without_size(self, server: PorchServer) -> None:
        data = os.urandom(300_000)
        response = requests.post(f"{server.url}/raw/read?mode=all", data=iter([data[:1000], data[1000:]]), timeout=10)
        assert response.json() == {"sha256": hashlib.sha256(data).hexdigest(), "pieces": 1}

    def test_body_limit_of_the_mount(self, server: PorchServer) -> None:
        response = requests.post(f"{server.url}/small/read", data=b"x" * 5000, timeout=5)
        assert response.status_code == 413

    def test_pipelined_request_after_a_body(self, server: PorchServer) -> None:
        raw = server.raw(
            b"POST /read?mode=sized HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /raw/list HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert raw.count(b"HTTP/1.1 200 ") == 2
        assert hashlib.sha256(b"hello").hexdigest().encode() in raw and raw.endswith(b"list")

    @pytest.mark.parametrize("reads", [True, False])
    def test_expect_100_continue_only_when_the_app_reads(self, server: PorchServer, reads: bool) -> None:
        with server.connect() as sock:
            sock.sendall(
                f"POST /expect{'?read=1' if reads else ''} HTTP/1.1\r\nHost: a\r\n"
                "Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n".encode()
            )
            if reads:
                assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
                sock.sendall(b"hello")
            raw = read_until_close(sock)
        assert raw.startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in raw
        assert raw.endswith(b"read 5" if reads else b"read 0")

    def test_write_callable(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/write", timeout=5)
        assert response.text == "one,two,three,four,five,six"
        assert response.headers.get("Transfer-Encoding") == "chunked"

    def test_list_gets_content_length(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/raw/list", timeout=5)
        assert response.text == "list" and response.headers["Content-Length"] == "4"

    def test_streamed_generator_is_chunked_and_incremental(self, server: PorchServer) -> None:
        started = time.monotonic()
        with requests.get(f"{server.url}/stream?count=4&size=3&delay=0.5", stream=True, timeout=5) as response:
            assert response.headers.get("Transfer-Encoding") == "chunked"
            chunks = response.iter_content(chunk_size=None)
            first = next(chunks)
            first_at = time.monotonic() - started
            assert first + b"".join(chunks) == b"000111222333"
        assert first_at < time.monotonic() - started - 1.0  # the first chunk came well before the end

    def test_http_1_0_response_without_length_is_close_delimited(self, server: PorchServer) -> None:
        raw = server.raw(b"GET /stream?count=3&size=2 HTTP/1.0\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower() and body == b"001122"

    def test_head_has_no_body(self, server: PorchServer) -> None:
        raw = server.raw(b"HEAD /raw/list HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert raw.endswith(b"\r\n\r\n") and raw.startswith(b"HTTP/1.1 200 ")

    def test_exc_info_before_headers(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/exc-before", timeout=5)
        assert (response.status_code, response.text) == (503, "handled by the app")

    def test_exc_info_replaces_status_before_first_non_empty_chunk(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/generator?fail=1", timeout=5)
        assert (response.status_code, response.text) == (502, "replaced")

    def test_exc_info_after_headers_aborts_the_response(self, server: PorchServer) -> None:
        raw = server.raw(b"GET /exc-after HTTP/1.1\r\nHost: a\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 ") and b"partial" in raw
        assert not raw.endswith(b"0\r\n\r\n") and b"never sent" not in raw  # no last-chunk
        assert wait_for(lambda: "too late to change the status" in server.error_text())

    def test_app_exception_is_500_and_next_request_ok(self, server: PorchServer) -> None:
        with requests.Session() as session:
            response = session.get(server.url + "/raise", timeout=5)
            assert response.status_code == 500 and "on purpose" not in response.text
            assert session.get(server.url + "/raw/list", timeout=5).text == "list"
        assert "RuntimeError: the application failed on purpose" in server.error_text()

    def test_error_in_iterable_before_data_is_500_and_closes(self, server: PorchServer) -> None:
        marker = f"iter-{server.concurrency}"  # type: ignore[attr-defined]
        response = requests.get(f"{server.url}/raise-in-iter?marker={marker}", timeout=5)
        assert response.status_code == 500
        assert wait_for((server.markers / marker).exists)  # type: ignore[attr-defined]

    def test_close_called_on_client_disconnect(self, server: PorchServer) -> None:
        marker = f"disconnect-{server.concurrency}"  # type: ignore[attr-defined]
        with server.connect() as sock:
            sock.sendall(
                f"GET /stream?count=100000&size=65536&delay=0.001&marker={marker} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        assert wait_for((server.markers / marker).exists, 10)  # type: ignore[attr-defined]

    def test_close_called_after_normal_response(self, server: PorchServer) -> None:
        marker = f"normal-{server.concurrency}"  # type: ignore[attr-defined]
        assert requests.get(f"{server.url}/stream?count=2&marker={marker}", timeout=5).status_code == 200
        assert wait_for((server.markers / marker).exists)  # type: ignore[attr-defined]

    def test_file_wrapper_uses_a_file_region(self, server: PorchServer, tmp_path: Path) -> None:
        data = os.urandom(1_000_000)
        (tmp_path / "f.bin").write_bytes(data)
        response = requests.get(
            f"{server.url}/raw/file", params={"path": str(tmp_path / "f.bin"), "offset": "123"}, timeout=5
        )
        # a known length without chunking is what the sendfile path produces
        assert response.headers.get("Content-Length") == str(len(data) - 123)
        assert "Transfer-Encoding" not in response.headers
        assert response.content == data[123:]

    def test_file_wrapper_with_content_length(self, server: PorchServer, tmp_path: Path) -> None:
        (tmp_path / "f.bin").write_bytes(b"0123456789")
        response = requests.get(
            f"{server.url}/raw/file", params={"path": str(tmp_path / "f.bin"), "length": "4"}, timeout=5
        )
        assert response.content == b"0123"

    @pytest.mark.parametrize("prefix, params", [("", {}), ("/raw", {"buffer": "1"})])
    def test_file_wrapper_iterated(
        self, server: PorchServer, tmp_path: Path, prefix: str, params: dict[str, str]
    ) -> None:
        data = os.urandom(50_000)
        (tmp_path / "f.bin").write_bytes(data)
        response = requests.get(
            f"{server.url}{prefix}/file", params={"path": str(tmp_path / "f.bin"), **params}, timeout=5
        )
        assert response.content == data and response.headers.get("Transfer-Encoding") == "chunked"

    @pytest.mark.parametrize(
        "query, logged",
        [
            ("status?status=600+Odd", "invalid status '600 Odd'"),
            ("status?status=200", "invalid status '200'"),
            ("header?name=X-A&value=a%0D%0AX-Injected:+1", "invalid value for header X-A"),
            ("header?name=Bad+Name&value=1", "invalid header name 'Bad Name'"),
            ("header?name=Connection&value=close", "hop-by-hop header 'Connection'"),
        ],
    )
    def test_bad_status_or_header_is_500_and_logged(self, server: PorchServer, query: str, logged: str) -> None:
        with requests.Session() as session:
            response = session.get(f"{server.url}/raw/{query}", timeout=5)
            assert response.status_code == 500 and "X-Injected" not in response.headers
            assert session.get(server.url + "/raw/list", timeout=5).status_code == 200
        assert wait_for(lambda: logged in server.error_text()), server.error_text()[-2000:]

    def test_more_bytes_than_content_length_are_cut(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(
                b"GET /raw/length?declared=5&actual=12 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /raw/list HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            raw = read_until_close(sock)
        first, second = raw.split(b"HTTP/1.1 200 ")[1:]
        assert first.endswith(b"\r\n\r\nxxxxx") and b"Content-Length: 5" in first
        assert second.endswith(b"list")  # the connection went on, framing intact

    def test_fewer_bytes_than_content_length_close_the_connection(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(b"GET /raw/length?declared=50&actual=6 HTTP/1.1\r\nHost: a\r\n\r\n")
            raw = read_until_close(sock)
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"\r\n\r\nxxxyyy")

    def test_wsgi_errors_go_to_the_error_log(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/mounted/errors", timeout=5).text == "logged"
        assert wait_for(lambda: "/mounted: unterminated" in server.error_text())
        text = server.error_text()
        assert "/mounted: first line from the app" in text and "/mounted: second line" in text
        assert "\n[fake] log line" not in text  # each app line is its own record

    def test_demo_app_shows_the_request(self, server: PorchServer) -> None:
        page = requests.get(f"{server.url}/demo/some/where?x=1", headers={"X-Demo": "<b>"}, timeout=5)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "<th>SCRIPT_NAME</th><td>/demo</td>" in page.text
        assert "<th>PATH_INFO</th><td>/some/where</td>" in page.text
        assert "<th>X-Demo</th><td>&lt;b&gt;</td>" in page.text and "<b>" not in page.text.split("<h1>")[1]
        assert 'action="/demo/some/where"' in page.text

    @pytest.mark.parametrize("chunked", [False, True])
    def test_demo_app_form(self, server: PorchServer, chunked: bool) -> None:
        form = b"name=Ada&message=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        response = requests.post(
            f"{server.url}/demo/",
            data=iter([form]) if chunked else form,
            timeout=5,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200
        assert "<tr><th>name</th><td>Ada</td></tr>" in response.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text and "<script>" not in response.text

    def test_demo_app_limits(self, server: PorchServer) -> None:
        assert requests.post(f"{server.url}/demo/", data=b"x" * 70000, timeout=5).status_code == 413
        assert requests.post(f"{server.url}/demo/", data=iter([b"x" * 70000]), timeout=5).status_code == 413
        response = requests.put(f"{server.url}/demo/", data=b"x", timeout=5)
        assert response.status_code == 405 and response.headers["Allow"] == "GET, HEAD, POST"

    def test_zz_validator_saw_no_violation(self, server: PorchServer) -> None:
        """Runs last: nothing above made wsgiref.validate complain (assertion, warning, __del__)."""
        found = VALIDATOR_COMPLAINTS.findall(server.error_text())
        assert not found, server.error_text()[-5000:]


class TestConfigErrors:
    def test_import_error_stops_start_up_with_the_traceback(self, tmp_path: Path) -> None:
        config = tmp_path / "porch.yaml"
        config.write_text(
            "listen: ['127.0.0.1:0']\nmounts:\n"
            "  - {path: /, type: wsgi, app: 'wsgitest_broken:application', "
            f"pythonpath: ['{APPS_DIR}']}}\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "porch", "-c", str(config)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1
        assert f"{config}:3: mounts[0].app" in result.stderr, result.stderr
        assert "LookupError: the database settings are missing" in result.stderr
        assert "in read_settings" in result.stderr

    def test_check_reports_the_import_error(self, tmp_path: Path) -> None:
        config = tmp_path / "porch.yaml"
        config.write_text(
            "listen: ['127.0.0.1:0']\nmounts:\n"
            "  - {path: /ok, type: wsgi, app: 'wsgitest_core:application', "
            f"pythonpath: ['{APPS_DIR}']}}\n"
            "  - {path: /bad, type: wsgi, app: 'wsgitest_broken:application', "
            f"pythonpath: ['{APPS_DIR}']}}\n"
            "  - {path: /missing, type: wsgi, app: 'no_such_module_xyz:app'}\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "porch", "check", "-c", str(config)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1
        assert f"{config}:4: mounts[1].app" in result.stderr, result.stderr
        assert "LookupError: the database settings are missing" in result.stderr
        assert f"{config}:5: mounts[2].app" in result.stderr and "ModuleNotFoundError" in result.stderr


def test_http_client_sees_a_clean_response(tmp_path: Path) -> None:
    """The whole path once with http.client, the stdlib's strict client, on a fresh server."""
    srv = PorchServer.start(wsgi_config("threading"), tmp_path)
    try:
        connection = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
        for _ in range(3):  # keep-alive across WSGI responses of every body kind
            for target in ("/raw/list", "/write", "/stream?count=2", "/exc-before"):
                connection.request("GET", target)
                response = connection.getresponse()
                assert response.read() and response.status in (200, 503)
        connection.close()
    finally:
        srv.stop()
