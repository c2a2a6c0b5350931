"""Every start-up mistake is found by one ``porch check`` run and said once, without a traceback.

Real processes on loopback: ``porch check``, the foreground server with its stderr on a pipe,
and ``porch reload``/``stop`` against it through its pidfile.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from certs import make_pki
from conftest import need_program
from porchtest import wait_until

from porch.master.daemon import process_gone, read_pid

PORCH = [sys.executable, "-m", "porch"]
# Imports in `porch check`'s child (run with `python -c`), fails in the server's workers: an
# application whose database is reachable from the checking host only, say.
WORKERS_ONLY_FAILURE = 'import sys\nif sys.argv[0] != "-c":\n    raise RuntimeError("database unreachable")\n'
APP = "def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n"


def porch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PORCH, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_one_run_lists_every_kind_of_problem(tmp_path: Path, taken_port: int) -> None:
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "www").mkdir()
    config = write(
        tmp_path / "porch.yaml",
        {
            "listen": [
                f"127.0.0.1:{taken_port}",
                {"address": "127.0.0.1:0", "tls": {"cert": str(pki.server_cert), "key": str(pki.other_key)}},
            ],
            "threads": "many",
            "pidfile": str(tmp_path / "no-such-dir" / "porch.pid"),
            "log": {"error": str(tmp_path / "no-logs" / "error.log")},
            "mounts": [
                {"path": "/", "type": "static", "root": "www", "bogus": 1},
                {"path": "/", "type": "static", "root": "www"},
                {"path": "/app", "type": "wsgi", "app": "no_such_module_here:app"},
            ],
        },
    )
    result = porch("check", "-c", str(config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    for expected in (
        "threads: expected an integer",
        "mounts[0].bogus: unknown key",
        "mounts[1].path: '/' is already mounted by mounts[0]",
        "mounts[2].app: cannot load 'no_such_module_here:app'",
        "log.error: directory",
        "pidfile: directory",
        "listen[1].tls: the key",
        f"listen[0]: 127.0.0.1:{taken_port} is in use",
    ):
        assert sum(expected in line for line in lines) == 1, (expected, result.stderr)


def test_an_invalid_mount_is_skipped_and_the_others_are_built(tmp_path: Path) -> None:
    config = write(
        tmp_path / "porch.yaml",
        {
            "listen": ["127.0.0.1:0"],
            "mounts": [
                {"path": "/a", "type": "wsgi", "app": "no_such_module_a:app", "bogus": 1},
                {"path": "/b", "type": "wsgi", "app": "no_such_module_b:app"},
            ],
        },
    )
    result = porch("check", "-c", str(config))
    assert result.returncode == 1
    assert "mounts[0].bogus" in result.stderr and "no_such_module_a" not in result.stderr
    assert "mounts[1].app: cannot load 'no_such_module_b:app'" in result.stderr


def test_an_import_error_shows_the_applications_frames_only(tmp_path: Path) -> None:
    (tmp_path / "broken_app_module.py").write_text("def helper():\n    raise KeyError('settings')\n\nhelper()\n")
    config = write(
        tmp_path / "porch.yaml",
        {"listen": ["127.0.0.1:0"], "mounts": [{"path": "/", "type": "wsgi", "app": "broken_app_module:app"}]},
    )
    result = porch("check", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1 and "broken_app_module.py" in result.stderr, result.stderr
    assert "KeyError: 'settings'" in result.stderr
    porch_dirs = (str(Path(__file__).parents[1] / "server"), str(Path(__file__).parents[1] / "handlers"))
    assert not any(directory in result.stderr for directory in porch_dirs), result.stderr


def test_serving_with_a_missing_log_directory_says_one_line(tmp_path: Path) -> None:
    config = write(
        tmp_path / "porch.yaml",
        {"listen": ["127.0.0.1:0"], "log": {"error": str(tmp_path / "missing" / "error.log")}},
    )
    result = porch("-c", str(config))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"porch: {config}:4: log.error: directory {tmp_path / 'missing'} of the log file error.log does not exist "
        "(create it first)"
    ]
    assert "missing" in porch("check", "-c", str(config)).stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind any port")
def test_a_privileged_port_gets_the_hint(tmp_path: Path) -> None:
    config = write(tmp_path / "porch.yaml", {"listen": ["127.0.0.1:80"]})
    result = porch("check", "-c", str(config))
    assert result.returncode == 1 and "CAP_NET_BIND_SERVICE" in result.stderr


def test_warnings_are_printed_with_the_problems(tmp_path: Path) -> None:
    """A warning is not held back until the problems are fixed: the next run would bring it as news."""
    (tmp_path / "cgi").mkdir()
    script = tmp_path / "cgi" / "hello.cgi"
    script.write_text("#!/bin/sh\n")
    config = write(
        tmp_path / "porch.yaml",
        {"listen": ["127.0.0.1:0"], "threads": "many", "mounts": [{"path": "/cgi-bin", "type": "cgi", "root": "cgi"}]},
    )
    result = porch("check", "-c", str(config))
    assert result.returncode == 1 and result.stdout == ""
    problem, warning = result.stderr.splitlines()
    assert problem == f"porch: {config}:3: threads: expected an integer, got 'many'"
    assert warning.startswith(f"porch: {config}:5: warning: mounts[0]: {script}: not executable")


def without_root_rights() -> list[str]:
    """A prefix running a command without root's right to write into any directory (none for a user)."""
    if os.geteuid() != 0:
        return []
    return [need_program("setpriv"), "--bounding-set", "-dac_override", "--"]


def test_a_unix_socket_needs_a_directory_the_master_can_write(tmp_path: Path) -> None:
    missing, closed = tmp_path / "no-such-dir", tmp_path / "closed"
    closed.mkdir(mode=0o555)
    listen = [f"unix:{missing}/porch.sock", f"unix:{closed}/porch.sock"]
    config = write(tmp_path / "porch.yaml", {"listen": listen, "mounts": [{"path": "/", "type": "status"}]})
    result = subprocess.run(
        [*without_root_rights(), *PORCH, "check", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"porch: {config}:2: listen[0]: directory {missing} of the socket {missing}/porch.sock does not exist "
        "(create it first)",
        f"porch: {config}:3: listen[1]: cannot create the socket {closed}/porch.sock: directory {closed} is not "
        "writable (permission denied)",
    ]


class Server:
    """``porch -c FILE`` in the foreground, its stderr on a pipe."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [*PORCH, "-c", str(config)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=config.parent
        )
        self.stderr = b""
        first = self.read_until(b"porch: serving ")
        self.url = first.split()[2].decode()

    def read_until(self, marker: bytes, timeout: float = 10.0) -> bytes:
        """Read stderr until a line containing ``marker``; that line."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while marker not in self.stderr or not self.stderr.split(marker, 1)[1].count(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stderr], [], [], left)[0]:
                pytest.fail(f"no {marker!r} on stderr: {self.stderr!r}")
            chunk = os.read(self.proc.stderr.fileno(), 65536)
            if not chunk:
                pytest.fail(f"the server exited: {self.stderr!r}")
            self.stderr += chunk
        return next(line for line in self.stderr.splitlines() if marker in line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def server() -> Iterator[Any]:
    started: list[Server] = []

    def start(config: Path) -> Server:
        started.append(Server(config))
        return started[-1]

    yield start
    for each in started:
        each.close()


def served(tmp_path: Path, **settings: Any) -> Path:
    (tmp_path / "www").mkdir(exist_ok=True)
    (tmp_path / "www" / "index.html").write_text("hello\n")
    data = {
        "listen": ["127.0.0.1:0"],
        "workers": 1,
        "threads": 4,
        "pidfile": "porch.pid",
        "log": {"error": "error.log", "access": False},
        "mounts": [{"path": "/", "type": "static", "root": "www"}],
        **settings,
    }
    return write(tmp_path / "porch.yaml", data)


def test_the_first_line_says_where_to_go_once(tmp_path: Path, server: Any) -> None:
    config = served(tmp_path)
    running = server(config)
    assert running.url.startswith("http://127.0.0.1:") and running.url.endswith("/")
    result = porch("stop", "-c", str(config))
    assert result.returncode == 0, result.stderr
    running.proc.wait(timeout=10)
    assert running.proc.stderr is not None
    running.stderr += running.proc.stderr.read()
    lines = running.stderr.decode().splitlines()
    assert lines == [f"porch: serving {running.url} ({config}, 1 worker × 4 threads)"]


def test_a_non_executable_cgi_script_is_warned_about_and_logged(tmp_path: Path, server: Any) -> None:
    (tmp_path / "cgi").mkdir()
    script = tmp_path / "cgi" / "hello.cgi"
    script.write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nhi'\n")
    config = served(tmp_path, mounts=[{"path": "/cgi-bin", "type": "cgi", "root": "cgi"}])
    checked = porch("check", "-c", str(config))
    assert checked.returncode == 0
    assert f"warning: mounts[0]: {script}: not executable" in checked.stdout and "chmod +x" in checked.stdout
    running = server(config)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(running.url + "cgi-bin/hello.cgi", timeout=5)
    assert refused.value.code == 403
    log_lines = wait_until(
        lambda: [line for line in (tmp_path / "error.log").read_text().splitlines() if "chmod +x" in line],
        "the error-log line",
    )
    assert len(log_lines) == 1 and str(script) in log_lines[0]


def test_reload_waits_for_the_outcome(tmp_path: Path, server: Any) -> None:
    config = served(tmp_path)
    running = server(config)
    good = porch("reload", "-c", str(config))
    assert (good.returncode, good.stdout) == (0, f"reloaded (pid {running.proc.pid}, generation 1)\n"), good.stderr

    broken = config.read_text()
    config.write_text(broken + "max_requests: many\n")
    refused = porch("reload", "-c", str(config))
    assert refused.returncode == 1 and "max_requests: expected an integer" in refused.stderr

    (tmp_path / "app_failing.py").write_text(WORKERS_ONLY_FAILURE + APP)
    served(tmp_path, mounts=[{"path": "/", "type": "wsgi", "app": "app_failing:application", "pythonpath": ["."]}])
    failed = porch("reload", "-c", str(config), "--timeout", "20")
    assert failed.returncode == 1, failed.stdout
    assert "database unreachable" in failed.stderr and "reload failed" in failed.stderr
    assert urllib.request.urlopen(running.url, timeout=5).status == 200, "the old generation still serves"


def test_stop_finds_the_pidfile_of_a_config_that_no_longer_parses(tmp_path: Path, server: Any) -> None:
    config = served(tmp_path)
    running = server(config)
    config.write_text(config.read_text() + "mounts: [\n")
    assert porch("status", "-c", str(config)).returncode == 0
    stopped = porch("stop", "-c", str(config))
    assert stopped.returncode == 0 and stopped.stdout == f"stopped (pid {running.proc.pid})\n", stopped.stderr
    assert process_gone(running.proc.pid) or running.proc.wait(timeout=5) == 0
    assert read_pid(tmp_path / "porch.pid") is None


def test_without_a_file_warnings_are_printed_with_the_problems(tmp_path: Path, server: Any) -> None:
    """`porch serve DIR --check-config` (no config file) brings its warnings with its problems too:
    here the port is the running porch's own (a warning) and the access log cannot be written."""
    running = server(served(tmp_path))
    port = running.url.rsplit(":", 1)[1].strip("/")
    result = porch(
        "serve", str(tmp_path / "www"), "-b", f"127.0.0.1:{port}", "-p", str(tmp_path / "porch.pid"),
        "--access-logfile", str(tmp_path / "missing" / "access.log"), "--check-config",
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    problem, warning = result.stderr.splitlines()
    assert "access" in problem and "does not exist" in problem
    assert "warning" in warning and f"127.0.0.1:{port} is in use" in warning and "running porch" in warning
