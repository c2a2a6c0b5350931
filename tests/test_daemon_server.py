"""A real porch in daemon mode: ``porch --daemon``, then status, requests, reopen, reload, stop.

These run the whole chain -- CLI, arbiter, ``porch.master.daemon`` -- and are skipped (with the reason
shown) while ``porch.master.arbiter.Arbiter`` does not take the ``daemon=`` and ``pidfile=`` keywords.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from porchtest import wait_until

from porch.master.daemon import process_gone, read_pid

wait_for = functools.partial(wait_until, timeout=15.0)  # a daemon starts slower than a foreground server

PORCH = [sys.executable, "-m", "porch"]
START_TIMEOUT_SECONDS = 60.0


def arbiter_supports_daemon() -> bool:
    """Whether the arbiter takes the keywords the CLI passes for --daemon and --pidfile."""
    try:
        from porch.master.arbiter import Arbiter
    except ImportError:
        return False
    parameters = inspect.signature(Arbiter).parameters
    return "daemon" in parameters and "pidfile" in parameters


pytestmark = pytest.mark.skipif(
    not arbiter_supports_daemon(), reason="porch.master.arbiter.Arbiter does not take daemon= and pidfile= yet"
)


def porch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PORCH, *args], capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS, cwd=cwd)


class Site:
    """A config file for a daemon, its files and logs, in one directory."""

    def __init__(self, directory: Path, **settings: Any) -> None:
        self.directory = directory
        self.www = directory / "www"
        self.www.mkdir(exist_ok=True)
        (self.www / "hello.txt").write_text("hello from the daemon\n")
        self.config = directory / "porch.yaml"
        self.pidfile = directory / "porch.pid"
        self.access_log, self.error_log = directory / "access.log", directory / "error.log"
        self.settings: dict[str, Any] = {
            "listen": ["127.0.0.1:0"],
            "pidfile": str(self.pidfile),
            "log": {"access": str(self.access_log), "error": str(self.error_log), "level": "debug"},
            "timeouts": {"graceful": 5},
            "mounts": [{"path": "/", "type": "static", "root": str(self.www)}],
            **settings,
        }
        self.write()

    def write(self) -> None:
        self.config.write_text(yaml.safe_dump(self.settings, sort_keys=False))

    def url(self) -> str:
        """The address from the error log's "listening on" line."""

        def address() -> str | None:
            for line in self.error_log.read_text(errors="replace").splitlines():
                if "listening on " in line:
                    return line.rsplit("listening on ", 1)[1].split()[0]
            return None

        return "http://" + wait_for(address, "the listening line")

    def stop_leftovers(self) -> None:
        """After a failed test: no daemon may outlive it."""
        pid = read_pid(self.pidfile)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while not process_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    yield made
    made.stop_leftovers()


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_daemon_start_status_serve_reopen_reload_stop(site: Site) -> None:
    site.settings["umask"] = "027"
    site.write()
    started = porch("--daemon", "-c", str(site.config))
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.removeprefix("started (pid ").removesuffix(")\n"))
    assert read_pid(site.pidfile) == pid, "the pidfile names the daemon, not the command"
    assert int(proc_status(pid)["PPid"]) != os.getpid()
    for created in (site.pidfile, site.access_log, site.error_log):
        assert stat.S_IMODE(created.stat().st_mode) & 0o027 == 0, f"umask 027 applies to {created.name}"
    status = porch("status", "-c", str(site.config))
    assert (status.returncode, status.stdout) == (0, f"running (pid {pid})\n")

    url = site.url()  # the daemon was serving when the command returned: no waiting here
    assert requests.get(url + "/hello.txt", timeout=5).text == "hello from the daemon\n"
    wait_for(lambda: "/hello.txt" in site.access_log.read_text(), "the access line")

    site.access_log.rename(site.directory / "access.log.1")  # what logrotate does
    reopened = porch("reopen", "-c", str(site.config))
    assert (reopened.returncode, reopened.stdout) == (0, f"log reopen signalled (pid {pid})\n")
    wait_for(
        lambda: (
            requests.get(url + "/hello.txt?after-reopen", timeout=5)
            and site.access_log.exists()
            and "after-reopen" in site.access_log.read_text()
        ),
        "the access log to be reopened",
    )
    assert "after-reopen" not in (site.directory / "access.log.1").read_text()

    site.settings["mounts"].append({"path": "/status", "type": "status"})
    site.write()
    reloaded = porch("reload", "-c", str(site.config))
    assert (reloaded.returncode, reloaded.stdout) == (0, f"reloaded (pid {pid}, generation 1)\n"), reloaded.stderr
    wait_for(lambda: requests.get(url + "/status", timeout=5).status_code == 200, "the reloaded config")

    stopped = porch("stop", "-c", str(site.config))
    assert (stopped.returncode, stopped.stdout) == (0, f"stopped (pid {pid})\n"), stopped.stderr
    assert process_gone(pid) and not site.pidfile.exists()
    assert porch("status", "-c", str(site.config)).returncode == 3
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/hello.txt", timeout=5)


def test_a_second_daemon_is_refused(site: Site) -> None:
    first = porch("--daemon", "-c", str(site.config))
    assert first.returncode == 0, first.stderr
    pid = read_pid(site.pidfile)
    second = porch("--daemon", "-c", str(site.config))
    assert second.returncode == 1
    assert f"already running (pid {pid}, pidfile {site.pidfile})" in second.stderr
    assert read_pid(site.pidfile) == pid
    assert requests.get(site.url() + "/hello.txt", timeout=5).status_code == 200
    assert porch("stop", "-c", str(site.config)).returncode == 0


def test_a_daemon_that_cannot_boot_says_so(site: Site) -> None:
    (site.directory / "porch_boom_app.py").write_text("raise RuntimeError('boom at import')\n")
    site.settings["mounts"] = [
        {"path": "/", "type": "wsgi", "app": "porch_boom_app:application", "pythonpath": [str(site.directory)]}
    ]
    site.write()
    started = time.monotonic()
    result = porch("--daemon", "-c", str(site.config))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("porch: ") and len(result.stderr.strip()) > len("porch: ")
    assert time.monotonic() - started < START_TIMEOUT_SECONDS / 2
    assert "boom at import" in site.error_log.read_text()
    wait_for(lambda: read_pid(site.pidfile) is None, "the failed daemon to exit")


def test_a_foreground_server_writes_a_pidfile_that_stop_uses(site: Site) -> None:
    site.settings.pop("pidfile")
    site.write()
    server = subprocess.Popen(
        [*PORCH, "-c", str(site.config), "--pidfile", "relative.pid"],
        cwd=site.directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pidfile = site.directory / "relative.pid"
    try:
        wait_for(lambda: read_pid(pidfile) == server.pid, "the foreground pidfile")
        assert requests.get(site.url() + "/hello.txt", timeout=5).status_code == 200
        stopped = porch("stop", "--pidfile", str(pidfile))
        assert (stopped.returncode, stopped.stdout) == (0, f"stopped (pid {server.pid})\n")
        assert server.wait(5) == 0
        assert not pidfile.exists()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_workers_run_as_the_configured_user(tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    # The workers open their logs and files as nobody: a directory nobody may enter.
    directory = Path(tempfile.mkdtemp(prefix="porch-daemon-"))
    directory.chmod(0o755)
    made = Site(directory, user="nobody", listen=["0.0.0.0:0"])
    made.settings["mounts"].append({"path": "/status", "type": "status"})
    made.write()
    try:
        result = porch("--daemon", "-c", str(made.config))
        assert result.returncode == 0, result.stderr + made.error_log.read_text()
        master = read_pid(made.pidfile)
        assert master is not None
        url = made.url().replace("0.0.0.0", "127.0.0.1")
        worker = json.loads(requests.get(url + "/status", timeout=5).text)["pid"]
        assert worker != master
        assert proc_status(worker)["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert proc_status(worker)["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert proc_status(master)["Uid"].split()[1] == "0", "the master keeps root to bind on reload"
        assert requests.get(url + "/hello.txt", timeout=5).text == "hello from the daemon\n"
        assert porch("reopen", "-c", str(made.config)).returncode == 0
        assert porch("stop", "-c", str(made.config)).returncode == 0
        assert "Permission denied" not in made.error_log.read_text()
    finally:
        made.stop_leftovers()
        subprocess.run(["rm", "-rf", str(directory)], check=False)
