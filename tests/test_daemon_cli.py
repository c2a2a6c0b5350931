"""``porch stop|reload|status|reopen`` and the checks of ``porch --daemon``, from the outside.

The control commands are run against a small process that holds a pidfile the way porch does
and records the signals it gets, so what each command sends -- and what it must not send -- is
observed directly.  ``test_daemon_server.py`` repeats the important ones against a real porch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from porchtest import wait_until

from porch.master.daemon import process_gone, read_pid

PORCH = [sys.executable, "-m", "porch"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the root policy applies to root only")


def porch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PORCH, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


# --- porch stop, reload, status, reopen -----------------------------------------------------

HOLDER = r"""
import signal, sys, time
from porch.master.daemon import Pidfile
pidfile, record, mode = sys.argv[1:4]
held = Pidfile(pidfile)

def note(signum, frame):
    with open(record, "a") as out:
        out.write(signal.Signals(signum).name + "\n")
    if signum == signal.SIGTERM and mode != "stubborn":
        held.release()
        sys.exit(0)

for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM):
    signal.signal(signum, note)
held.acquire()
while True:
    time.sleep(60)
"""


class Holder:
    """A process holding a pidfile the way porch does, recording the signals it gets."""

    def __init__(self, directory: Path, mode: str) -> None:
        self.pidfile, self.record = directory / "porch.pid", directory / "signals"
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(self.pidfile), str(self.record), mode])
        wait_until(lambda: read_pid(self.pidfile) == self.proc.pid, "the holder's pidfile")

    def signals(self) -> list[str]:
        return self.record.read_text().split() if self.record.exists() else []

    def wait_signals(self, count: int) -> list[str]:
        return wait_until(lambda: len(self.signals()) >= count and self.signals(), f"{count} signals")


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[..., Holder]]:
    started: list[Holder] = []

    def start(mode: str = "polite") -> Holder:
        started.append(Holder(tmp_path, mode))
        return started[-1]

    yield start
    for each in started:
        each.proc.kill()
        each.proc.wait()


def write_config(tmp_path: Path, **settings: Any) -> Path:
    (tmp_path / "www").mkdir(exist_ok=True)
    path = tmp_path / "porch.yaml"
    data = {
        "listen": ["127.0.0.1:0"],
        "pidfile": "porch.pid",
        "mounts": [{"path": "/", "type": "static", "root": "www"}],
        **settings,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_status_follows_lsb(tmp_path: Path, holder: Callable[..., Holder]) -> None:
    config_file = write_config(tmp_path)
    assert (porch("status", "-c", str(config_file)).returncode, porch("status", "-c", str(config_file)).stdout) == (
        3,
        "not running\n",
    )
    running = holder()
    result = porch("status", "-c", str(config_file))
    assert (result.returncode, result.stdout) == (0, f"running (pid {running.proc.pid})\n")
    assert porch("status", "--pidfile", str(running.pidfile)).returncode == 0
    assert porch("-c", str(config_file), "status").returncode == 0, "-c before the command works too"
    running.proc.kill()
    running.proc.wait()
    result = porch("status", "-c", str(config_file))
    assert (result.returncode, result.stdout) == (1, f"not running (stale pidfile {running.pidfile})\n")
    unknown = porch("status", "-c", str(write_config(tmp_path, pidfile=None)))
    assert unknown.returncode == 4 and "no pidfile" in unknown.stderr


def test_stop_waits_until_the_process_is_gone(tmp_path: Path, holder: Callable[..., Holder]) -> None:
    config_file = write_config(tmp_path)
    running = holder()
    result = porch("stop", "-c", str(config_file))
    assert (result.returncode, result.stdout) == (0, f"stopped (pid {running.proc.pid})\n"), result.stderr
    assert running.signals() == ["SIGTERM"]
    assert process_gone(running.proc.pid) and not running.pidfile.exists()
    again = porch("stop", "-c", str(config_file))
    assert again.returncode == 1
    assert again.stderr == f"porch: not running (no pidfile {running.pidfile})\n"


def test_stop_gives_up_after_its_timeout(tmp_path: Path, holder: Callable[..., Holder]) -> None:
    stubborn = holder("stubborn")
    started = time.monotonic()
    result = porch("stop", "--pidfile", str(stubborn.pidfile), "--timeout", "0.5")
    assert result.returncode == 1 and time.monotonic() - started < 10
    assert f"pid {stubborn.proc.pid} is still running after 0.5 s" in result.stderr
    assert f"kill -QUIT {stubborn.proc.pid}" in result.stderr
    assert stubborn.signals() == ["SIGTERM"] and stubborn.proc.poll() is None


def test_a_stale_pidfile_never_gets_an_unrelated_process_signalled(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        config_file = write_config(tmp_path)
        (tmp_path / "porch.pid").write_text(f"{bystander.pid}\n")  # pid reused; nobody holds the lock
        for command in ("stop", "reload", "reopen"):
            result = porch(command, "-c", str(config_file))
            assert result.returncode == 1
            assert "not running (stale pidfile" in result.stderr
        time.sleep(0.2)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_reload_checks_the_config_before_signalling(tmp_path: Path, holder: Callable[..., Holder]) -> None:
    config_file = write_config(tmp_path)
    running = holder()
    result = porch("reload", "-c", str(config_file), "--timeout", "0.3")
    assert result.returncode == 1, "the holder never reports a reload's outcome, as porch does in its state file"
    assert f"reload signalled (pid {running.proc.pid}), but no outcome within 0.3 s" in result.stderr
    assert running.wait_signals(1) == ["SIGHUP"]
    text = config_file.read_text()
    config_file.write_text(text + "threads: many\n")
    bad = porch("reload", "-c", str(config_file))
    assert bad.returncode == 1 and bad.stdout == ""
    assert "threads: expected an integer" in bad.stderr
    assert f"not reloading: {config_file} is invalid; pid {running.proc.pid} keeps its configuration" in bad.stderr
    assert porch("reopen", "-c", str(config_file)).returncode == 0, "a broken config still names its pidfile"
    assert running.wait_signals(2) == ["SIGHUP", "SIGUSR1"], "the bad reload sent nothing"


def test_reload_refuses_a_config_whose_handlers_cannot_be_built(tmp_path: Path, holder: Callable[..., Holder]) -> None:
    config_file = write_config(tmp_path, mounts=[{"path": "/", "type": "wsgi", "app": "no_such_module:app"}])
    running = holder()
    result = porch("reload", "-c", str(config_file))
    assert result.returncode == 1 and "no_such_module" in result.stderr
    running.proc.send_signal(signal.SIGUSR1)
    assert running.wait_signals(1) == ["SIGUSR1"]


def test_reopen_and_stop_with_a_broken_config(tmp_path: Path, holder: Callable[..., Holder]) -> None:
    config_file = write_config(tmp_path)
    running = holder()
    result = porch("reopen", "-c", str(config_file))
    assert (result.returncode, result.stdout) == (0, f"log reopen signalled (pid {running.proc.pid})\n")
    assert running.wait_signals(1) == ["SIGUSR1"]
    config_file.write_text(config_file.read_text() + "workers: -1\n")
    stopped = porch("stop", "-c", str(config_file))
    assert stopped.returncode == 0 and stopped.stdout == f"stopped (pid {running.proc.pid})\n"
    assert f"warning: {config_file} has errors" in stopped.stderr


def test_control_commands_without_a_pidfile(tmp_path: Path) -> None:
    for command in ("stop", "reload", "reopen"):
        result = porch(command, cwd=tmp_path)
        assert result.returncode == 1
        assert "no pidfile: give --pidfile FILE or -c FILE with a `pidfile:` setting" in result.stderr


# --- the serving command's checks (no server needed) ------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"pidfile": None, "log": {"error": "e.log", "access": False}},
            "porch: --daemon needs a pidfile: give --pidfile FILE or set `pidfile:` in the config\n",
        ),
        ({"log": {"error": "-", "access": False}}, 'log.error cannot be "-" (stderr)'),
        ({"log": {"error": "e.log", "access": "-"}}, 'log.access cannot be "-" (stdout)'),
    ],
)
def test_daemon_mode_refuses_what_it_could_not_honour(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    result = porch("--daemon", "-c", str(write_config(tmp_path, **settings)))
    assert result.returncode == 1 and message in result.stderr
    assert not (tmp_path / "porch.pid").exists()


@needs_root
def test_root_on_a_public_address_is_refused_before_binding(tmp_path: Path) -> None:
    result = porch("-c", str(write_config(tmp_path, listen=["0.0.0.0:0"])))
    assert result.returncode == 1
    assert result.stderr.startswith("porch: refusing to serve 0.0.0.0:0 with workers running as root")
