"""Start a real porch server process for a test and talk to it.

``PorchServer.start(config, tmp_dir)`` writes ``config`` (a dict, merged over test defaults) to a
YAML file, runs ``python -m porch -c FILE`` with the access and error logs in ``tmp_dir``, waits
for the "listening on" line in the error log and exposes the bound address.  Listeners default
to ``127.0.0.1:0`` so tests never fight over ports.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

LISTENING = re.compile(r"listening on ([^\s\"]+)")  # in a text or a json error log
START_TIMEOUT_SECONDS = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for programs that need a port number up front)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` in /proc ("R", "S", "Z", ...), or None once it is gone -- reaped,
    or being reaped as the file is read (ESRCH, ProcessLookupError)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def wait_until(condition: Callable[[], Any], what: str = "condition", timeout: float = 10.0) -> Any:
    """Poll ``condition`` until it returns something true (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


class PorchServer:
    """A running ``porch`` process with its config and log files."""

    def __init__(self, proc: subprocess.Popen[bytes], config_path: Path, access_log: Path, error_log: Path) -> None:
        self.proc = proc
        self.config_path = config_path
        self.access_log = access_log
        self.error_log = error_log
        self.addresses: list[str] = []

    @property
    def address(self) -> str:
        """The first TCP address (host:port), else the first address."""
        tcp = [a for a in self.addresses if not a.startswith("unix:")]
        return tcp[0] if tcp else self.addresses[0]

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @classmethod
    def start(
        cls,
        config: dict[str, Any],
        tmp_dir: Path,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> PorchServer:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        access_log, error_log = tmp_dir / "access.log", tmp_dir / "error.log"
        # No drain_delay unless a test asks: stop() sends TERM, and most tests stop a server.
        full: dict[str, Any] = {"listen": ["127.0.0.1:0"], "drain_delay": 0}
        full.update(config)
        full["log"] = {"access": str(access_log), "error": str(error_log), "level": "debug", **config.get("log", {})}
        config_path = tmp_dir / "porch.yaml"
        config_path.write_text(yaml.safe_dump(full, sort_keys=False))
        for log in (access_log, error_log):
            log.unlink(missing_ok=True)
        with open(tmp_dir / "stdout.log", "wb") as stdout, open(tmp_dir / "stderr.log", "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "porch", "-c", str(config_path), *args],
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, **(env or {})},
                cwd=tmp_dir,
            )
        server = cls(proc, config_path, access_log, error_log)
        if wait:
            server.addresses = server.wait_listening(len(full["listen"]))
        return server

    def wait_listening(self, count: int) -> list[str]:
        """Wait until the error log names ``count`` bound addresses; fail with the logs if not."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            found = LISTENING.findall(self.error_text())
            if len(found) >= count:
                return found[:count]
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        stderr = (self.config_path.parent / "stderr.log").read_text(errors="replace")
        raise RuntimeError(f"porch did not start (exit {self.proc.returncode}):\n{stderr}\n{self.error_text()}")

    def wait_serving(self) -> None:
        """Wait until every worker has booted (the master's ``porch: serving`` line): the port
        accepts as soon as the master binds it, but a worker importing a framework may take
        seconds more on a loaded machine, and a request meanwhile waits in the backlog."""
        stderr = self.config_path.parent / "stderr.log"

        def booted() -> bool:
            return "porch: serving" in stderr.read_text(errors="replace")

        wait_until(booted, "the workers to boot", START_TIMEOUT_SECONDS)

    def error_text(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def serving_pids(self) -> list[int]:
        """The workers that have started serving, in order, from the error log."""
        return [int(pid) for pid in re.findall(r" serving \(pid (\d+), ", self.error_text())]

    def access_lines(self) -> list[str]:
        if not self.access_log.exists():
            return []
        return self.access_log.read_text(errors="replace").splitlines()

    def wait_access_lines(self, count: int, timeout: float = 5.0) -> list[str]:
        """Access lines are written after the response; wait until ``count`` are there."""
        deadline = time.monotonic() + timeout
        while len(lines := self.access_lines()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return lines

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def raw(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send raw bytes, half-close, and read everything until the server closes."""
        with self.connect(timeout) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
