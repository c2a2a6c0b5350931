"""``porch top`` as a user runs it, against real servers: one frame with ``--once``, the server found
through ``--url`` or its config (TCP, a virtual host, a Unix socket), the refreshing screen on a
terminal and in a pipe, and the one-line errors."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from certs import make_pki
from porchtest import PorchServer, wait_until

from porch.top import fit, frame

PORCH = [sys.executable, "-m", "porch"]
ESCAPE = "\x1b["
SLOW_APP = """
import time

def application(environ, start_response):
    time.sleep(float(environ["QUERY_STRING"] or "0"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
"""


def top(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``porch top ARGS`` with stdout a pipe (not a terminal), from ``cwd`` (no default config there)."""
    return subprocess.run([*PORCH, "top", *args], capture_output=True, text=True, timeout=30, cwd=cwd)


def status(server: PorchServer, path: str = "/status", host: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(f"{server.url}{path}?format=json", headers={"Host": host} if host else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        document: dict[str, Any] = json.load(response)
    return document


def worker_pids(server: PorchServer, count: int, path: str = "/status", host: str | None = None) -> list[int]:
    """The pids of the ``count`` workers once the master's snapshot says they all serve."""

    def listed() -> list[int]:
        document = status(server, path, host)
        workers = document.get("workers", [])
        serving = document.get("state") == "ready" and all(worker["state"] == "serving" for worker in workers)
        return [worker["pid"] for worker in workers] if serving and len(workers) == count else []

    pids: list[int] = wait_until(listed, f"{count} serving workers in the status JSON")
    return pids


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_once_prints_one_frame_with_every_worker(
    porch: Callable[..., PorchServer], tmp_path: Path, concurrency: str
) -> None:
    server = porch({"concurrency": concurrency, "workers": 2, "mounts": [{"path": "/status", "type": "status"}]})
    pids = worker_pids(server, 2)
    result = top("--once", "--url", f"{server.url}/status", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("porch/") and " ready " in lines[0] and concurrency in lines[0]
    rows: dict[int, str] = {}
    for line in lines:  # the workers' table; a later table (requests in progress) starts with pids too
        if line.split() and line.split()[0].isdigit():
            rows.setdefault(int(line.split()[0]), line)
    assert set(pids) <= set(rows)
    assert all(" serving " in rows[pid] for pid in pids), result.stdout
    assert ESCAPE not in result.stdout  # no colours and no screen control in a pipe


def test_once_shows_the_requests_being_served(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    mounts = [
        {"path": "/status", "type": "status"},
        {"path": "/app", "type": "wsgi", "app": "slowapp:application", "pythonpath": [str(tmp_path)]},
    ]
    server = porch({"workers": 1, "mounts": mounts})
    slow = threading.Thread(target=lambda: urllib.request.urlopen(f"{server.url}/app/sleep?2", timeout=10).read())
    slow.start()
    try:
        wait_until(
            lambda: any(busy["path"] == "/app/sleep" for w in status(server).get("workers", []) for busy in w["busy"]),
            "the slow request in the snapshot",
        )
        result = top("--once", "--url", f"{server.url}/status", cwd=tmp_path)
    finally:
        slow.join()
    assert result.returncode == 0, result.stderr
    busy = [line.split() for line in result.stdout.splitlines() if line.endswith("/app/sleep")]
    assert len(busy) == 1
    assert busy[0][2:3] == ["GET"] and "127.0.0.1" in busy[0]


def test_the_config_leads_to_the_status_mount_on_its_virtual_host(
    porch: Callable[..., PorchServer], tmp_path: Path
) -> None:
    """``-c FILE``: the first status mount (here only for Host ``ops.example``) on the first listener."""
    mounts = [{"path": "/ops/status", "type": "status", "host": "ops.example"}]
    server = porch({"workers": 2, "mounts": mounts})
    pids = worker_pids(server, 2, "/ops/status", host="ops.example")
    # The server listens on port 0; what top reads is that config with the port it got.
    config = tmp_path / "top.yaml"
    config.write_text(yaml.safe_dump({"listen": [server.address], "mounts": mounts}))
    result = top("--once", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all(str(pid) in result.stdout for pid in pids)


def test_the_config_leads_to_a_unix_socket(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    socket_path = tmp_path / "porch.sock"
    server = porch({"listen": [f"unix:{socket_path}"], "mounts": [{"path": "/status", "type": "status"}]})
    result = top("--once", "-c", str(server.config_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f" master {server.proc.pid} " in result.stdout.splitlines()[0]


def test_an_https_listener_on_loopback_is_read_without_verifying(
    porch: Callable[..., PorchServer], tmp_path: Path
) -> None:
    """The certificate is self-signed: on loopback top reads it anyway, through the config or --url."""
    pki = make_pki(tmp_path / "pki")
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key)}
    mounts = [{"path": "/status", "type": "status"}]
    server = porch({"listen": [{"address": "127.0.0.1:0", "tls": tls}], "mounts": mounts})
    config = tmp_path / "top.yaml"
    config.write_text(yaml.safe_dump({"listen": [{"address": server.address, "tls": tls}], "mounts": mounts}))
    for args in (["-c", str(config)], ["--url", f"https://{server.address}/status"]):
        result = top("--once", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f" master {server.proc.pid} " in result.stdout.splitlines()[0]
    plain = top("--once", "--url", f"http://{server.address}/status", cwd=tmp_path)
    assert plain.returncode == 1 and plain.stderr.startswith("porch: cannot reach ")


def test_an_unreachable_server_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/status"
    result = top("--once", "--url", url, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"porch: cannot reach {url}: Connection refused\n"


def test_a_mount_that_is_not_a_status_mount_is_refused(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    server = porch({"mounts": [{"path": "/metrics", "type": "metrics"}]})
    for path, reason in (("/metrics", "something other than a JSON object"), ("/elsewhere", "404 Not Found")):
        result = top("--once", "--url", server.url + path, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.startswith(f"porch: cannot reach {server.url}{path}: ")
        assert reason in result.stderr and result.stderr.count("\n") == 1


def test_a_config_without_status_mount_says_how_to_add_one(tmp_path: Path) -> None:
    config = tmp_path / "porch.yaml"
    config.write_text(yaml.safe_dump({"mounts": [{"path": "/", "type": "static", "root": str(tmp_path)}]}))
    result = top("--once", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"porch: {config} has no status mount: ")
    assert "type: status" in result.stderr and "--url" in result.stderr


def test_without_config_or_url_it_says_what_to_give(tmp_path: Path) -> None:
    result = top("--once", cwd=tmp_path)  # no ./config/porch.yaml here
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "-c FILE or --url URL" in result.stderr


def test_a_broken_config_is_reported_as_porch_check_would(tmp_path: Path) -> None:
    config = tmp_path / "porch.yaml"
    config.write_text("mounts:\n  - {path: /status, type: statuss}\n")
    result = top("--once", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"porch: {config}:2: mounts[0].type: ")


def test_refreshing_in_a_pipe_retries_and_stops_quietly_on_ctrl_c(tmp_path: Path) -> None:
    """Without a terminal, frames are appended; an unreachable server is retried, not fatal."""
    url = f"http://127.0.0.1:{closed_port()}/status"
    proc = subprocess.Popen(
        [*PORCH, "top", "--interval", "0.1", "--url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    seen = [proc.stdout.readline() for _ in range(3)]  # three attempts, a line each
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert stderr == ""
    assert all(line.startswith(f"cannot reach {url}: Connection refused") for line in seen)
    assert ESCAPE not in "".join(seen) + stdout


def read_until(fd: int, wanted: str, timeout: float = 15.0) -> str:
    """What the terminal receives until ``wanted`` appears in it (fails after ``timeout``)."""
    received = b""
    deadline = time.monotonic() + timeout
    while wanted.encode() not in received:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"no {wanted!r} on the terminal; got {received!r}")
        try:
            received += os.read(fd, 65536)
        except OSError:  # EIO: the other side closed
            pytest.fail(f"the terminal closed before {wanted!r}; got {received!r}")
    return received.decode(errors="replace")


def test_on_a_terminal_it_redraws_in_colour_fitted_and_restores_the_screen(
    porch: Callable[..., PorchServer], tmp_path: Path
) -> None:
    server = porch({"workers": 3, "mounts": [{"path": "/status", "type": "status"}]})
    worker_pids(server, 3)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 6, 50, 0, 0))  # 6 rows, 50 columns
    env = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [*PORCH, "top", "--interval", "0.2", "--url", f"{server.url}/status"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=tmp_path,
        env={**env, "TERM": "xterm"},
    )
    os.close(terminal)
    try:
        shown = read_until(controller, "more lines")  # 3 header lines, a table of 4: cut to 6 rows
        shown += read_until(controller, "\x1b[H\x1b[2J")  # and drawn again
        proc.send_signal(signal.SIGINT)
        shown += read_until(controller, "\x1b[?1049l")  # the screen given back
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    assert shown.startswith("\x1b[?1049h")
    assert "\x1b[32m" in shown  # "ready" in green
    frame_text = shown.rpartition("\x1b[H\x1b[2J")[0].rpartition("\x1b[H\x1b[2J")[2]
    rows = frame_text.split("\r\n")  # the last line without one: it would scroll the screen
    # 3 worker lines are cut at least; top's own status requests may be in flight too
    assert len(rows) == 6 and re.fullmatch(r"\.\.\. \d+ more lines", strip_styles(rows[-1]))
    assert int(strip_styles(rows[-1]).split()[1]) >= 3
    assert all(len(strip_styles(row)) <= 50 for row in rows)
    assert "Traceback" not in shown


def strip_styles(text: str) -> str:
    """``text`` without the SGR sequences (``ESC [ ... m``) that colour it."""
    parts = text.split(ESCAPE)
    return parts[0] + "".join(part.partition("m")[2] for part in parts[1:])


def test_a_frame_escapes_client_text_and_fits_the_terminal() -> None:
    """A request path is the client's: control characters in it are shown escaped, never sent."""
    now = time.time()
    busy = [
        {"thread": "porch-2", "method": "GET", "path": "/x\x1b[2J", "client": "::1", "age_seconds": 0.5},
        {"thread": "porch-3", "method": "POST", "path": "/old", "client": "::1", "age_seconds": 9.25},
    ]
    worker = {"pid": 41, "generation": 1, "state": "serving", "started": now - 61, "requests": 12.0, "busy": busy}
    snapshot = {"software": "porch/9.9", "version": "9.9", "state": "ready", "time": now, "workers": [worker]}
    lines = [text for text, _ in frame(snapshot, now)]
    assert not any("\x1b" in line for line in lines)
    rows = [line.split() for line in lines if line.split()[:1] == ["41"]]
    paths = [row[-1] for row in rows if row[1].startswith("porch-")]
    assert paths == ["/old", "/x\\x1b[2J"]  # the oldest request first
    assert [row[2] for row in rows if row[-2:] == ["1m", "01s"]] == ["serving"]  # the worker row, up 61 s
    fitted = fit(frame(snapshot, now), 20, 4)
    assert len(fitted) == 4 and fitted[-1][0].endswith("more lines")
    assert all(len(text) <= 20 for text, _ in fitted)
