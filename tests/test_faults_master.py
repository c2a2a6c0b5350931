"""The master and its workers under trouble, with real processes: reloads that fail or hang, logs
that cannot be written or reopened, workers stuck in an application or unable to boot.

Every server listens on loopback port 0, every wait is bounded, and every process a test starts
is stopped afterwards (the ``porch`` fixture, or ``finally``).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from porchtest import PorchServer, process_state, wait_until

TESTS_DIR = Path(__file__).parent
ENV = {"PYTHONPATH": str(TESTS_DIR), "PYTHONDONTWRITEBYTECODE": "1"}  # an app rewritten is re-read
ECHO = "core_handlers:EchoHandler"


def site(tmp_path: Path, text: str, **extra: Any) -> dict[str, Any]:
    """Static ``text`` at /, the status handler and the echo handler; ``extra`` on top."""
    root = tmp_path / f"www-{text}"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text(text)
    config: dict[str, Any] = {
        "workers": 1,
        "timeouts": {"keepalive": 2, "graceful": 2},
        "mounts": [
            {"path": "/", "type": "static", "root": str(root)},
            {"path": "/status", "type": "status"},
            {"path": "/echo", "type": ECHO},
        ],
    }
    config.update(extra)
    return config


def with_app(config: dict[str, Any], apps: Path, module: str) -> dict[str, Any]:
    """``config`` with ``module:application`` (in ``apps``) mounted at /app."""
    mounts = [
        *config["mounts"],
        {"path": "/app", "type": "wsgi", "app": f"{module}:application", "pythonpath": [str(apps)]},
    ]
    return {**config, "mounts": mounts}


def write_app(apps: Path, module: str, body: str) -> None:
    apps.mkdir(exist_ok=True)
    (apps / f"{module}.py").write_text(body)


GOOD_APP = """
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app ok"]
"""


def rewrite(srv: PorchServer, config: dict[str, Any]) -> None:
    """Replace the running server's config file, keeping its listen and log settings."""
    current = yaml.safe_load(srv.config_path.read_text())
    srv.config_path.write_text(yaml.safe_dump({**config, "listen": [srv.address], "log": current["log"]}))


def worker_pid(srv: PorchServer) -> int:
    return int(requests.get(srv.url + "/status", timeout=5).json()["pid"])


def answering_pid(srv: PorchServer) -> int | None:
    """The pid of the worker that answers, or None when the request failed: a worker being
    replaced may take a connection in and close it unanswered."""
    try:
        return worker_pid(srv)
    except requests.RequestException:
        return None


def serving_pid(srv: PorchServer) -> int:
    """The worker's pid once it has heartbeaten (it logs "serving" after its first heartbeat):
    from then on the master counts it as booted, even should it die before the master looks."""
    wait_until(lambda: " serving (pid " in srv.error_text(), what="the worker to serve")
    return worker_pid(srv)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: only its parent can reap it)."""
    return process_state(pid) in (None, "Z")


def started_pids(srv: PorchServer, generation: int) -> list[int]:
    return [int(pid) for pid in re.findall(rf"worker (\d+) started \(generation {generation}\)", srv.error_text())]


def expect_cut_off(url: str) -> None:
    """A request whose worker is replaced under it: the connection fails, the test goes on."""
    with pytest.raises(requests.RequestException):
        requests.get(url, timeout=15)


# -- reloads -----------------------------------------------------------------------------------


def test_a_reload_after_a_failed_one_applies_the_fixed_config(porch, tmp_path: Path) -> None:
    """A reload that could not boot used to burn its generation number into the failures: every
    later reload failed too.  Each attempt now has a number of its own."""
    srv = porch(site(tmp_path, "before"), env=ENV)
    apps = tmp_path / "apps"
    write_app(apps, "cannot_import", "raise RuntimeError('cannot import this app')\n")
    rewrite(srv, with_app(site(tmp_path, "before"), apps, "cannot_import"))
    srv.signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in srv.error_text(), what="the first reload to fail")
    assert requests.get(srv.url + "/", timeout=5).text == "before"

    write_app(apps, "imports_fine", GOOD_APP)
    rewrite(srv, with_app(site(tmp_path, "after"), apps, "imports_fine"))
    srv.signal(signal.SIGHUP)
    wait_until(lambda: "generation 2 serving" in srv.error_text(), what="the fixed reload", timeout=15)
    # the retiring workers may take a last connection while they close their listeners
    wait_until(lambda: requests.get(srv.url + "/", timeout=5).text == "after", what="the new generation serving")
    assert requests.get(srv.url + "/app", timeout=5).text == "app ok"
    assert srv.error_text().count("reload failed") == 1


def test_an_abandoned_reload_keeps_the_listeners_it_would_have_dropped(porch, tmp_path: Path) -> None:
    """A reload that drops a listener and then cannot boot used to close that listener at once:
    the old workers lost it when respawned.  It is closed only once a reload is adopted."""
    second = tmp_path / "second.sock"
    srv = porch({**site(tmp_path, "kept"), "listen": ["127.0.0.1:0", f"unix:{second}"]}, env=ENV)
    apps = tmp_path / "apps"
    write_app(apps, "cannot_import", "raise RuntimeError('cannot import this app')\n")
    rewrite(srv, with_app(site(tmp_path, "kept"), apps, "cannot_import"))  # listens on the first only
    srv.signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in srv.error_text(), what="the reload to fail")
    before = serving_pid(srv)
    os.kill(before, signal.SIGKILL)  # the replacement inherits the listeners the master holds
    wait_until(lambda: answering_pid(srv) not in (None, before), what="a new worker", timeout=15)
    answer = subprocess.run(
        ["curl", "-s", "--max-time", "5", "--unix-socket", str(second), "http://x/"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert answer.stdout == "kept", answer.stderr + srv.error_text()


def test_the_master_answers_while_a_reload_hangs_importing(porch, tmp_path: Path) -> None:
    """New workers stuck importing used to block the master for a minute: a dead old worker was
    not replaced and TERM waited.  Now both happen at once, and TERM stops both generations."""
    srv = porch(site(tmp_path, "steady"), env=ENV)
    old = worker_pid(srv)
    apps = tmp_path / "apps"
    write_app(apps, "hangs_at_import", "import time\ntime.sleep(60)\n")
    rewrite(srv, with_app(site(tmp_path, "steady"), apps, "hangs_at_import"))
    srv.signal(signal.SIGHUP)
    booting = wait_until(lambda: started_pids(srv, 1), what="the new generation to start")[0]

    os.kill(old, signal.SIGKILL)
    replacement = wait_until(lambda: worker_pid(srv) != old and worker_pid(srv), what="the old worker's replacement")
    assert replacement in started_pids(srv, 0)
    assert requests.get(srv.url + "/", timeout=5).text == "steady"
    assert not gone(booting), "the new generation is still importing"

    srv.signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0
    assert gone(booting) and gone(replacement)


def test_a_reload_replaces_one_still_booting(porch, tmp_path: Path) -> None:
    """HUP while a reload's workers still boot abandons them for the newer config."""
    srv = porch(site(tmp_path, "first"), env=ENV)
    apps = tmp_path / "apps"
    write_app(apps, "slow_import", "import time\ntime.sleep(60)\n")
    rewrite(srv, with_app(site(tmp_path, "first"), apps, "slow_import"))
    srv.signal(signal.SIGHUP)
    booting = wait_until(lambda: started_pids(srv, 1), what="the slow generation to start")[0]
    rewrite(srv, site(tmp_path, "second"))
    srv.signal(signal.SIGHUP)
    wait_until(lambda: "generation 2 serving" in srv.error_text(), what="the newer reload", timeout=15)
    assert requests.get(srv.url + "/", timeout=5).text == "second"
    wait_until(lambda: gone(booting), what="the abandoned worker to be killed")


# -- logs --------------------------------------------------------------------------------------


def test_usr1_with_a_vanished_log_directory_keeps_everything_serving(porch, tmp_path: Path) -> None:
    """Reopening into a directory that is gone used to kill the master (and so every worker)."""
    logs = tmp_path / "rotated-logs"
    logs.mkdir()
    srv = porch(site(tmp_path, "alive", workers=2, log={"access": str(logs / "access.log")}), env=ENV)
    wait_until(lambda: srv.error_text().count(" serving (pid ") == 2, what="both workers to serve")
    shutil.rmtree(logs)
    srv.signal(signal.SIGUSR1)
    wait_until(lambda: srv.error_text().count("cannot reopen") == 3, what="master and workers to report")
    assert "still writing to the file opened before" in srv.error_text()
    with requests.Session() as session:
        for _ in range(5):
            assert session.get(srv.url + "/", timeout=5).text == "alive"
    assert srv.proc.poll() is None
    srv.signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0


def keep_alive_requests(host: str, port: int, count: int) -> list[int]:
    """``count`` requests on one connection; a connection the server drops fails the test."""
    connection = http.client.HTTPConnection(host, port, timeout=5)
    statuses = []
    try:
        for _ in range(count):
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            assert connection.sock is not None, "the server closed the connection"
    finally:
        connection.close()
    return statuses


LOST = re.compile(r"cannot write the access log (\S+) \(([^)]*)\): (\d+) lines? lost")


def test_an_access_log_on_a_full_device_fails_no_request(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "full", log={"access": "/dev/full"}), env=ENV)
    serving_pid(srv)  # its signal handlers are set: TERM lets it exit in order, reporting at exit
    assert keep_alive_requests(srv.host, srv.port, 20) == [200] * 20
    reports = wait_until(lambda: LOST.findall(srv.error_text()), what="the lost-lines report")
    assert reports == [("/dev/full", "No space left on device", "1")], "one report per interval"
    srv.signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0
    lost = sum(int(count) for _, _, count in LOST.findall(srv.error_text()))
    assert lost == 1 + 20, "every line is counted: the one of serving_pid's request, the 20, the rest at exit"


def test_an_access_log_into_a_closed_pipe_fails_no_request(tmp_path: Path) -> None:
    directory = tmp_path / "server"
    directory.mkdir()
    config_path, error_log = directory / "porch.yaml", directory / "error.log"
    config = {**site(tmp_path, "pipe"), "listen": ["127.0.0.1:0"]}
    config["log"] = {"access": "-", "error": str(error_log), "level": "debug"}
    config_path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "porch", "-c", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ENV},
        cwd=directory,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # nobody reads the access log any more
    srv = PorchServer(proc, config_path, directory / "no-access.log", error_log)
    try:
        srv.addresses = srv.wait_listening(1)
        wait_until(lambda: " serving (pid " in srv.error_text(), what="the worker to serve")
        assert keep_alive_requests(srv.host, srv.port, 20) == [200] * 20
        reports = wait_until(lambda: LOST.findall(srv.error_text()), what="the lost-lines report")
        assert reports == [("stdout", "Broken pipe", "1")]
    finally:
        srv.stop()
    assert proc.returncode == 0


# -- stuck and unbootable workers --------------------------------------------------------------


def test_a_worker_whose_every_thread_is_stuck_is_replaced(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "x", threads=2, worker_timeout=1, timeouts={"graceful": 1}), env=ENV)
    pid = worker_pid(srv)
    slow = requests.get(srv.url + "/echo?sleep=2&slow=alone", timeout=10)
    assert slow.status_code == 200, "one slow request among idle threads is not stuck"
    assert "stuck" not in srv.error_text()

    clients = [
        threading.Thread(target=expect_cut_off, args=(f"{srv.url}/echo?sleep=30&stuck={name}",)) for name in "ab"
    ]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: "is stuck" in srv.error_text(), what="the stuck worker to be noticed")
        text = srv.error_text()
        for name in "ab":
            assert re.search(
                rf"worker {pid} stuck on GET /echo\?sleep=30&stuck={name} for [\d.]+s \(request \w+\)", text
            )
        wait_until(lambda: answering_pid(srv) not in (None, pid), what="a replacement worker")
        wait_until(lambda: gone(pid), what="the stuck worker to go")
    finally:
        for client in clients:
            client.join(20)
    assert "timed out" not in srv.error_text()


HANGING_APP = """
import os
import threading

def application(environ, start_response):
    if environ["PATH_INFO"] == "/hang":
        threading.Event().wait()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getppid()).encode()]  # the worker whose child answers
"""


def forking_site(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """``site`` under forking with ``HANGING_APP`` at /app: /app/hang never returns, /app/ok
    answers with the pid of the worker."""
    apps = tmp_path / "apps"
    write_app(apps, "hangs", HANGING_APP)
    return with_app(site(tmp_path, "x", concurrency="forking", **extra), apps, "hangs")


def forking_worker(srv: PorchServer) -> int | None:
    """The pid of the forking worker that answers, or None when the request failed."""
    try:
        return int(requests.get(srv.url + "/app/ok", timeout=5).text)
    except requests.RequestException:
        return None


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def test_a_forking_worker_whose_every_child_is_stuck_is_replaced(porch, tmp_path: Path) -> None:
    """max_children: 2, both stuck in an application for good: the master names both requests,
    replaces the worker, and the stuck children end with it."""
    srv = porch(forking_site(tmp_path, max_children=2, worker_timeout=2, timeouts={"graceful": 1}), env=ENV)
    pid = forking_worker(srv)
    assert pid is not None
    wait_until(lambda: not children_of(pid), what="the probe's child to end")  # its connection closed
    clients = [threading.Thread(target=expect_cut_off, args=(f"{srv.url}/app/hang?stuck={name}",)) for name in "ab"]
    for client in clients:
        client.start()
    try:
        stuck = wait_until(lambda: len(kids := children_of(pid)) == 2 and kids, what="two children")
        wait_until(lambda: "is stuck" in srv.error_text(), what="the stuck worker to be noticed")
        text = srv.error_text()
        assert f"worker {pid} is stuck: all 2 children in a request" in text
        for name in "ab":
            assert re.search(rf"worker {pid} stuck on GET /app/hang\?stuck={name} for [\d.]+s \(request \w+\)", text)
        wait_until(lambda: forking_worker(srv) not in (None, pid), what="a replacement worker")
        wait_until(lambda: all(gone(child) for child in stuck), what="the stuck children to end")
        wait_until(lambda: gone(pid), what="the stuck worker to go")
    finally:
        for client in clients:
            client.join(20)
    assert "timed out" not in srv.error_text()


def test_a_forking_workers_children_die_with_it(porch, tmp_path: Path) -> None:
    """A worker killed outright (the master's last resort) takes its children along."""
    srv = porch(forking_site(tmp_path), env=ENV)
    pid = forking_worker(srv)
    assert pid is not None
    wait_until(lambda: not children_of(pid), what="the probe's child to end")  # its connection closed
    client = threading.Thread(target=expect_cut_off, args=(f"{srv.url}/app/hang",))
    client.start()
    try:
        [child] = wait_until(lambda: children_of(pid), what="a child")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: gone(child), what="the child to end with its worker", timeout=3)
    finally:
        client.join(20)


FAILING_APP = """
def application(environ, start_response):
    raise RuntimeError("failed on purpose")
"""


def test_forking_children_log_while_their_worker_rotates_its_logs(porch, tmp_path: Path) -> None:
    """Each child writes a traceback to the error log while the worker's main thread reopens
    its logs (USR1, again and again) and says so there: a child forked while that thread was
    part way through a write would inherit the stream's own lock taken, and hang for good."""
    apps = tmp_path / "apps"
    write_app(apps, "fails", FAILING_APP)
    srv = porch(with_app(site(tmp_path, "x", concurrency="forking"), apps, "fails"), env=ENV)
    [pid] = wait_until(srv.serving_pids, what="the worker to serve")
    done = threading.Event()

    def rotate() -> None:
        while not done.is_set():
            os.kill(pid, signal.SIGUSR1)
            done.wait(0.0005)

    rotator = threading.Thread(target=rotate)
    rotator.start()
    try:
        for number in range(200):
            try:
                status = requests.get(srv.url + "/app", headers={"Connection": "close"}, timeout=5).status_code
            except requests.Timeout:
                pytest.fail(f"request {number + 1} unanswered: its child hangs")
            assert status == 500
    finally:
        done.set()
        rotator.join()
    assert srv.error_text().count("failed on purpose") >= 200
    assert "log files reopened" in srv.error_text()


def test_a_worker_that_cannot_boot_after_startup_is_retried(porch, tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    write_app(apps, "changes_on_disk", GOOD_APP)
    srv = porch(with_app(site(tmp_path, "x"), apps, "changes_on_disk"), env=ENV)
    pid = serving_pid(srv)
    write_app(apps, "changes_on_disk", "raise RuntimeError('broken by a deploy')\n")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: "could not boot (generation 0); retrying in" in srv.error_text(), what="a failed respawn")
    assert srv.proc.poll() is None, "the master keeps running"
    write_app(apps, "changes_on_disk", GOOD_APP)
    wait_until(
        lambda: requests.get(srv.url + "/app", timeout=5).text == "app ok", what="the retried worker", timeout=15
    )
    assert "broken by a deploy" in srv.error_text()


def test_the_master_stops_when_no_worker_can_boot_for_respawn_timeout(porch, tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    write_app(apps, "breaks_later", GOOD_APP)
    srv = porch(with_app(site(tmp_path, "x", respawn_timeout=1.5), apps, "breaks_later"), env=ENV)
    pid = serving_pid(srv)
    write_app(apps, "breaks_later", "raise RuntimeError('still broken')\n")
    os.kill(pid, signal.SIGKILL)
    assert srv.proc.wait(15) == 1
    assert "respawn_timeout" in srv.error_text()


TERM_BEFORE_RUN = """
import os, signal, sys
from pathlib import Path
from porch.config.load import config_from_mapping
from porch.net.listener import bind_all
from porch.workers.runtime import build_server

config = config_from_mapping(
    {"listen": ["127.0.0.1:0"], "threads": 2, "mounts": [{"path": "/", "type": "status"}], "log": {"access": False}},
    source="<test>",
    base_dir=Path("."),
)
runtime = build_server(config, bind_all(config.listen))  # its pool threads serve from here on
os.kill(os.getpid(), signal.SIGTERM)  # before run(): the window a worker is in while it starts
sys.exit(runtime.run())
"""


def test_a_term_while_the_worker_starts_drains_instead_of_killing(tmp_path: Path) -> None:
    """The pool serves as soon as it exists, so the worker's signals are its own from then on."""
    result = subprocess.run(
        [sys.executable, "-c", TERM_BEFORE_RUN], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "SIGTERM: stopping gracefully" in result.stderr
