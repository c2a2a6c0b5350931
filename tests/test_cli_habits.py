"""The command-line habits of gunicorn and ``python -m http.server``, as a user brings them to porch.

Every test runs ``python -m porch`` in a subprocess: servers on free loopback ports, stopped with
TERM at the end of each test; ``--check-config`` where only the effective values matter.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from porchtest import free_port, wait_until

PORCH = [sys.executable, "-m", "porch"]
LISTENING = re.compile(r"listening on (\S+)")
STATUS_CONFIG = "threads: 8\nmounts:\n  - {path: /status, type: status}\n  - {path: /, type: static, root: www}\n"
START_TIMEOUT_SECONDS = 10.0  # for a line porch writes within a second
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the root policy applies to root only")


def environment(porch_args: str | None = None) -> dict[str, str]:
    """This environment without the caller's PORCH_ARGS, or with ``porch_args`` as PORCH_ARGS."""
    env = {name: value for name, value in os.environ.items() if name != "PORCH_ARGS"}
    if porch_args is not None:
        env["PORCH_ARGS"] = porch_args
    return env


def porch(*args: str, cwd: Path, porch_args: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PORCH, *args], capture_output=True, text=True, timeout=30, cwd=cwd, env=environment(porch_args)
    )


class Running:
    """A porch process whose stdout (the default access log) and stderr (error log) are read with a deadline."""

    def __init__(self, args: tuple[str, ...], cwd: Path, porch_args: str | None) -> None:
        self.proc = subprocess.Popen(
            [*PORCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=environment(porch_args)
        )
        self.stdout = self.stderr = ""

    def until(
        self, pattern: re.Pattern[str], count: int = 1, *, stdout: bool = False, timeout: float = 10.0
    ) -> list[str]:
        """The first ``count`` matches of ``pattern`` in stderr (or stdout); fail with what porch said otherwise."""
        stream = self.proc.stdout if stdout else self.proc.stderr
        assert stream is not None
        name = "stdout" if stdout else "stderr"
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while len(pattern.findall(getattr(self, name))) < count:
            ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(stream.fileno(), 65536) if ready else b""
            if not chunk:
                pytest.fail(f"no {pattern.pattern!r} on {name} within {START_TIMEOUT_SECONDS:g} s:\n{self.stderr}")
            setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))
        return pattern.findall(getattr(self, name))[:count]

    def addresses(self, count: int = 1) -> list[str]:
        """The addresses of the first ``count`` "listening on" lines."""
        return self.until(LISTENING, count)

    def stop(self) -> None:
        """TERM, and wait for the exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.stdout += out.decode(errors="replace")
        self.stderr += err.decode(errors="replace")


@contextmanager
def running(*args: str, cwd: Path, porch_args: str | None = None) -> Iterator[Running]:
    server = Running(args, cwd, porch_args)
    try:
        yield server
    finally:
        server.stop()


class UnixConnection(http.client.HTTPConnection):
    """http.client over a unix socket (``requests`` speaks TCP only)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def get(address: str, path: str) -> str:
    """The body of GET ``path`` from porch at ``address`` (as its "listening on" line names it)."""
    if address.startswith("unix:"):
        connection = UnixConnection(address[5:])
        try:
            connection.request("GET", path)
            answer = connection.getresponse()
            assert answer.status == 200
            return answer.read().decode()
        finally:
            connection.close()
    response = requests.get(f"http://{address}{path}", timeout=5)
    assert response.status_code == 200
    return response.text


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory with hello.txt, www/hello.txt and a status config, as the working directory."""
    (tmp_path / "hello.txt").write_text("hello from the directory\n")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("hello from www\n")
    (tmp_path / "porch.yaml").write_text(STATUS_CONFIG)
    return tmp_path


# --- -b/--bind in every form, at the top level and under serve ---------------------------------

BIND_FORMS = [
    pytest.param("127.0.0.1:{port}", "127.0.0.1:{port}", id="host:port"),
    pytest.param(":{port}", "127.0.0.1:{port}", id=":port-is-loopback"),
    pytest.param("{port}", "127.0.0.1:{port}", id="port-is-loopback"),
    pytest.param("[::1]:{port}", "[::1]:{port}", id="[v6]:port"),
    pytest.param("unix:porch.sock", "unix:{cwd}/porch.sock", id="unix-relative"),
]


@pytest.mark.parametrize("level", [[], ["serve"]], ids=["top", "serve"])
@pytest.mark.parametrize(("form", "expected"), BIND_FORMS)
def test_every_bind_form_serves(site: Path, level: list[str], form: str, expected: str) -> None:
    host = "::1" if form.startswith("[") else "127.0.0.1"
    try:
        port = free_port(host)
    except OSError:
        pytest.skip(f"no {host} here")
    with running(*level, "-b", form.format(port=port), cwd=site) as server:
        [address] = server.addresses(1)
        assert address == expected.format(port=port, cwd=site)
        assert get(address, "/hello.txt") == "hello from the directory\n"


@pytest.mark.parametrize("level", [[], ["serve"]], ids=["top", "serve"])
def test_bind_is_repeatable(site: Path, level: list[str]) -> None:
    first, second = free_port(), free_port()
    with running(*level, "-b", f":{first}", "--bind", f"127.0.0.1:{second}", cwd=site) as server:
        addresses = server.addresses(2)
        assert sorted(addresses) == sorted([f"127.0.0.1:{first}", f"127.0.0.1:{second}"])
        assert all(get(address, "/hello.txt") == "hello from the directory\n" for address in addresses)


def test_bind_on_a_config_file_replaces_its_listeners(site: Path) -> None:
    port = free_port()
    with running("-c", "porch.yaml", "-b", str(port), cwd=site) as server:
        assert server.addresses(1) == [f"127.0.0.1:{port}"]
        assert get(f"127.0.0.1:{port}", "/hello.txt") == "hello from www\n"


def test_serve_bind_host_alone_takes_the_port(site: Path) -> None:
    """The old ``porch serve --bind HOST --port N`` keeps working."""
    port = free_port()
    with running("serve", "--bind", "127.0.0.1", "--port", str(port), cwd=site) as server:
        assert server.addresses(1) == [f"127.0.0.1:{port}"]


# --- http.server habits ------------------------------------------------------------------------


def test_serve_port_argument(site: Path) -> None:
    """``porch serve 8000`` as ``python -m http.server 8000``: the current directory, on loopback."""
    port = free_port()
    with running("serve", str(port), cwd=site) as server:
        assert server.addresses(1) == [f"127.0.0.1:{port}"]
        assert get(f"127.0.0.1:{port}", "/hello.txt") == "hello from the directory\n"


def test_serve_a_directory_named_like_a_number_with_d(site: Path) -> None:
    (site / "2024").mkdir()
    (site / "2024" / "hello.txt").write_text("hello from 2024\n")
    port = free_port()
    with running("serve", str(port), "-d", "2024", cwd=site) as server:
        [address] = server.addresses(1)
        assert get(address, "/hello.txt") == "hello from 2024\n"


def test_serve_directory_argument_still_works(site: Path) -> None:
    with running("serve", "www", "--port", str(free_port()), cwd=site) as server:
        [address] = server.addresses(1)
        assert get(address, "/hello.txt") == "hello from www\n"


def test_serve_takes_directory_and_port_in_either_order(site: Path) -> None:
    port = free_port()
    with running("serve", str(port), "www", cwd=site) as server:
        assert server.addresses(1) == [f"127.0.0.1:{port}"]
        assert get(f"127.0.0.1:{port}", "/hello.txt") == "hello from www\n"


def test_serve_refuses_a_port_or_directory_given_twice(site: Path) -> None:
    twice = porch("serve", "8001", "--port", "8002", cwd=site)
    assert twice.returncode == 2 and "the port is given twice: 8001 and 8002" in twice.stderr
    both = porch("serve", "www", "-d", "www", cwd=site)
    assert both.returncode == 2 and "the directory is given twice: www and www" in both.stderr


# --- workers, threads and logs -----------------------------------------------------------------


def test_workers_and_threads_reach_the_workers_and_survive_a_reload(site: Path) -> None:
    port = free_port()
    with running(
        "-c", "porch.yaml", "-b", str(port), "-w", "2", "--threads", "4", "-p", "porch.pid", cwd=site
    ) as server:
        server.addresses(1)
        assert server.until(re.compile(r"master starting \(pid \d+, (\d+ \w+ workers)\)")) == ["2 threading workers"]

        def threads(generation: int) -> list[int] | None:
            """Threads of each worker of ``generation``, once both have reported them."""
            status = json.loads(get(f"127.0.0.1:{port}", "/status?format=json"))
            found = [worker["threads"] for worker in status.get("workers", []) if worker["generation"] == generation]
            return found if len(found) == 2 and all(found) else None

        assert wait_until(lambda: threads(0), "two workers") == [4, 4]
        os.kill(int((site / "porch.pid").read_text()), signal.SIGHUP)  # the file says threads: 8
        assert wait_until(lambda: threads(1), "two reloaded workers") == [4, 4]


def test_log_options(site: Path) -> None:
    port = free_port()
    with running(
        "serve", str(port), "--access-logfile", "access.log", "--error-logfile", "error.log", cwd=site
    ) as server:
        wait_until(lambda: "listening on" in read(site / "error.log"), "the error log")
        get(f"127.0.0.1:{port}", "/hello.txt")
        wait_until(lambda: "GET /hello.txt" in read(site / "access.log"), "the access log")
    assert "listening on" not in server.stderr


def test_access_log_on_stdout_and_log_level(site: Path) -> None:
    port = free_port()
    with running("serve", str(port), "--access-logfile", "-", "--log-level", "warning", cwd=site) as server:
        wait_until(lambda: connectable(port), "porch to accept connections")
        get(f"127.0.0.1:{port}", "/hello.txt")
        server.until(re.compile("GET /hello.txt"), stdout=True)
    assert "listening on" not in server.stderr and "[INFO]" not in server.stderr


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def connectable(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# --- PORCH_ARGS and --check-config -------------------------------------------------------------


def test_check_config_prints_the_effective_values(site: Path) -> None:
    result = porch("--check-config", "-c", "porch.yaml", "-b", ":9", "-w", "3", "--threads", "2", cwd=site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("porch.yaml OK: 1 listener (127.0.0.1:9), threading x3 workers, 2 mounts")
    assert result.stdout.rstrip().endswith("; from the command line: threads: 2")
    assert porch("check", "-c", "porch.yaml", "-b", ":9", "-w", "3", "--threads", "2", cwd=site).stdout == result.stdout


def test_check_config_fails_like_check(site: Path) -> None:
    (site / "broken.yaml").write_text("threads: lots\n")
    for command in (["--check-config"], ["check"]):
        result = porch(*command, "-c", "broken.yaml", cwd=site)
        assert result.returncode == 1
        assert "broken.yaml:1: threads: expected an integer, got 'lots'" in result.stderr


def test_check_config_of_serve_and_of_the_log_options(site: Path) -> None:
    result = porch("serve", "www", "--check-config", "--log-level", "debug", "--access-logfile", "a.log", cwd=site)
    assert result.returncode == 0, result.stderr
    assert "<command line> OK: 1 listener (127.0.0.1:8000)" in result.stdout
    assert f"log.access: '{site}/a.log', log.level: 'debug'" in result.stdout


def test_porch_args_apply_and_the_command_line_wins(site: Path) -> None:
    args = "-w 2 --threads 3 -b 127.0.0.1:7001 -b 127.0.0.1:7002"
    from_env = porch("--check-config", "-c", "porch.yaml", cwd=site, porch_args=args)
    assert "2 listeners (127.0.0.1:7001, 127.0.0.1:7002), threading x2 workers" in from_env.stdout, from_env.stderr
    assert "threads: 3" in from_env.stdout
    overridden = porch("check", "-c", "porch.yaml", "-w", "1", "-b", ":7003", cwd=site, porch_args=args)
    assert "1 listener (127.0.0.1:7003), threading x1 worker," in overridden.stdout, overridden.stderr
    assert "threads: 3" in overridden.stdout


def test_porch_args_serve(site: Path) -> None:
    port = free_port()
    with running("serve", cwd=site, porch_args=f"-b :{port}") as server:
        assert server.addresses(1) == [f"127.0.0.1:{port}"]


def test_porch_args_holds_options_only(site: Path) -> None:
    result = porch("--check-config", cwd=site, porch_args="serve")
    assert result.returncode == 2 and "PORCH_ARGS: error: holds options only" in result.stderr


# --- messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-w", "0"], "porch: command line: --workers: must be greater than 0, got 0"),
        (["--threads", "many"], "porch: command line: --threads: expected an integer, got 'many'"),
        (
            ["--log-level", "loud"],
            "porch: command line: --log-level: expected one of 'debug', 'info', 'warning', 'error'",
        ),
        (["-b", "nowhere:port"], "porch: command line: --bind: 'nowhere:port': port must be a number"),
        (
            ["-b", "http://127.0.0.1:8126"],
            "porch: command line: --bind: 'http://127.0.0.1:8126': expected an address like 127.0.0.1:8000, "
            "not a URL: write '127.0.0.1:8126'",
        ),
    ],
)
@pytest.mark.parametrize("level", [["-c", "porch.yaml"], ["serve"], ["--check-config", "-c", "porch.yaml"]])
def test_a_bad_option_value_names_the_option(site: Path, level: list[str], args: list[str], message: str) -> None:
    result = porch(*level, *args, cwd=site)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr


def test_a_root_that_is_a_file_is_not_a_directory(site: Path) -> None:
    result = porch("serve", "hello.txt", cwd=site)
    assert result.returncode == 1 and result.stderr == "porch: command line: DIR: 'hello.txt' is not a directory\n"


def test_a_gunicorn_option_porch_lacks_is_pointed_to_its_setting(site: Path) -> None:
    result = porch("-k", "gevent", cwd=site)
    assert result.returncode == 2
    assert "porch has no -k (gunicorn's); set `concurrency:` (threading or forking) in the config" in result.stderr


def test_p_is_the_pidfile_not_a_port(site: Path) -> None:
    result = porch("serve", "-p", "8080", cwd=site)
    assert result.returncode == 2
    assert "-p/--pidfile names the pidfile (as gunicorn's -p), not a port" in result.stderr


@needs_root
def test_serve_as_root_on_every_interface_needs_allow_root(site: Path) -> None:
    refused = porch("serve", "-b", "0.0.0.0", "--port", "0", cwd=site)
    assert refused.returncode == 1 and "refusing to serve 0.0.0.0:0" in refused.stderr
    assert "--allow-root" in refused.stderr
    port = free_port("0.0.0.0")
    with running("serve", "-b", "0.0.0.0", "--port", str(port), "--allow-root", cwd=site) as server:
        assert server.addresses(1) == [f"0.0.0.0:{port}"]
        assert get(f"127.0.0.1:{port}", "/hello.txt") == "hello from the directory\n"


def test_serve_as_a_daemon_with_pidfile_and_log_options(site: Path) -> None:
    port = free_port()
    logs = ("--error-logfile", "e.log", "--access-logfile", "a.log")
    started = porch("serve", "www", str(port), "-D", "-p", "run.pid", *logs, cwd=site)
    try:
        assert started.returncode == 0 and started.stdout.startswith("started (pid "), started.stderr
        assert get(f"127.0.0.1:{port}", "/hello.txt") == "hello from www\n"
    finally:
        stopped = porch("stop", "-p", "run.pid", cwd=site)
    assert stopped.returncode == 0, stopped.stderr
    assert "listening on" in (site / "e.log").read_text() and "GET /hello.txt" in (site / "a.log").read_text()
