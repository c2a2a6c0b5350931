"""The ``metrics`` mount through real servers: content negotiation, gzip, methods and paths, and
the loopback-only default -- what a Prometheus scrape sees, read with prometheus_client's parsers.

How the counts follow real traffic across workers is ``test_metrics.py``'s; here the output is
checked for form: every family there, in the format asked for.
"""

from __future__ import annotations

import gzip
import http.client
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CONCURRENCY_MODELS
from porchtest import PorchServer
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from porch.metrics.exposition import FAMILIES

# What Prometheus 2.x and 3.x send when they scrape (scrape_protocols left at their default).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
FAMILY_NAMES = {family.name for family in FAMILIES}


def metrics_config(*extra_mounts: dict[str, object], concurrency: str = "threading") -> dict[str, object]:
    return {
        "concurrency": concurrency,
        "workers": 2,
        "mounts": [{"path": "/metrics", "type": "metrics"}, *extra_mounts],
    }


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    denied = {"path": "/denied", "type": "metrics", "access": {"allow": ["10.0.0.0/8"]}}
    srv = PorchServer.start(metrics_config(denied, concurrency=request.param), tmp_path_factory.mktemp(request.param))
    yield srv
    srv.stop()


def get(
    server: PorchServer, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on a fresh connection, exactly the headers given (http.client adds only Host)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def test_prometheus_text_by_default(server: PorchServer) -> None:
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "text/plain"}, {"Accept": "application/openmetrics-text;q=0"}):
        response, body = get(server, "/metrics", headers)
        assert response.status == 200, headers
        assert response.getheader("Content-Type") == PROMETHEUS_TYPE
        assert response.getheader("Cache-Control") == "no-store"
        assert response.getheader("Content-Encoding") is None  # gzip only when asked for
        text = body.decode()
        assert not text.endswith("# EOF\n")
        assert {family.name for family in parse_prometheus(text)} == FAMILY_NAMES
        assert "# TYPE porch_http_requests_total counter\n" in text


def test_openmetrics_when_the_scraper_asks_for_it(server: PorchServer) -> None:
    for accept in (PROMETHEUS_ACCEPT, "application/openmetrics-text", "text/plain;q=0.9, Application/OpenMetrics-Text"):
        response, body = get(server, "/metrics", {"Accept": accept})
        assert response.status == 200
        assert response.getheader("Content-Type") == OPENMETRICS_TYPE
        assert response.getheader("Cache-Control") == "no-store"
        text = body.decode()
        assert text.endswith("\n# EOF\n")
        assert {family.name for family in parse_openmetrics(text)} == FAMILY_NAMES
        assert "# TYPE porch_http_requests counter\n" in text


def test_gzip_when_accepted(server: PorchServer) -> None:
    """Prometheus sends ``Accept-Encoding: gzip`` on every scrape."""
    response, body = get(server, "/metrics", {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
    assert response.status == 200 and response.getheader("Content-Encoding") == "gzip"
    assert int(response.getheader("Content-Length", "-1")) == len(body)
    assert {"accept", "accept-encoding"} <= {v.strip().lower() for v in response.getheader("Vary", "").split(",")}
    text = gzip.decompress(body).decode()
    assert {family.name for family in parse_openmetrics(text)} == FAMILY_NAMES
    refused, plain = get(server, "/metrics", {"Accept-Encoding": "gzip;q=0, identity"})
    assert refused.getheader("Content-Encoding") is None
    assert {family.name for family in parse_prometheus(plain.decode())} == FAMILY_NAMES


def test_head_gets_the_headers_only(server: PorchServer) -> None:
    response, body = get(server, "/metrics", {"Accept-Encoding": "gzip"}, method="HEAD")
    assert response.status == 200 and body == b""
    assert response.getheader("Content-Type") == PROMETHEUS_TYPE
    assert response.getheader("Content-Encoding") == "gzip"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_are_refused_with_allow(server: PorchServer, method: str) -> None:
    response, _ = get(server, "/metrics", method=method)
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"


@pytest.mark.parametrize("path", ["/metrics/", "/metrics?format=json"])
def test_the_mount_path_answers(server: PorchServer, path: str) -> None:
    response, _ = get(server, path)
    assert response.status == 200


@pytest.mark.parametrize("path", ["/metrics/x", "/metrics/metrics", "/metrics/status.js"])
def test_paths_below_the_mount_are_not_found(server: PorchServer, path: str) -> None:
    response, _ = get(server, path)
    assert response.status == 404


def test_a_mount_whose_access_excludes_loopback_refuses_it(server: PorchServer) -> None:
    """The mount's own ``access: {allow: [10.0.0.0/8]}`` replaces the loopback-only default."""
    response, _ = get(server, "/denied")
    assert response.status == 403


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (the source of its default route), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP connect only picks the route, sends nothing
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_loopback_only_unless_the_mount_says_otherwise(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    """A client on another address of this machine: 403 from the metrics mount by default, while
    the static mount and a metrics mount whose access admits everyone answer it."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("<p>hello</p>\n")
    open_metrics = {"path": "/open", "type": "metrics", "access": {"allow": ["0.0.0.0/0"]}}
    static = {"path": "/", "type": "static", "root": str(tmp_path / "www")}
    # allow_root: a test run as root (a container) may listen beyond loopback without `user:`
    srv = porch({**metrics_config(open_metrics, static), "listen": [f"{address}:0"], "allow_root": True})
    assert srv.host == address  # so the client's address is ``address`` too, not loopback
    assert get(srv, "/metrics")[0].status == 403
    assert get(srv, "/open")[0].status == 200
    assert get(srv, "/")[0].status == 200
