"""The pre-fork master driven with real signals: respawn, reload, log reopening, timeouts."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from porchtest import PorchServer
from porchtest import wait_until as wait_for

TESTS_DIR = Path(__file__).parent
ENV = {"PYTHONPATH": str(TESTS_DIR)}


def worker_pid(srv: PorchServer) -> int:
    return int(requests.get(srv.url + "/status", timeout=5).json()["pid"])


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def site(tmp_path: Path, text: str, **extra: object) -> dict:
    root = tmp_path / f"www-{text}"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text(text)
    config = {
        "workers": 2,
        "timeouts": {"keepalive": 2, "graceful": 5},
        "mounts": [
            {"path": "/", "type": "static", "root": str(root)},
            {"path": "/status", "type": "status"},
            {"path": "/echo", "type": "core_handlers:EchoHandler"},
        ],
    }
    config.update(extra)
    return config


def rewrite(srv: PorchServer, config: dict) -> None:
    """Replace the running server's config file, keeping its listen and log settings."""
    current = yaml.safe_load(srv.config_path.read_text())
    config = {**config, "listen": [srv.address], "log": current["log"]}
    srv.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_killed_worker_is_replaced(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "one", workers=1), env=ENV)
    pid = worker_pid(srv)
    os.kill(pid, signal.SIGKILL)
    new_pid = wait_for(lambda: worker_pid(srv) != pid and worker_pid(srv), what="a new worker")
    assert new_pid != pid and requests.get(srv.url + "/", timeout=10).text == "one"
    assert f"worker {pid} died (signal SIGKILL)" in srv.error_text()


def test_master_runs_the_configured_number_of_workers(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "one", workers=3), env=ENV)
    wait_for(lambda: len(children(srv.proc.pid)) == 3, what="3 workers")
    srv.signal(signal.SIGTTIN)
    wait_for(lambda: len(children(srv.proc.pid)) == 4, what="4 workers after TTIN")
    srv.signal(signal.SIGTTOU)
    wait_for(lambda: len(children(srv.proc.pid)) == 3, what="3 workers after TTOU")
    assert requests.get(srv.url + "/", timeout=10).text == "one"


def test_hup_applies_a_changed_config(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "before"), env=ENV)
    old_workers = children(srv.proc.pid)
    rewrite(srv, site(tmp_path, "after"))
    srv.signal(signal.SIGHUP)
    wait_for(lambda: requests.get(srv.url + "/", timeout=10).text == "after", what="the new config")
    wait_for(lambda: not (children(srv.proc.pid) & old_workers), what="old workers to retire")


def test_hup_with_a_broken_config_keeps_serving(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "steady"), env=ENV)
    srv.config_path.write_text(srv.config_path.read_text() + "threads: many\n")
    srv.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in srv.error_text(), what="the reload error")
    assert f"{srv.config_path}:" in srv.error_text() and "threads:" in srv.error_text()
    assert requests.get(srv.url + "/", timeout=10).text == "steady"


def test_hup_with_an_app_that_cannot_import_keeps_serving(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "steady"), env=ENV)
    broken = tmp_path / "apps"
    broken.mkdir()
    (broken / "broken_app.py").write_text("raise RuntimeError('this app cannot start')\n")
    config = site(tmp_path, "steady")
    config["mounts"].append(
        {"path": "/app", "type": "wsgi", "app": "broken_app:application", "pythonpath": [str(broken)]}
    )
    rewrite(srv, config)
    srv.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in srv.error_text(), what="the reload error")
    assert "this app cannot start" in srv.error_text()
    assert requests.get(srv.url + "/", timeout=10).text == "steady"
    assert requests.get(srv.url + "/app").status_code == 404


def test_worker_that_cannot_boot_stops_the_master(porch, tmp_path: Path) -> None:
    broken = tmp_path / "apps"
    broken.mkdir()
    (broken / "broken_boot.py").write_text("raise RuntimeError('no boot for you')\n")
    config = site(tmp_path, "x")
    config["mounts"].append(
        {"path": "/app", "type": "wsgi", "app": "broken_boot:application", "pythonpath": [str(broken)]}
    )
    srv = porch(config, env=ENV)
    assert srv.proc.wait(20) == 1
    assert "no boot for you" in srv.error_text()


def test_no_request_fails_through_three_reloads(porch, tmp_path: Path) -> None:
    """Keep-alive clients hammer the server (bounded, loopback) while it reloads three times."""
    srv = porch(site(tmp_path, "v0"), env=ENV)
    stop = threading.Event()
    failures: list[str] = []
    counts: list[int] = []

    def client() -> None:
        served = 0
        with requests.Session() as session:
            while not stop.is_set() and served < 20000:
                try:
                    response = session.get(srv.url + "/", timeout=10)
                    if response.status_code != 200 or not response.text.startswith("v"):
                        failures.append(f"{response.status_code} {response.text[:40]}")
                except requests.RequestException as error:
                    failures.append(repr(error))
                served += 1
        counts.append(served)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        for version in (1, 2, 3):
            time.sleep(1.0)
            rewrite(srv, site(tmp_path, f"v{version}"))
            srv.signal(signal.SIGHUP)
            wait_for(lambda v=version: f"generation {v} serving" in srv.error_text(), what=f"reload {version}")
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures, failures[:5]
    assert sum(counts) > 100
    assert requests.get(srv.url + "/", timeout=10).text == "v3"


def test_usr1_reopens_logs_without_losing_lines(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "logs"), env=ENV)
    wait_for(lambda: srv.error_text().count(" serving (pid ") == 2, what="both workers to serve")
    with requests.Session() as session:
        for _ in range(20):
            assert session.get(srv.url + "/").status_code == 200
    wait_for(lambda: len(srv.access_lines()) == 20, what="20 access lines")
    rotated = srv.access_log.with_name("access.log.1")
    srv.access_log.rename(rotated)
    srv.signal(signal.SIGUSR1)
    wait_for(lambda: srv.error_text().count("log files reopened") >= 3, what="master and workers to reopen")
    with requests.Session() as session:
        for _ in range(30):
            assert session.get(srv.url + "/").status_code == 200
    wait_for(lambda: len(srv.access_lines()) == 30, what="30 lines in the new file")
    assert len(rotated.read_text().splitlines()) == 20


def test_term_lets_a_slow_request_finish(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "x"), env=ENV)
    result: dict[str, requests.Response] = {}
    thread = threading.Thread(target=lambda: result.update(r=requests.get(srv.url + "/echo?sleep=1.5", timeout=10)))
    thread.start()
    time.sleep(0.5)
    srv.signal(signal.SIGTERM)
    thread.join()
    assert result["r"].status_code == 200
    assert srv.proc.wait(10) == 0


def expect_failure(url: str) -> None:
    """A request whose worker goes away under it: the client sees the connection fail."""
    with pytest.raises(requests.RequestException):
        requests.get(url, timeout=10)


def test_quit_stops_at_once(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "x"), env=ENV)
    thread = threading.Thread(target=expect_failure, args=(srv.url + "/echo?sleep=5",))
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    srv.signal(signal.SIGQUIT)
    assert srv.proc.wait(10) == 0
    assert time.monotonic() - started < 4
    thread.join()


def test_stuck_worker_is_killed_and_its_request_logged(porch, tmp_path: Path) -> None:
    srv = porch(site(tmp_path, "x", workers=1, worker_timeout=1), env=ENV)
    pid = worker_pid(srv)
    thread = threading.Thread(target=expect_failure, args=(srv.url + "/echo?sleep=3&stuck=yes",))
    thread.start()
    time.sleep(1.2)  # a heartbeat reports the request in flight
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: "timed out" in srv.error_text(), what="the heartbeat timeout")
    thread.join()
    assert "stuck=yes" in srv.error_text()
    assert wait_for(lambda: worker_pid(srv) != pid, what="a replacement worker")


def test_max_requests_recycles_workers(porch, tmp_path: Path) -> None:
    """The drain starts with the completion of the max_requests-th request, not at a later check:
    the next response on the same keep-alive connection already closes it."""
    srv = porch(site(tmp_path, "x", workers=1, max_requests=5), env=ENV)
    wait_for(lambda: " serving (pid " in srv.error_text(), what="the worker to count its requests")
    connection = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    answers = []
    try:
        for _ in range(6):
            connection.request("GET", "/status")
            response = connection.getresponse()
            answers.append((json.loads(response.read())["pid"], response.getheader("Connection")))
    finally:
        connection.close()
    first = answers[0][0]
    assert answers == [(first, None)] * 5 + [(first, "close")]
    assert wait_for(lambda: worker_pid(srv) != first, what="a replacement worker")
    assert "served 5 requests (max_requests): retiring" in srv.error_text()


def test_max_requests_recycles_forking_workers(porch, tmp_path: Path) -> None:
    """Under forking the requests complete in the children: the worker counts them all the same,
    and retires after its fifth without failing a request."""
    srv = porch(site(tmp_path, "x", workers=1, concurrency="forking", max_requests=5), env=ENV)
    first = wait_for(lambda: srv.serving_pids(), what="the worker to serve")[0]
    with requests.Session() as session:  # kept alive: the count follows the requests, not the connections
        answers = [session.get(srv.url + "/", timeout=10) for _ in range(3)]
    answers += [requests.get(srv.url + "/", timeout=10) for _ in range(4)]
    assert [answer.text for answer in answers] == ["x"] * 7
    assert wait_for(lambda: len(srv.serving_pids()) == 2, what="a replacement worker")
    assert srv.serving_pids()[0] == first
    assert "served 5 requests (max_requests): retiring" in srv.error_text()
    assert requests.get(srv.url + "/", timeout=10).text == "x"
