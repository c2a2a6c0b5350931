"""Upgrading porch itself (USR2, `porch upgrade`) and stopping the way a load balancer needs
(`drain_delay`), against real masters, workers and sockets."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from loadgen import Load
from porchtest import PorchServer, free_port, wait_until

from porch.config.load import config_from_mapping
from porch.master.daemon import process_gone, read_pid


def site(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("<h1>hello</h1>")
    return {
        "workers": 2,
        "threads": 4,
        "pidfile": str(tmp_path / "porch.pid"),
        "mounts": [
            {"path": "/", "type": "static", "root": str(root)},
            {"path": "/readyz", "type": "ready"},
        ],
        **extra,
    }


def porch_command(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "porch", *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


@pytest.fixture
def masters() -> Iterator[list[int]]:
    """Masters a test started outside PorchServer (an upgrade's new one): stopped afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            continue
        wait_until(lambda pid=pid: process_gone(pid), f"master {pid} to stop")


def test_upgrade_under_keepalive_load_fails_no_request(
    porch: Callable[..., PorchServer], tmp_path: Path, masters: list[int]
) -> None:
    """`porch upgrade` during a keep-alive load: the new master takes over the sockets and the
    pidfile, the old one drains and exits 0, and not one request fails or goes unlogged."""
    server = porch(site(tmp_path))
    pidfile = tmp_path / "porch.pid"
    old = server.proc.pid
    with Load(server.url + "/index.html", clients=4) as load:
        load.wait_for(100)
        upgraded = porch_command("upgrade", "-p", str(pidfile))
        new = read_pid(pidfile)
        if new is not None and new != old:
            masters.append(new)
        assert upgraded.returncode == 0, upgraded.stderr
        assert f"upgraded (pid {old} → {new};" in upgraded.stdout
        assert server.proc.wait(30) == 0  # the old master, once its workers drained
        load.wait_for(200)  # served by the new master's workers alone
    assert load.outcome.failures == [], load.outcome.failures[:5]
    assert load.outcome.ok >= 300
    assert new is not None and not process_gone(new)
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
    lines = server.wait_access_lines(load.outcome.ok + 1)
    assert sum("load=" in line for line in lines) == load.outcome.ok  # both masters' workers logged all
    log = server.error_text()
    assert f"upgrade: the new master (pid {new}) serves; this master retires" in log
    assert f"[{new}] [INFO] [-] porch.net.listener: inherited fd 3" in log  # adopted, not bound again


def test_a_new_master_that_cannot_boot_leaves_the_old_one_serving(
    porch: Callable[..., PorchServer], tmp_path: Path, masters: list[int]
) -> None:
    """USR2 after the app broke on disk: the new master's workers cannot import it, the new
    master exits, the old one says why and keeps serving with the pidfile still its own."""
    app = tmp_path / "app.py"
    app.write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'old code']\n"
    )
    config = site(tmp_path)
    config["mounts"].append({"path": "/app", "type": "wsgi", "app": "app:application", "pythonpath": [str(tmp_path)]})
    server = porch(config)
    for _ in range(4):  # both workers have imported it (keep-alive off: each request may go to either)
        assert requests.get(server.url + "/app", headers={"Connection": "close"}, timeout=5).text == "old code"
    wait_until(lambda: server.error_text().count("serving (pid") == 2, "both workers to serve")
    app.write_text("raise RuntimeError('broken on purpose')\n")
    server.signal(signal.SIGUSR2)
    failed = wait_until(lambda: re.search(r"upgrade failed: the new master \(pid (\d+)\): (.*)", server.error_text()))
    masters.append(int(failed.group(1)))
    assert "broken on purpose" in failed.group(2) and "; this master keeps serving" in server.error_text()
    wait_until(lambda: process_gone(int(failed.group(1))), "the new master to exit")
    assert read_pid(tmp_path / "porch.pid") == server.proc.pid
    assert requests.get(server.url + "/app", timeout=5).text == "old code"
    # the refusal is also what `porch upgrade` says, with its exit status
    answer = porch_command("upgrade", "-p", str(tmp_path / "porch.pid"), "--timeout", "60")
    assert answer.returncode == 1 and "broken on purpose" in answer.stderr
    assert "upgrade failed; pid" in answer.stderr and server.proc.poll() is None


def test_upgrade_of_a_daemon(tmp_path: Path, masters: list[int]) -> None:
    """`porch --daemon`, then `porch upgrade`, `status` and `stop` follow the new master; the
    config is named relatively, as from a shell in its directory (the daemon works from "/")."""
    config = site(tmp_path, listen=[f"127.0.0.1:{free_port()}"], drain_delay=0)
    config["log"] = {"access": str(tmp_path / "access.log"), "error": str(tmp_path / "error.log")}
    path = tmp_path / "porch.yaml"
    path.write_text(yaml.safe_dump(config))
    started = porch_command("-c", "porch.yaml", "--daemon", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    old = read_pid(tmp_path / "porch.pid")
    assert old is not None
    masters.append(old)
    upgraded = porch_command("upgrade", "-c", str(path))
    assert upgraded.returncode == 0, upgraded.stderr + (tmp_path / "error.log").read_text()
    new = read_pid(tmp_path / "porch.pid")
    assert new is not None and new != old
    masters.append(new)
    wait_until(lambda: process_gone(old), "the old master to exit")
    assert porch_command("status", "-c", str(path)).stdout == f"running (pid {new})\n"
    assert requests.get(f"http://{config['listen'][0]}/index.html", timeout=5).status_code == 200
    stopped = porch_command("stop", "-c", str(path))
    assert stopped.returncode == 0 and stopped.stdout == f"stopped (pid {new})\n"
    assert not (tmp_path / "porch.pid").exists()


def test_term_closes_softly_for_drain_delay(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    """TERM: at once `ready` says 503 and responses say Connection: close, while new connections
    are still served for drain_delay; then the listeners close and the master exits 0."""
    server = porch(site(tmp_path, drain_delay=2))
    wait_until(lambda: requests.get(server.url + "/readyz", timeout=5).status_code == 200, "ready to say 200")
    server.signal(signal.SIGTERM)
    termed = time.monotonic()
    wait_until(lambda: requests.get(server.url + "/readyz", timeout=5).status_code == 503, "ready to say 503")
    # the master says 503 before it signals the workers: wait for theirs to close softly too
    response = wait_until(
        lambda: (
            (answer := requests.get(server.url + "/index.html", timeout=5)).headers.get("Connection") == "close"
            and answer
        ),
        "responses to say Connection: close",
    )  # new connections: still accepted
    assert response.status_code == 200
    assert time.monotonic() - termed < 2, "the check above ran after the delay: it proved nothing"
    assert server.proc.wait(15) == 0
    assert time.monotonic() - termed >= 2
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/index.html", timeout=5)
    assert "the listeners close in 2s (drain_delay)" in server.error_text()


def test_int_does_not_wait_for_drain_delay(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    """Ctrl-C at a terminal stops at once: no balancer is waiting to be told."""
    server = porch(site(tmp_path, drain_delay=30))
    server.signal(signal.SIGINT)
    assert server.proc.wait(10) == 0
    assert "drain_delay" not in server.error_text()


def test_drain_delay_defaults_to_a_few_seconds_with_a_ready_mount(tmp_path: Path) -> None:
    def load(data: dict[str, Any]) -> float:
        return config_from_mapping(data, source="test", base_dir=tmp_path).drain_seconds

    assert load(site(tmp_path)) == 3
    assert load({"mounts": [{"path": "/", "type": "static", "root": str(tmp_path)}]}) == 0
    assert load({**site(tmp_path), "drain_delay": 0}) == 0
