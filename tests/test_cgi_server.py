"""CGI over real sockets, with real sh and Python scripts, under both concurrency models.

One server per model serves every test of this module; the last test checks that all the
scripts run by the others were reaped (no zombies) and, in the threading model, that the
server holds no more descriptors than before.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import requests
from conftest import CONCURRENCY_MODELS
from porchtest import PorchServer, process_state, wait_until

SCRIPTS = Path(__file__).parent / "cgi_scripts"
PY = {".py": sys.executable}


def make_tree(root: Path) -> Path:
    """A static tree with scripts inside (the mount with ``extensions``)."""
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<p>tree index</p>\n")
    (root / "page.txt").write_text("plain static text\n")
    script = root / "hello.cgi"
    script.write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nhello from cgi %s\\n' \"$PATH_INFO\"\n")
    script.chmod(0o755)
    (root / "sub" / "deep.CGI").write_text(script.read_text())
    (root / "sub" / "deep.CGI").chmod(0o755)
    (root / "source.cgi").write_text("#!/bin/sh\necho SECRET SOURCE\n")  # not executable
    (root / "innocent.txt").symlink_to(root / "hello.cgi")
    return root


# Writes 1,000 stderr lines at once, then answers and exits: the server logs those lines before
# it reads stdout, so the script has nearly always exited by the time its head is parsed.
WHOLE = r"""import os
os.write(2, b"".join(b"noise %04d\n" % number for number in range(1000)))
os.write(1, b"Content-Type: text/plain\n\nall at once")
os._exit(0)
"""
# Streams: a line, a pause, another line.
SLOW = r"""#!/bin/sh
printf 'Content-Type: text/plain\n\none\n'
sleep 0.5
printf 'two\n'
"""
# A mebibyte on stderr before a byte on stdout: the stderr pipe fills while the server waits.
FLOOD = r"""import sys
for number in range(10000):
    sys.stderr.write("flood line %05d %s\n" % (number, "." * 90))
sys.stderr.flush()
sys.stdout.write("Content-Type: text/plain\n\nafter the flood")
"""


def make_scripts(root: Path) -> Path:
    """Scripts written for these tests (next to the shared ones in cgi_scripts)."""
    root.mkdir()
    for name, text in (("whole.py", WHOLE), ("slow.sh", SLOW), ("flood.py", FLOOD)):
        (root / name).write_text(text)
        (root / name).chmod(0o755)
    return root


def cgi_config(concurrency: str, tmp: Path) -> dict:
    www = tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("home\n")
    script_mount = {"root": str(SCRIPTS), "interpreters": PY}
    return {
        "concurrency": concurrency,
        "threads": 64,
        "max_children": 64,
        "timeouts": {"header": 5, "keepalive": 2, "body": 5, "graceful": 5},
        "mounts": [
            {"path": "/", "type": "static", "root": str(www)},
            {
                "path": "/cgi-bin",
                "type": "cgi",
                **script_mount,
                "timeout": 20,
                "env": {"FROM_CONFIG": "config value"},
                "pass_env": ["PORCH_TEST_PASSED"],
            },
            {"path": "/quick", "type": "cgi", **script_mount, "timeout": 1, "env": {"PIDFILE": str(tmp / "sleep.pid")}},
            {
                "path": "/limited",
                "type": "cgi",
                **script_mount,
                "timeout": 10,
                "max_concurrent": 2,
                "cpu_seconds": 1,
                "open_files": 64,
            },
            {"path": "/single", "type": "cgi", "script": str(SCRIPTS / "envjson.py"), "interpreters": PY},
            {"path": "/tree", "type": "cgi", "root": str(make_tree(tmp / "tree")), "extensions": [".cgi"]},
            {"path": "/auth", "type": "cgi", **script_mount, "pass_auth": True},
            {"path": "/tight", "type": "cgi", **script_mount, "max_header_bytes": 512},
            {
                "path": "/made",
                "type": "cgi",
                "root": str(make_scripts(tmp / "made")),
                "interpreters": PY,
                "timeout": 20,
            },
        ],
    }


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    tmp = tmp_path_factory.mktemp(f"cgi-{request.param}")
    srv = PorchServer.start(
        cgi_config(request.param, tmp),
        tmp / "server",
        env={"PORCH_TEST_PASSED": "from the daemon", "PORCH_TEST_SECRET": "never leaks"},
    )
    srv.tmp = tmp  # type: ignore[attr-defined]
    srv.concurrency = request.param  # type: ignore[attr-defined]
    for warm_up in ("/cgi-bin/env.sh", "/tree/page.txt"):  # let workers open what they keep open
        requests.get(srv.url + warm_up, headers={"Connection": "close"}, timeout=10)
    srv.fds_at_start = settled_fd_count(srv)  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def cmdline(pid: int) -> bytes:
    """b"" for a process that has gone (its /proc entry, or only its memory: ESRCH while it is reaped)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            kids = [int(p) for p in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for kid in kids:
            found.append(kid)
            found.extend(descendants(kid))
    return found


def server_processes(server: PorchServer) -> list[int]:
    """The server's own processes: the master, its workers and (forking) connection children --
    named like the master, or ``porch: worker ...`` where setproctitle renames them."""
    own = cmdline(server.proc.pid)
    return [server.proc.pid] + [
        pid for pid in descendants(server.proc.pid) if cmdline(pid) == own or cmdline(pid).startswith(b"porch: worker ")
    ]


def scripts_of(server: PorchServer) -> list[int]:
    """Processes below the server that are not the server itself: CGI scripts and their children."""
    own = set(server_processes(server))
    return [pid for pid in descendants(server.proc.pid) if pid not in own]


def fd_count(server: PorchServer) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in server_processes(server))


def settled_fd_count(server: PorchServer, within: float = 5.0) -> int:
    """The descriptor count once two readings 0.2 s apart agree (closing is asynchronous)."""
    deadline = time.monotonic() + within
    count = fd_count(server)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        count, previous = fd_count(server), count
        if count == previous:
            break
    return count


def dead(pid: int, within: float = 3.0) -> bool:
    """True once ``pid`` is gone or a zombie (a killed orphan may wait for init to reap it)."""
    deadline = time.monotonic() + within
    while process_state(pid) not in (None, "Z"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def env_json(server: PorchServer, target: str, **kwargs: object) -> dict:
    response = requests.get(server.url + target, timeout=10, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    return response.json()


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def raw_exchange(server: PorchServer, data: bytes, timeout: float = 10) -> bytes:
    return server.raw(data, timeout=timeout)


class TestMetaVariables:
    def test_every_variable(self, server: PorchServer) -> None:
        with socket.create_connection((server.host, server.port)) as sock:
            sock.sendall(
                b"GET /cgi-bin/envjson.py/extra/p%20ath?q=a%20b&x=%26&e=%E2%82%AC HTTP/1.1\r\n"
                b"Host: www.example.test:8123\r\nUser-Agent: cgi-test\r\nConnection: close\r\n\r\n"
            )
            client_port = sock.getsockname()[1]
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, body = split_response(raw)
        assert head.startswith(b"HTTP/1.1 200 ")
        result = json.loads(body)
        env = result["env"]
        expected = {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_NAME": "www.example.test",
            "SERVER_PORT": str(server.port),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": "GET",
            "QUERY_STRING": "q=a%20b&x=%26&e=%E2%82%AC",
            "SCRIPT_NAME": "/cgi-bin/envjson.py",
            "PATH_INFO": "/extra/p ath",
            "PATH_TRANSLATED": str(SCRIPTS) + "/extra/p ath",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_HOST": "127.0.0.1",
            "REMOTE_PORT": str(client_port),
            "REQUEST_URI": "/cgi-bin/envjson.py/extra/p%20ath?q=a%20b&x=%26&e=%E2%82%AC",
            "SCRIPT_FILENAME": str(SCRIPTS / "envjson.py"),
            "DOCUMENT_ROOT": str(SCRIPTS),
            "HTTP_HOST": "www.example.test:8123",
            "HTTP_USER_AGENT": "cgi-test",
            "FROM_CONFIG": "config value",
            "PORCH_TEST_PASSED": "from the daemon",
        }
        assert {key: env.get(key) for key in expected} == expected
        assert env["SERVER_SOFTWARE"].startswith("porch/")
        for absent in (
            "CONTENT_LENGTH",
            "CONTENT_TYPE",
            "AUTH_TYPE",
            "REMOTE_USER",
            "HTTPS",
            "PORCH_TEST_SECRET",
            "HTTP_CONTENT_LENGTH",
        ):
            assert absent not in env
        assert result["argv"] == []
        assert result["cwd"] == str(SCRIPTS)

    def test_only_the_clean_base_environment(self, server: PorchServer) -> None:
        # sh, not Python: the Python interpreter adds LC_CTYPE to its own environment (PEP 538).
        env = env_lines(requests.get(server.url + "/cgi-bin/env.sh", timeout=5).text)
        extra = {"PATH", "FROM_CONFIG", "PORCH_TEST_PASSED", "PWD", "CWD", "ARGC"}  # PWD: set by sh
        assert set(env) - extra <= meta_names(env)

    def test_header_fields(self, server: PorchServer) -> None:
        raw = raw_exchange(
            server,
            (
                b"POST /cgi-bin/envjson.py HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"X-Repeated: one\r\nX-Repeated: two\r\nCookie: a=1\r\nCookie: b=2\r\n"
                b"X_Repeated: underscore\r\nProxy: http://evil.example:8080\r\n"
                b"Authorization: Bearer secret-token\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc"
            ),
        )
        env = json.loads(split_response(raw)[1])["env"]
        assert env["HTTP_X_REPEATED"] == "one, two"
        assert env["HTTP_COOKIE"] == "a=1; b=2"
        assert "HTTP_PROXY" not in env  # httpoxy
        assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("text/plain", "3")
        assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
        assert env["AUTH_TYPE"] == "Bearer" and "HTTP_AUTHORIZATION" not in env
        assert "secret-token" not in json.dumps(env)

    def test_pass_auth(self, server: PorchServer) -> None:
        env = env_json(server, "/auth/envjson.py", headers={"Authorization": "Basic dTpw"})["env"]
        assert env["HTTP_AUTHORIZATION"] == "Basic dTpw" and env["AUTH_TYPE"] == "Basic"

    @pytest.mark.parametrize(
        "target, script_name, path_info",
        [
            ("/cgi-bin/envjson.py", "/cgi-bin/envjson.py", None),
            ("/cgi-bin/envjson.py/", "/cgi-bin/envjson.py", "/"),
            ("/cgi-bin/envjson.py/a/b/c.txt", "/cgi-bin/envjson.py", "/a/b/c.txt"),
            ("/cgi-bin/envjson.py/%E2%82%AC/x%3Fy", "/cgi-bin/envjson.py", "/\u20ac/x?y"),
            ("/single", "/single", None),
            ("/single/repo.git/info/refs", "/single", "/repo.git/info/refs"),
        ],
    )
    def test_script_name_and_path_info(
        self, server: PorchServer, target: str, script_name: str, path_info: str | None
    ) -> None:
        env = env_json(server, target)["env"]
        assert env["SCRIPT_NAME"] == script_name
        assert (env.get("PATH_INFO") or None) == path_info
        assert ("PATH_TRANSLATED" in env) == bool(path_info)  # RFC 3875 4.1.6

    def test_nested_script(self, server: PorchServer) -> None:
        text = requests.get(server.url + "/cgi-bin/sub/inner.sh/deeper/", timeout=5).text
        assert env_lines(text) == {"SCRIPT_NAME": "/cgi-bin/sub/inner.sh", "PATH_INFO": "/deeper/"}

    def test_query_string_is_never_an_argument(self, server: PorchServer) -> None:
        # An "indexed" query (no "=") is what RFC 3875 4.4 would turn into argv words.
        text = requests.get(server.url + "/cgi-bin/query_args.sh?-rf+%2Fetc", timeout=5).text
        assert "argc=0 first=\n" in text


class TestRequestBody:
    def test_empty_post(self, server: PorchServer) -> None:
        response = requests.post(server.url + "/cgi-bin/body.py", data=b"", timeout=10)
        assert response.json() == {"content_length": "0", "received": 0, "sha256": hashlib.sha256(b"").hexdigest()}

    def test_one_mebibyte(self, server: PorchServer) -> None:
        payload = os.urandom(1 << 20)
        response = requests.post(server.url + "/cgi-bin/body.py", data=payload, timeout=20)
        assert response.json() == {
            "content_length": str(len(payload)),
            "received": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }

    def test_chunked(self, server: PorchServer) -> None:
        parts = [os.urandom(n) for n in (1, 70000, 5, 200000)]
        response = requests.post(server.url + "/cgi-bin/body.py", data=iter(parts), timeout=20)
        payload = b"".join(parts)
        assert response.json() == {
            "content_length": str(len(payload)),
            "received": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }

    def test_script_that_writes_before_reading(self, server: PorchServer) -> None:
        payload = os.urandom(1 << 20)
        response = requests.post(server.url + "/cgi-bin/write_first.py", data=payload, timeout=20)
        assert response.content[: 1 << 20] == b"x" * (1 << 20)
        assert response.content[1 << 20 :].decode() == hashlib.sha256(payload).hexdigest()

    def test_expect_continue(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(
                b"POST /cgi-bin/body.py HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(b"hello")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        assert raw.startswith(b"HTTP/1.1 200 ")
        assert json.loads(split_response(raw)[1])["received"] == 5


class TestResponses:
    def test_status_and_custom_fields(self, server: PorchServer) -> None:
        raw = raw_exchange(server, b"GET /cgi-bin/created.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, body = split_response(raw)
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 201 Created"
        assert b"X-Custom: one" in lines and b"Location: /cgi-bin/created.sh/item/7" in lines
        assert lines.count(b"Set-Cookie: a=1") == 1 and lines.count(b"Set-Cookie: b=2") == 1
        assert not any(line.lower().startswith(b"x-cgi-") for line in lines)
        assert body == b"made it"

    def test_local_redirect(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/cgi-bin/local_redirect.sh", timeout=5, allow_redirects=False)
        assert response.status_code == 200
        env = env_lines(response.text)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == (
            "/cgi-bin/env.sh",
            "/landed",
            "via=local%20redirect",
        )

    def test_local_redirect_of_a_post_is_a_get_without_body(self, server: PorchServer) -> None:
        response = requests.post(server.url + "/cgi-bin/local_redirect.sh", data=b"abc", timeout=5)
        env = env_lines(response.text)
        assert env["REQUEST_METHOD"] == "GET" and "CONTENT_LENGTH" not in env

    def test_client_redirect(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/cgi-bin/client_redirect.sh", timeout=5, allow_redirects=False)
        assert response.status_code == 302
        assert response.headers["Location"] == "http://example.org/elsewhere?x=1"

    def test_nph(self, server: PorchServer) -> None:
        raw = raw_exchange(server, b"GET /cgi-bin/nph-raw.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, body = split_response(raw)
        assert head.startswith(b"HTTP/1.1 299 Very Custom\r\n") and b"X-Nph: yes" in head
        assert body == b"straight from the script"

    def test_identical_content_lengths_are_sent_as_one(self, server: PorchServer) -> None:
        raw = raw_exchange(server, b"GET /cgi-bin/same_lengths.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, body = split_response(raw)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"hello"
        lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        assert lengths == [b"Content-Length: 5"] and b"X-Between: kept" in head

    def test_head_request(self, server: PorchServer) -> None:
        response = requests.head(server.url + "/cgi-bin/head.sh", timeout=5)
        assert response.status_code == 200 and response.headers["Content-Length"] == "5"
        assert response.content == b""

    def test_http10_client_gets_a_close_delimited_stream(self, server: PorchServer) -> None:
        raw = raw_exchange(server, b"GET /cgi-bin/stream.py?100000 HTTP/1.0\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding" not in head and len(body) == 100000

    def test_five_mebibytes_streamed(self, server: PorchServer) -> None:
        size = 5 * 1024 * 1024
        response = requests.get(server.url + "/cgi-bin/stream.py", timeout=30, stream=True)
        assert response.headers.get("Transfer-Encoding") == "chunked"
        digest = hashlib.sha256()
        received = 0
        for chunk in response.iter_content(65536):
            digest.update(chunk)
            received += len(chunk)
        assert received == size
        expected = hashlib.sha256((bytes(range(256)) * 256) * 80).hexdigest()
        assert digest.hexdigest() == expected

    def test_streaming_keeps_server_memory_bounded(self, server: PorchServer) -> None:
        if server.concurrency == "forking":  # type: ignore[attr-defined]
            pytest.skip("a fresh child per connection streams in the forking model")
        workers = server_processes(server)
        before = {pid: rss_kib(pid) for pid in workers}
        growth = 0
        received = 0
        with socket.create_connection((server.host, server.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.sendall(b"GET /cgi-bin/stream.py HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            started = time.monotonic()
            while chunk := sock.recv(16384):
                received += len(chunk)
                time.sleep(0.002)
                growth = max(growth, *(rss_kib(pid) - before[pid] for pid in workers))
            elapsed = time.monotonic() - started
        assert received > 5 * 1024 * 1024
        assert elapsed > 0.5  # the reading really was slow
        assert growth < 3 * 1024, f"a server process grew by {growth} KiB"


class TestWholeOrStreamed:
    def test_output_complete_with_its_head_gets_a_content_length(self, server: PorchServer) -> None:
        """Whether the script has exited once its head is parsed is a race (see WHOLE) that a
        loaded machine can lose now and then; so a few tries, on one connection."""
        with server.connect() as sock, sock.makefile("rb") as stream:
            for _ in range(10):
                sock.sendall(b"GET /made/whole.py HTTP/1.1\r\nHost: x\r\n\r\n")
                head, body = read_response(stream)
                assert head.startswith(b"HTTP/1.1 200 ") and body == b"all at once"
                if b"\r\ncontent-length:" in head.lower():
                    break
            assert b"\r\nContent-Length: 11\r\n" in head
            assert b"transfer-encoding" not in head.lower() and b"connection: close" not in head.lower()
            sock.sendall(b"GET /made/whole.py HTTP/1.1\r\nHost: x\r\n\r\n")  # still open
            assert read_response(stream)[1] == b"all at once"

    def test_output_still_being_written_streams(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(b"GET /made/slow.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            started = time.monotonic()
            raw = b""
            while b"one\n" not in raw:
                raw += sock.recv(65536)
            assert time.monotonic() - started < 0.4  # not held back until the script ends
            while chunk := sock.recv(65536):
                raw += chunk
        head, body = split_response(raw)
        assert b"\r\nTransfer-Encoding: chunked" in head and body == b"one\ntwo\n"


def read_response(stream: IO[bytes]) -> tuple[bytes, bytes]:
    """One response, framed by Content-Length or chunked, from a connection that stays open."""
    lines = []
    while (line := stream.readline()) != b"\r\n":
        lines.append(line)
    head = b"".join(lines).rstrip(b"\r\n")
    fields = dict(line.rstrip(b"\r\n").lower().split(b": ", 1) for line in lines[1:])
    if b"content-length" in fields:
        return head, stream.read(int(fields[b"content-length"]))
    body = b""
    while size := int(stream.readline(), 16):
        body += stream.read(size + 2)[:-2]
    stream.readline()
    return head, body


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def split_response(raw: bytes) -> tuple[bytes, bytes]:
    """(head, payload) of one raw response; a chunked body is decoded (it must be complete)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"\r\ntransfer-encoding: chunked" not in head.lower():
        return head, body
    payload = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head, payload
        payload += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


def meta_names(env: dict) -> set[str]:
    return {name for name in env if name.startswith("HTTP_")} | {
        "GATEWAY_INTERFACE",
        "SERVER_SOFTWARE",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "REQUEST_METHOD",
        "QUERY_STRING",
        "SCRIPT_NAME",
        "PATH_INFO",
        "PATH_TRANSLATED",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_PORT",
        "REQUEST_URI",
        "REQUEST_ID",
        "SCRIPT_FILENAME",
        "DOCUMENT_ROOT",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "AUTH_TYPE",
        "HTTPS",
    }


class TestFailures:
    def test_timeout_is_504_within_a_second(self, server: PorchServer) -> None:
        pidfile = server.tmp / "sleep.pid"  # type: ignore[attr-defined]
        pidfile.unlink(missing_ok=True)
        started = time.monotonic()
        response = requests.get(server.url + "/quick/sleep.sh", timeout=10)
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert elapsed < 1 + 1
        assert dead(int(pidfile.read_text()))

    def test_timeout_after_the_head_aborts_the_connection(self, server: PorchServer) -> None:
        started = time.monotonic()
        raw = raw_exchange(server, b"GET /quick/stall.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        assert time.monotonic() - started < 1 + 1
        assert raw.startswith(b"HTTP/1.1 200 ") and b"first part" in raw
        assert not raw.endswith(b"0\r\n\r\n")  # no last chunk: the client sees the cut

    @pytest.mark.parametrize(
        "script, status",
        [
            ("crash.sh", 500),
            ("silent.sh", 502),
            ("half_head.sh", 502),
            ("malformed.sh", 502),
            ("no_cgi_field.sh", 502),
            ("huge_head.py", 502),
            ("unicode_length.sh", 502),  # Content-Length: "\u00b2", a digit to str.isdigit() only
            ("two_lengths.sh", 502),
        ],
    )
    def test_broken_scripts(self, server: PorchServer, script: str, status: int) -> None:
        response = requests.get(f"{server.url}/cgi-bin/{script}", timeout=10)
        assert response.status_code == status
        assert script.encode() not in response.content  # 5xx pages say nothing about internals

    def test_header_block_limit_is_per_mount(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/cgi-bin/envjson.py", timeout=10).status_code == 200
        assert requests.get(server.url + "/tight/created.sh", timeout=10).status_code == 201
        assert requests.get(server.url + "/tight/huge_head.py", timeout=10).status_code == 502

    def test_failures_are_logged_with_the_script(self, server: PorchServer) -> None:
        requests.get(server.url + "/cgi-bin/crash.sh", timeout=10)
        requests.get(server.url + "/cgi-bin/malformed.sh", timeout=10)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            log = server.error_text()
            if "crash.sh: something went badly wrong" in log and "malformed.sh: malformed CGI response" in log:
                break
            time.sleep(0.05)
        assert f"{SCRIPTS}/crash.sh: something went badly wrong" in log
        assert f"{SCRIPTS}/crash.sh: exited with status 3" in log
        assert f"{SCRIPTS}/malformed.sh: malformed CGI response" in log

    def test_content_length_problems_are_logged(self, server: PorchServer) -> None:
        requests.get(server.url + "/cgi-bin/unicode_length.sh", timeout=10)
        requests.get(server.url + "/cgi-bin/two_lengths.sh", timeout=10)
        expected = [
            f"{SCRIPTS}/unicode_length.sh: malformed CGI response: invalid Content-Length '\u00b2'",
            f"{SCRIPTS}/two_lengths.sh: malformed CGI response: differing Content-Length values 5 and 6",
        ]
        deadline = time.monotonic() + 3
        while not all(line in server.error_text() for line in expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = server.error_text()
        assert [line for line in expected if line not in log] == []

    def test_stderr_goes_to_the_error_log_escaped(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/cgi-bin/stderr.sh", timeout=10).text == "ok\n"
        deadline = time.monotonic() + 3
        while "stderr line one" not in server.error_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = server.error_text()
        assert f"{SCRIPTS}/stderr.sh: stderr line one" in log
        assert "\x1b" not in log and "\\x1b[31mwith escape" in log

    def test_a_mebibyte_of_stderr_before_stdout(self, server: PorchServer) -> None:
        started = time.monotonic()
        response = requests.get(server.url + "/made/flood.py", timeout=30)
        assert (response.status_code, response.text) == (200, "after the flood")
        assert time.monotonic() - started < 10  # not stuck until the 20 s timeout
        script = server.tmp / "made" / "flood.py"  # type: ignore[attr-defined]
        last = f"{script}: flood line 09999 "
        deadline = time.monotonic() + 5
        while last not in server.error_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = server.error_text()
        assert f"{script}: flood line 00000 " in log and last in log

    def test_disconnecting_client_kills_the_script(self, server: PorchServer) -> None:
        with server.connect() as sock:
            sock.sendall(b"GET /cgi-bin/tick.sh HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"tick" not in data:
                data += sock.recv(4096)
        body = data.partition(b"\r\n\r\n")[2]
        pid = int(body.split(b"\r\n")[1].split()[0])  # the first chunk starts with "PID\n"
        assert dead(pid, within=5)

    def test_disconnect_stops_a_silent_script(self, porch, tmp_path: Path) -> None:
        pid_file = tmp_path / "quiet.pid"
        srv = porch(
            {
                "mounts": [
                    {"path": "/cgi-bin", "type": "cgi", "root": str(SCRIPTS), "env": {"QUIET_PID_FILE": str(pid_file)}}
                ]
            }
        )
        with srv.connect() as sock:
            sock.sendall(b"GET /cgi-bin/quiet_then_talk.sh HTTP/1.1\r\nHost: x\r\n\r\n")
            deadline = time.monotonic() + 5
            while not pid_file.exists() or not pid_file.read_text().strip():
                assert time.monotonic() < deadline, "the script did not start"
                time.sleep(0.05)
        pid = int(pid_file.read_text())
        assert dead(pid, within=4)  # not the script's 60 s timeout
        lines = srv.wait_access_lines(1)
        assert '" 499 ' in lines[-1]


class TestSourceIsNeverServed:
    @pytest.mark.parametrize(
        "target, status",
        [
            ("/cgi-bin/notexec.sh", 403),
            ("/cgi-bin/notexec.sh/more", 403),
            ("/cgi-bin/missing.sh", 404),
            ("/cgi-bin/", 403),
            ("/cgi-bin/sub", 403),
            ("/cgi-bin/sub%2Finner.sh", 404),  # an encoded separator
            ("/tree/source.cgi", 403),
            ("/tree/innocent.txt", 403),  # a harmless name that is a link to a script
        ],
    )
    def test_refused(self, server: PorchServer, target: str, status: int) -> None:
        response = requests.get(server.url + target, timeout=5)
        assert response.status_code == status
        assert b"SECRET" not in response.content and b"printf" not in response.content

    def test_interpreted_script_needs_no_exec_bit(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/cgi-bin/interp.py", timeout=10).text == "interpreted by python\n"

    def test_dot_segments_never_reach_the_handler(self, server: PorchServer) -> None:
        raw = raw_exchange(server, b"GET /cgi-bin/%2e%2e/cgi-bin/env.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400 ")

    def test_mixed_tree(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/tree/page.txt", timeout=5).text == "plain static text\n"
        assert requests.get(server.url + "/tree/", timeout=5).text == "<p>tree index</p>\n"
        assert requests.get(server.url + "/tree/hello.cgi/x", timeout=5).text == "hello from cgi /x\n"
        assert requests.get(server.url + "/tree/sub/deep.CGI", timeout=5).text == "hello from cgi \n"
        assert requests.get(server.url + "/tree/missing.txt", timeout=5).status_code == 404


class TestLimits:
    def test_resource_limits(self, server: PorchServer) -> None:
        text = requests.get(server.url + "/limited/limits.sh", timeout=10).text
        assert "nofile=64" in text and "cpu=1" in text

    def test_cpu_limit(self, server: PorchServer) -> None:
        started = time.monotonic()
        response = requests.get(server.url + "/limited/spin.py", timeout=20)
        assert response.status_code == 200 and time.monotonic() - started < 8
        deadline = time.monotonic() + 3
        while "spin.py: killed by SIG" not in server.error_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "spin.py: killed by SIG" in server.error_text()

    def test_concurrency_cap(self, server: PorchServer) -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # Long enough sleeps that a loaded machine still has both running at one moment.
            slow = [pool.submit(requests.get, server.url + "/limited/sleep.sh?4", timeout=20) for _ in range(2)]
            deadline = time.monotonic() + 10
            while sum(b"sleep.sh" in cmdline(pid) for pid in scripts_of(server)) < 2:
                assert time.monotonic() < deadline, "the two slow scripts never ran"
                time.sleep(0.02)
            refused = requests.get(server.url + "/limited/env.sh", timeout=5)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert [future.result().status_code for future in slow] == [200, 200]
        assert requests.get(server.url + "/limited/env.sh", timeout=5).status_code == 200


def children(pid: int) -> set[int]:
    """The direct children of ``pid``: the master's workers."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def test_killed_worker_leaves_no_slot_files(
    porch: Callable[..., PorchServer], tmp_path: Path, concurrency: str
) -> None:
    """The slot files of max_concurrent have no name, so a SIGKILL leaves nothing in TMPDIR,
    and the respawned worker's own slots still cap its scripts."""
    private_tmp = tmp_path / "tmpdir"
    private_tmp.mkdir()
    mount = {"path": "/cgi-bin", "type": "cgi", "root": str(SCRIPTS), "timeout": 10, "max_concurrent": 1}
    srv = porch({"concurrency": concurrency, "workers": 1, "mounts": [mount]}, env={"TMPDIR": str(private_tmp)})
    assert requests.get(srv.url + "/cgi-bin/env.sh", timeout=10).status_code == 200
    (worker,) = children(srv.proc.pid)
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: children(srv.proc.pid) - {worker}, "a new worker")
    assert requests.get(srv.url + "/cgi-bin/env.sh", timeout=10).status_code == 200
    assert sorted(path.name for path in private_tmp.iterdir()) == []
    # The new worker's one place, held by a running script (once the last env.sh has been reaped:
    # its response can be out a moment before its process is).
    with wait_until(lambda: stalling(srv), "the script's place"):
        refused = requests.get(srv.url + "/cgi-bin/env.sh", timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    # The client left: the script is stopped within a second and its place given back.
    wait_until(lambda: requests.get(srv.url + "/cgi-bin/env.sh", timeout=10).status_code == 200, "a free place")


def stalling(srv: PorchServer) -> socket.socket | None:
    """A connection whose stall.sh has started (its first part is out), or None if refused (503)."""
    sock = srv.connect()
    sock.sendall(b"GET /cgi-bin/stall.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while b"first part" not in data:
        chunk = sock.recv(4096)
        if not chunk or data.startswith(b"HTTP/1.1 503"):
            sock.close()
            return None
        data += chunk
    return sock


def test_fifty_concurrent_requests(server: PorchServer) -> None:
    def one(number: int) -> tuple[int, dict[str, str]]:
        response = requests.get(f"{server.url}/cgi-bin/env.sh/n{number}?n={number}", timeout=30)
        return response.status_code, env_lines(response.text)

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    for number, (status, env) in enumerate(results):
        assert status == 200
        assert (env["PATH_INFO"], env["QUERY_STRING"]) == (f"/n{number}", f"n={number}")


def test_script_inherits_no_descriptors(server: PorchServer) -> None:
    fds = requests.get(server.url + "/cgi-bin/fds.sh", timeout=5).text.split()
    assert sorted(fds) == ["0", "1", "2", "3"]  # stdin, stdout, stderr, and ls's own directory


def test_no_zombies_and_no_descriptor_leaks(server: PorchServer) -> None:
    """Runs last: everything the tests above started must be gone."""
    for _ in range(10):
        requests.get(server.url + "/cgi-bin/env.sh", headers={"Connection": "close"}, timeout=5)
        requests.get(server.url + "/made/whole.py", headers={"Connection": "close"}, timeout=5)
    deadline = time.monotonic() + 5
    while True:
        zombies = [pid for pid in descendants(server.proc.pid) if process_state(pid) == "Z"]
        left = {pid: cmdline(pid) for pid in scripts_of(server)}
        if not (zombies or left) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert zombies == []
    assert left == {}
    if server.concurrency == "threading":  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while fd_count(server) > server.fds_at_start and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.1)
        assert fd_count(server) == server.fds_at_start  # type: ignore[attr-defined]
