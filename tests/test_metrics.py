"""Metrics summed by the master across workers, through real servers: what clients did is what
the ``metrics`` mount and the status JSON say, also after a worker was killed and replaced, and
after a reload; the ``health`` and ``ready`` probes; request ids reaching applications.

The numbers are read with prometheus_client's own parser.  The master publishes a few times a
second, so each check polls until the counts arrive (bounded) instead of sleeping.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import textwrap
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from porchtest import PorchServer, wait_until
from prometheus_client.parser import text_string_to_metric_families

APP = """
import os, time

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"].partition("&")[0] or "1"))
    environ["wsgi.input"].read()
    body = environ["porch.request_id"].encode() if path == "/id" else b"ok"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"""

RPC = """
import xmlrpc.client

def add(a, b):
    return a + b

def refuse():
    raise xmlrpc.client.Fault(42, "refused")
"""

CGI_ID = """#!/bin/sh
printf 'Content-Type: text/plain\\n\\n%s' "$REQUEST_ID"
"""

CGI_SLEEP = """#!/bin/sh
sleep 30
printf 'Content-Type: text/plain\\n\\nlate\\n'
"""


def site(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """A config with every kind of mount and the observability ones, files written to ``tmp_path``."""
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    (apps / "metricsapp.py").write_text(APP)
    (apps / "metricsrpc.py").write_text(RPC)
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("<p>hello</p>\n")
    cgi = tmp_path / "cgi"
    cgi.mkdir(exist_ok=True)
    for name, text in (("id.sh", CGI_ID), ("sleep.sh", CGI_SLEEP)):
        (cgi / name).write_text(text)
        (cgi / name).chmod(0o755)
    config: dict[str, Any] = {
        "workers": 2,
        "threads": 4,
        "mounts": [
            {"path": "/", "type": "static", "root": str(www)},
            {"path": "/app", "type": "wsgi", "app": "metricsapp:application", "pythonpath": [str(apps)]},
            {
                "path": "/RPC2",
                "type": "xmlrpc",
                "pythonpath": [str(apps)],
                "functions": {"add": "metricsrpc:add", "refuse": "metricsrpc:refuse"},
            },
            {"path": "/cgi-bin", "type": "cgi", "root": str(cgi), "timeout": 1},
            {"path": "/status", "type": "status"},
            {"path": "/metrics", "type": "metrics"},
            {"path": "/healthz", "type": "health"},
            {"path": "/readyz", "type": "ready"},
        ],
    }
    config.update(settings)
    return config


def scrape(server: PorchServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metrics mount: (name, sorted labels) → value."""
    response = requests.get(server.url + "/metrics", timeout=5)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status(server: PorchServer) -> dict[str, Any]:
    response = requests.get(server.url + "/status?format=json", timeout=5)
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def until(server: PorchServer, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Poll the status JSON until ``check`` holds (the master publishes a few times a second)."""
    found: dict[str, Any] = {}

    def holds() -> bool:
        nonlocal found
        found = status(server)
        return check(found)

    wait_until(holds, what, timeout=10)
    return found


def fresh_get(server: PorchServer, path: str) -> requests.Response:
    """A request on a connection of its own, so the workers share them."""
    return requests.get(server.url + path, timeout=10, headers={"Connection": "close"})


def worker_pids(server: PorchServer) -> set[int]:
    return {int(worker["pid"]) for worker in status(server).get("workers", ())}


def test_counts_across_workers_survive_a_killed_worker(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    server = porch(site(tmp_path))
    until(server, lambda s: len(s.get("workers", ())) == 2 and s["state"] == "ready", "two workers serving")
    answered_by: set[int] = set()
    deadline = time.monotonic() + 10
    while len(answered_by) < 2 and time.monotonic() < deadline:  # the health answer names its worker
        answered_by.add(int(fresh_get(server, "/healthz").json()["pid"]))
    assert len(answered_by) == 2, "both workers served requests"
    health_requests = value(scrape(server), "porch_http_requests_total", mount="/healthz", method="GET", code="2xx")

    for _ in range(30):
        assert fresh_get(server, "/index.html").status_code == 200
    not_found_bytes = 0
    for _ in range(7):
        missing = fresh_get(server, "/missing")
        assert missing.status_code == 404
        not_found_bytes += len(missing.content)
    for _ in range(3):
        assert fresh_get(server, "/app/boom").status_code == 500
    rpc = xmlrpc.client.ServerProxy(server.url + "/RPC2")
    assert rpc.add(2, 3) == 5
    for call in (rpc.refuse, rpc.no_such_method, rpc.refuse):
        with pytest.raises(xmlrpc.client.Fault):
            call()
    post = requests.post(server.url + "/app/x", data=b"x" * 1000, timeout=5)
    assert post.status_code == 200

    def counted(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> bool:
        return value(samples, "porch_http_requests_total", mount="/", method="GET", code="2xx") == 30

    wait_until(lambda: counted(scrape(server)), "the static requests counted", timeout=10)
    samples = scrape(server)
    assert value(samples, "porch_http_requests_total", mount="/", method="GET", code="4xx") == 7
    assert value(samples, "porch_http_requests_total", mount="/app", method="GET", code="5xx") == 3
    assert value(samples, "porch_http_requests_total", mount="/app", method="POST", code="2xx") == 1
    assert value(samples, "porch_http_requests_total", mount="/RPC2", method="POST", code="2xx") == 4
    assert value(samples, "porch_wsgi_exceptions_total", mount="/app") == 3
    assert value(samples, "porch_xmlrpc_faults_total", mount="/RPC2", code="42") == 2
    assert value(samples, "porch_xmlrpc_faults_total", mount="/RPC2", code="-32601") == 1
    assert value(samples, "porch_http_request_body_bytes_total", mount="/app") == 1000
    sent = 30 * len("<p>hello</p>\n") + not_found_bytes
    assert value(samples, "porch_http_response_body_bytes_total", mount="/") == sent
    # The histogram holds every request of the mount, cumulative up to +Inf.
    count = value(samples, "porch_http_request_duration_seconds_count", mount="/")
    assert count == 37
    assert value(samples, "porch_http_request_duration_seconds_bucket", mount="/", le="+Inf") == count
    assert value(samples, "porch_http_request_duration_seconds_bucket", mount="/", le="10.0") == count
    assert 0 < value(samples, "porch_http_request_duration_seconds_sum", mount="/") < 37 * 10
    assert value(samples, "porch_connections_accepted_total") >= 44
    assert value(samples, "porch_workers") == 2

    # A worker killed outright loses nothing it had counted; its replacement counts on.
    victim = max(answered_by)
    before = scrape(server)
    os.kill(victim, signal.SIGKILL)
    after = until(
        server,
        lambda s: len(s["workers"]) == 2 and victim not in {w["pid"] for w in s["workers"]},
        "the killed worker replaced",
    )
    assert after["worker_events"]["respawned"] == 1
    assert after["worker_events"]["exited"] == {"crashed": 1}
    samples = scrape(server)
    for key, counted_before in before.items():
        name = key[0]
        if name.endswith(("_total", "_count", "_sum", "_bucket")) and "/metrics" not in str(key[1]):
            assert samples.get(key, 0.0) >= counted_before, f"{key} went down after a worker was killed"
    assert value(samples, "porch_http_requests_total", mount="/", method="GET", code="2xx") == 30
    assert value(samples, "porch_http_requests_total", mount="/healthz", method="GET", code="2xx") >= health_requests
    assert value(samples, "porch_workers_exited_total", reason="crashed") == 1
    for _ in range(4):
        assert fresh_get(server, "/index.html").status_code == 200
    wait_until(
        lambda: value(scrape(server), "porch_http_requests_total", mount="/", method="GET", code="2xx") == 34,
        "requests after the respawn counted on top",
    )


def test_status_json_shows_workers_requests_in_flight_without_query(
    porch: Callable[..., PorchServer], tmp_path: Path
) -> None:
    server = porch(site(tmp_path))
    until(server, lambda s: s.get("state") == "ready", "ready")
    slow = threading.Thread(target=fresh_get, args=(server, "/app/sleep?2&secret=hunter2"))
    slow.start()
    try:
        busy = until(
            server,
            lambda s: any(b["path"] == "/app/sleep" for w in s["workers"] for b in w["busy"]),
            "the slow request on the scoreboard",
        )
    finally:
        slow.join()
    request = next(b for w in busy["workers"] for b in w["busy"] if b["path"] == "/app/sleep")
    assert request["method"] == "GET"
    assert request["client"] == "127.0.0.1"
    assert request["thread"].startswith("porch-")
    assert request["age_seconds"] >= 0
    assert "hunter2" not in json.dumps(busy), "another user's query string is not shown"
    assert busy["in_flight"] >= 1
    assert all(w["rss_bytes"] > 1_000_000 and w["threads"] == 4 for w in busy["workers"])
    # Once a second the history gets a point: requests a second, latency quantiles, connections.
    history = until(server, lambda s: len(s["history"]["time"]) >= 3, "three history points")["history"]
    assert len(history["requests_per_second"]) == len(history["p99"]) == len(history["codes"]["2xx"])
    assert max(history["requests_per_second"]) > 0


def test_cgi_scripts_running_timed_out_and_killed(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    server = porch(site(tmp_path, workers=1))
    response = fresh_get(server, "/cgi-bin/sleep.sh")
    assert response.status_code == 504
    assert fresh_get(server, "/cgi-bin/id.sh").status_code == 200
    document = until(server, lambda s: s["cgi"]["started"] == 2, "two scripts counted")
    assert document["cgi"] == {"running": 0, "started": 2, "timed_out": 1, "killed": 1}


def test_metrics_can_be_switched_off(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    server = porch(site(tmp_path, workers=1, metrics=False))
    for _ in range(5):
        assert fresh_get(server, "/index.html").status_code == 200
    document = until(server, lambda s: [w["state"] for w in s.get("workers", ())] == ["serving"], "the worker listed")
    time.sleep(0.6)  # longer than the master takes to publish
    assert status(server)["requests"] == []
    assert value(scrape(server), "porch_http_requests_total", mount="/", method="GET", code="2xx") == 0
    assert document["workers"][0]["pid"] > 0


def test_health_and_ready_probes(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    server = porch(site(tmp_path, workers=1, timeouts={"graceful": 10}))
    until(server, lambda s: s.get("state") == "ready", "ready")
    health = requests.get(server.url + "/healthz", timeout=5)
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    ready = requests.get(server.url + "/readyz", timeout=5)
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert requests.post(server.url + "/readyz", timeout=5).status_code == 405
    assert requests.get(server.url + "/readyz/deeper", timeout=5).status_code == 404

    # On TERM the worker drains: a kept-alive connection's next probe is told 503, then closed.
    probe = http.client.HTTPConnection(server.host, server.port, timeout=5)
    probe.request("GET", "/readyz")
    first = probe.getresponse()
    first.read()
    assert first.status == 200
    slow = threading.Thread(target=fresh_get, args=(server, "/app/sleep?2"))
    slow.start()
    wait_until(lambda: any(w["busy"] for w in status(server).get("workers", [])), "the slow request in flight")
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    probe.request("GET", "/readyz")
    draining = probe.getresponse()
    document = json.loads(draining.read())
    assert draining.status == 503
    assert document["reason"] in ("draining", "stopping")
    assert draining.getheader("Connection") == "close"
    probe.close()
    slow.join()


def test_ready_says_reloading_while_a_new_generation_boots(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    config = site(tmp_path, workers=1)
    server = porch(config)
    until(server, lambda s: s.get("state") == "ready", "ready")
    apps = tmp_path / "apps"
    (apps / "slowboot.py").write_text(
        textwrap.dedent(APP) + "\nimport time\ntime.sleep(3)  # a slow import: the reload takes a while\n"
    )
    full = yaml.safe_load(server.config_path.read_text())
    full["mounts"][1]["app"] = "slowboot:application"
    server.config_path.write_text(yaml.safe_dump(full, sort_keys=False))
    server.signal(signal.SIGHUP)
    not_ready = wait_until(
        lambda: (r := requests.get(server.url + "/readyz", timeout=5)).status_code == 503 and r.json(),
        "ready to say 503 while the new workers boot",
    )
    assert not_ready["reason"] == "reloading"
    wait_until(lambda: requests.get(server.url + "/readyz", timeout=5).status_code == 200, "ready again", timeout=15)
    document = until(server, lambda s: s["reloads"]["succeeded"] == 1, "the reload counted")
    assert document["generation"] == 1


def test_request_ids_reach_applications_and_the_response(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    server = porch(site(tmp_path, workers=1, request_id_header=True))
    for count, path in enumerate(("/app/id", "/cgi-bin/id.sh"), start=1):
        response = fresh_get(server, path)
        assert response.status_code == 200
        request_id = response.headers["X-Request-ID"]
        assert len(request_id) >= 8
        assert response.text == request_id, f"{path} saw the id the response carries"
        assert any(request_id in line for line in server.wait_access_lines(count)), "and the access log"
    first, second = (fresh_get(server, "/index.html").headers["X-Request-ID"] for _ in range(2))
    assert first != second, "each response its own id, even from the static cache"


def test_no_request_id_header_unless_asked(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    server = porch(site(tmp_path, workers=1))
    assert "X-Request-ID" not in fresh_get(server, "/app/id").headers


def test_forked_children_count_into_their_worker(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    server = porch(site(tmp_path, concurrency="forking"))
    for _ in range(20):
        assert fresh_get(server, "/index.html").status_code == 200
    with requests.Session() as session:  # one connection, several requests: one child
        for _ in range(5):
            assert session.get(server.url + "/app/x", timeout=5).status_code == 200
    wait_until(
        lambda: value(scrape(server), "porch_http_requests_total", mount="/app", method="GET", code="2xx") == 5,
        "the kept-alive child's requests counted",
    )
    samples = scrape(server)
    assert value(samples, "porch_http_requests_total", mount="/", method="GET", code="2xx") == 20
    assert value(samples, "porch_http_request_duration_seconds_count", mount="/") == 20
    document = until(server, lambda s: s["connections"]["open"] <= 1, "the children's connections closed")
    assert document["connections"]["accepted"] >= 22
