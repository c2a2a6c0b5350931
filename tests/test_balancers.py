"""Three porch instances behind a real nginx and a real HAProxy, configured with the files in
config/examples/ as they are (the ports and paths replaced): under a keep-alive load, a rolling
restart and a rolling upgrade fail no request and the instances' access logs count every one;
`kill -9` of an instance fails at most the requests it held, and none once the balancer knows.
Loopback only, bounded (tests/loadgen.py), every process stopped in `finally`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import need_program
from loadgen import Load
from nginx_runner import accepting, run_nginx
from porchtest import PorchServer, free_port, wait_until

from porch.master.daemon import process_gone, read_pid

EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "examples"
EXAMPLE_PORTS = ("127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003")
# A start, or a balancer changing its mind, on a machine busy with the other tests: generous, as
# the wait ends as soon as it happens.
SLOW = 30.0


class Instance:
    """One porch instance on a fixed port, run from an example config; each start is a new
    process with logs of its own (``runs``), an upgrade's new master included."""

    def __init__(self, example: str, port: int, www: Path, tmp: Path) -> None:
        self.config: dict[str, Any] = yaml.safe_load((EXAMPLES / example).read_text())
        del self.config["log"]  # the test's own files (PorchServer)
        self.config["mounts"][0]["root"] = str(www)
        self.port = port
        self.tmp = tmp
        self.runs: list[PorchServer] = []
        self.masters: list[int] = []  # every master pid, upgrades' too: all stopped at the end

    @property
    def pidfile(self) -> Path:
        return self.tmp / f"run{len(self.runs)}" / "porch.pid"

    def start(self) -> None:
        run = self.tmp / f"run{len(self.runs) + 1}"
        config = {**self.config, "pidfile": str(run / "porch.pid")}
        server = PorchServer.start(config, run, env={"PORCH_PORT": str(self.port)})
        self.runs.append(server)
        self.masters.append(server.proc.pid)
        wait_until(lambda: server.error_text().count("serving (pid") >= 2, "both workers to serve", timeout=SLOW)

    def master(self) -> int:
        pid = read_pid(self.pidfile)
        assert pid is not None
        return pid

    def stop(self) -> None:
        """TERM, and wait until the master is gone (after its drain_delay)."""
        pid = self.master()
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: process_gone(pid), f"instance {self.port} to stop", timeout=30)
        if self.runs[-1].proc.pid == pid:
            self.runs[-1].proc.wait(5)

    def upgrade(self) -> None:
        old = self.master()
        done = subprocess.run(
            [sys.executable, "-m", "porch", "upgrade", "-p", str(self.pidfile)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        self.masters.append(self.master())
        wait_until(lambda: process_gone(old), f"the old master of {self.port} to exit", timeout=30)

    def crash(self) -> None:
        """kill -9 of the master and its workers together, as the machine's OOM killer might."""
        master = self.master()
        with open(f"/proc/{master}/task/{master}/children") as children:
            pids = [master, *(int(pid) for pid in children.read().split())]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: all(process_gone(pid) for pid in pids), "the killed instance to be gone")

    def logged(self) -> int:
        """Requests of the load in the access logs of every run."""
        return sum(sum("load=" in line for line in run.access_lines()) for run in self.runs)

    def close(self) -> None:
        for pid in self.masters:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
        for pid in self.masters:
            wait_until(lambda pid=pid: process_gone(pid), f"master {pid} to stop")
        for run in self.runs:
            run.stop()


@contextlib.contextmanager
def instances(example: str, tmp: Path) -> Iterator[list[Instance]]:
    www = tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("<h1>behind a balancer</h1>")
    group = [Instance(example, free_port(), www, tmp / f"instance{n}") for n in range(1, 4)]
    try:
        for instance in group:
            instance.start()
        yield group
    finally:
        for instance in group:
            instance.close()


def example_text(name: str, group: list[Instance]) -> str:
    text = (EXAMPLES / name).read_text()
    for example_port, instance in zip(EXAMPLE_PORTS, group, strict=True):
        text = text.replace(example_port, f"127.0.0.1:{instance.port}")
    return text


@contextlib.contextmanager
def nginx(group: list[Instance], tmp: Path) -> Iterator[int]:
    port = free_port()
    site = example_text("nginx-porch.conf", group).replace("listen 80;", f"listen 127.0.0.1:{port};")
    with run_nginx(site, tmp, port):
        yield port


@contextlib.contextmanager
def haproxy(group: list[Instance], tmp: Path) -> Iterator[tuple[int, Path]]:
    program = need_program("haproxy")
    port, stats = free_port(), tmp / "haproxy.sock"
    text = example_text("haproxy.cfg", group).replace("bind :80", f"bind 127.0.0.1:{port}")
    (tmp / "haproxy.cfg").write_text(text.replace("/run/haproxy/porch.sock", str(stats)))
    with open(tmp / "haproxy.log", "wb") as output:
        proc = subprocess.Popen([program, "-db", "-f", str(tmp / "haproxy.cfg")], stdout=output, stderr=output)
    try:
        wait_until(lambda: accepting(port, proc), "haproxy to listen")
        assert proc.poll() is None, (tmp / "haproxy.log").read_text()
        wait_until(
            lambda: set(server_states(stats).values()) == {"UP"}, "haproxy to see every instance up", timeout=SLOW
        )
        yield port, stats
    finally:
        proc.terminate()
        proc.wait(10)


def server_states(stats: Path) -> dict[str, str]:
    """HAProxy's view of each server of the backend: UP, DOWN, "UP 1/2" while it changes its mind."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    header, *rows = [line.split(",") for line in answer.splitlines() if line and line != "# "]
    columns = {name.lstrip("# "): index for index, name in enumerate(header)}
    return {
        row[columns["svname"]]: row[columns["status"]]
        for row in rows
        if row[0] == "porch" and row[columns["svname"]] not in ("FRONTEND", "BACKEND")
    }


def assert_every_request_served_and_logged(load: Load, group: list[Instance]) -> None:
    assert load.outcome.failures == [], load.outcome.failures[:5]
    assert load.outcome.ok > 0
    for instance in group:
        instance.stop()  # every access line is written before a worker exits
    assert sum(instance.logged() for instance in group) == load.outcome.ok


def test_rolling_restart_and_upgrade_behind_nginx(tmp_path: Path) -> None:
    with instances("behind-nginx.yaml", tmp_path) as group, nginx(group, tmp_path) as port:
        with Load(f"http://127.0.0.1:{port}/index.html", clients=4) as load:
            load.wait_for(100)
            for instance in group:  # a rolling restart: TERM, wait, start, wait until nginx sends to it
                instance.stop()
                load.wait_for(50)
                instance.start()
                wait_until(
                    lambda instance=instance: instance.runs[-1].access_lines(),
                    "nginx to send to it again",
                    timeout=SLOW,
                )
            for instance in group:  # a rolling upgrade: USR2 through `porch upgrade`
                instance.upgrade()
                load.wait_for(50)
        assert_every_request_served_and_logged(load, group)


def test_rolling_restart_and_upgrade_behind_haproxy(tmp_path: Path) -> None:
    with instances("behind-haproxy.yaml", tmp_path) as group, haproxy(group, tmp_path) as (port, stats):
        with Load(f"http://127.0.0.1:{port}/index.html", clients=4) as load:
            load.wait_for(100)
            for number, instance in enumerate(group, start=1):
                instance.stop()  # ready says 503 first: HAProxy marks it down within drain_delay
                instance.start()
                wait_until(
                    lambda n=number: server_states(stats)[f"porch{n}"] == "UP", "haproxy to see it back", timeout=SLOW
                )
            for instance in group:
                instance.upgrade()
                load.wait_for(50)
        assert_every_request_served_and_logged(load, group)
        # the instances saw the clients, not the balancer: PROXY protocol v2 from a trusted proxy
        assert all(line.startswith("127.0.0.1 ") for line in group[0].runs[0].access_lines())


@pytest.mark.parametrize("balancer", ["nginx", "haproxy"])
def test_a_killed_instance_fails_at_most_what_it_held(tmp_path: Path, balancer: str) -> None:
    example = "behind-nginx.yaml" if balancer == "nginx" else "behind-haproxy.yaml"
    with instances(example, tmp_path) as group, contextlib.ExitStack() as stack:
        if balancer == "nginx":
            port, stats = stack.enter_context(nginx(group, tmp_path)), None
        else:
            port, stats = stack.enter_context(haproxy(group, tmp_path))
        clients = 4
        with Load(f"http://127.0.0.1:{port}/index.html", clients=clients) as load:
            load.wait_for(100)
            group[1].crash()
            if stats is not None:
                wait_until(
                    lambda: server_states(stats)["porch2"].startswith("DOWN"), "haproxy to mark it down", timeout=SLOW
                )
            else:
                load.wait_for(20)  # nginx learns from the first refused connection
            known = time.monotonic()
            load.wait_for(300)
        assert len(load.outcome.failures) <= clients, load.outcome.failures
        assert load.outcome.failed_after(known) == []
