"""The metrics snapshot rendered as Prometheus text and OpenMetrics, read back by prometheus_client's own parsers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus
from prometheus_client.utils import floatToGoString

from porch.metrics.exposition import FAMILIES, number_text, openmetrics_text, prometheus_text

BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
LE = ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf"]
ODD_MOUNT = '/odd "quoted" \\ back\nslash'  # a label value with every character both formats escape


def snapshot() -> dict[str, Any]:
    """A snapshot as a master with two workers and four mounts publishes it (``porch.metrics``)."""
    return {
        "software": "porch/1.2.3",
        "version": "1.2.3",
        "python": "3.12.1 (cpython)",
        "build": "pure",
        "concurrency": "threading",
        "master_pid": 4000,
        "started": 1767225600.25,
        "time": 1767229200.75,
        "uptime_seconds": 3600.5,
        "generation": 3,
        "state": "ready",
        "workers_target": 3,
        "requests": [
            {"mount": "/", "method": "GET", "code": "2xx", "count": 1200.0},
            {"mount": "/", "method": "GET", "code": "3xx", "count": 17.0},
            {"mount": "/", "method": "HEAD", "code": "2xx", "count": 3.0},
            {"mount": "/RPC2", "method": "POST", "code": "2xx", "count": 40.0},
            {"mount": "/app", "method": "POST", "code": "5xx", "count": 2.0},
            {"mount": ODD_MOUNT, "method": "GET", "code": "4xx", "count": 1.0},
            {"mount": "", "method": "other", "code": "4xx", "count": 5.0},
        ],
        "bounds": BOUNDS,
        "durations": [
            {
                "mount": "/",
                "cumulative": [600.0, 900, 1100, 1150, 1200, 1210, 1215, 1218, 1219, 1220, 1220, 1220, 1220, 1220],
                "sum": 3.75,
                "count": 1220.0,
            },
            {"mount": "/app", "cumulative": [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2], "sum": 8.5, "count": 2},
        ],
        "bytes": [{"mount": "/", "received": 0, "sent": 5242880.0}, {"mount": "/app", "received": 2048.0, "sent": 310}],
        "connections": {"accepted": 900.0, "open": 12.0, "idle": 9, "active": 3.0},
        "in_flight": 3,
        "cgi": {"running": 1.0, "started": 55.0, "timed_out": 2.0, "killed": 1.0},
        "wsgi_exceptions": [{"mount": "/app", "count": 2.0}],
        "xmlrpc_faults": [
            {"mount": "/RPC2", "code": -32601, "count": 4.0},
            {"mount": "/RPC2", "code": -32700, "count": 1.0},
            {"mount": "/RPC2", "code": 7, "count": 2.0},
            {"mount": "/RPC2", "code": "other", "count": 1.0},
        ],
        "worker_events": {"started": 5, "respawned": 1, "exited": {"recycled": 1, "killed by SIGKILL": 1}},
        "reloads": {"succeeded": 2, "refused": 1},
        "workers": [{"pid": 4001, "busy": []}, {"pid": 4002, "busy": []}],
    }


Parser = Callable[[str], Iterable[Metric]]
FORMATS = [
    pytest.param(prometheus_text, parse_prometheus, id="prometheus"),
    pytest.param(openmetrics_text, parse_openmetrics, id="openmetrics"),
]


def families(render: Callable[[dict[str, Any]], str], parse: Parser, data: dict[str, Any]) -> dict[str, Metric]:
    """The families the parser finds, by name (a counter's without ``_total``, as both parsers name them)."""
    found = {family.name: family for family in parse(render(data))}
    assert len(found) == len(FAMILIES)
    return found


def values(family: Metric, sample_name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    """Sample values by their sorted labels, for one sample name (default: the family's only one)."""
    names = {sample.name for sample in family.samples}
    if sample_name is None:
        assert len(names) == 1, names
        sample_name = names.pop()
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == sample_name}


@pytest.mark.parametrize(("render", "parse"), FORMATS)
def test_every_family_has_its_type_and_values(render: Callable[[dict[str, Any]], str], parse: Parser) -> None:
    found = families(render, parse, snapshot())
    assert {name: family.type for name, family in found.items()} == {
        "porch_build_info": "gauge",
        "porch_start_time_seconds": "gauge",
        "porch_uptime_seconds": "gauge",
        "porch_config_generation": "gauge",
        "porch_ready": "gauge",
        "porch_workers": "gauge",
        "porch_workers_desired": "gauge",
        "porch_http_requests": "counter",
        "porch_http_request_duration_seconds": "histogram",
        "porch_http_request_body_bytes": "counter",
        "porch_http_response_body_bytes": "counter",
        "porch_http_requests_in_flight": "gauge",
        "porch_connections_accepted": "counter",
        "porch_connections": "gauge",
        "porch_cgi_scripts_running": "gauge",
        "porch_cgi_scripts_started": "counter",
        "porch_cgi_scripts_timed_out": "counter",
        "porch_cgi_scripts_killed": "counter",
        "porch_wsgi_exceptions": "counter",
        "porch_xmlrpc_faults": "counter",
        "porch_workers_started": "counter",
        "porch_workers_respawned": "counter",
        "porch_workers_exited": "counter",
        "porch_reloads": "counter",
        "porch_rate_limited": "counter",
        "porch_connections_refused": "counter",
    }
    info = {"version": "1.2.3", "python": "3.12.1 (cpython)", "build": "pure", "concurrency": "threading"}
    assert values(found["porch_build_info"]) == {tuple(sorted(info.items())): 1.0}
    unlabelled = {
        "porch_start_time_seconds": 1767225600.25,
        "porch_uptime_seconds": 3600.5,
        "porch_config_generation": 3,
        "porch_ready": 1,
        "porch_workers": 2,
        "porch_workers_desired": 3,
        "porch_http_requests_in_flight": 3,
        "porch_connections_accepted": 900,
        "porch_cgi_scripts_running": 1,
        "porch_cgi_scripts_started": 55,
        "porch_cgi_scripts_timed_out": 2,
        "porch_cgi_scripts_killed": 1,
        "porch_workers_started": 5,
        "porch_workers_respawned": 1,
    }
    assert {name: values(found[name]) for name in unlabelled} == {name: {(): v} for name, v in unlabelled.items()}
    requests = values(found["porch_http_requests"], "porch_http_requests_total")
    assert requests == {
        (("code", row["code"]), ("method", row["method"]), ("mount", row["mount"])): row["count"]
        for row in snapshot()["requests"]
    }
    assert requests[(("code", "4xx"), ("method", "GET"), ("mount", ODD_MOUNT))] == 1  # escaped and read back whole
    assert values(found["porch_http_request_body_bytes"]) == {(("mount", "/"),): 0, (("mount", "/app"),): 2048}
    assert values(found["porch_http_response_body_bytes"]) == {(("mount", "/"),): 5242880, (("mount", "/app"),): 310}
    assert values(found["porch_connections"]) == {
        (("state", "open"),): 12,
        (("state", "idle"),): 9,
        (("state", "active"),): 3,
    }
    assert values(found["porch_wsgi_exceptions"]) == {(("mount", "/app"),): 2}
    assert values(found["porch_xmlrpc_faults"]) == {
        (("code", "-32601"), ("mount", "/RPC2")): 4,
        (("code", "-32700"), ("mount", "/RPC2")): 1,
        (("code", "7"), ("mount", "/RPC2")): 2,
        (("code", "other"), ("mount", "/RPC2")): 1,
    }
    exited = values(found["porch_workers_exited"])
    assert exited == {(("reason", "killed by SIGKILL"),): 1, (("reason", "recycled"),): 1}
    assert values(found["porch_reloads"]) == {(("result", "succeeded"),): 2, (("result", "refused"),): 1}


@pytest.mark.parametrize(("render", "parse"), FORMATS)
def test_the_latency_histogram_is_cumulative_per_mount(render: Callable[[dict[str, Any]], str], parse: Parser) -> None:
    histogram = families(render, parse, snapshot())["porch_http_request_duration_seconds"]
    name = "porch_http_request_duration_seconds"
    for row in snapshot()["durations"]:
        mount = row["mount"]
        buckets = [s for s in histogram.samples if s.name == f"{name}_bucket" and s.labels["mount"] == mount]
        assert [s.labels["le"] for s in buckets] == LE  # as prometheus_client writes them
        counts = [s.value for s in buckets]
        assert counts == row["cumulative"] and counts == sorted(counts)
        by_name = {
            s.name: s.value for s in histogram.samples if s.labels.get("mount") == mount and "le" not in s.labels
        }
        assert by_name == {f"{name}_sum": row["sum"], f"{name}_count": row["count"]}
        assert counts[-1] == by_name[f"{name}_count"]  # +Inf == _count


@pytest.mark.parametrize(("render", "parse"), FORMATS)
def test_an_empty_snapshot_declares_every_family_without_samples(
    render: Callable[[dict[str, Any]], str], parse: Parser
) -> None:
    """Where no master publishes (``{}``) the families are all there, each with no sample."""
    empty = families(render, parse, {})
    full = families(render, parse, snapshot())
    assert {name: family.type for name, family in empty.items()} == {name: f.type for name, f in full.items()}
    assert all(family.samples == [] for family in empty.values())


@pytest.mark.parametrize(("render", "parse"), FORMATS)
def test_missing_parts_of_a_snapshot_are_skipped_not_fatal(
    render: Callable[[dict[str, Any]], str], parse: Parser
) -> None:
    partial = snapshot()
    partial.update(
        state="reloading",
        version=None,
        connections={"accepted": 3},
        cgi=[],
        durations=[{"mount": "/", "cumulative": [1] * 14, "count": 1}],  # no sum: not a histogram
        requests=[{"mount": "/", "method": "GET", "count": 1}, "junk"],  # no code
        worker_events={"exited": None},
    )
    found = families(render, parse, partial)
    assert values(found["porch_ready"]) == {(): 0}  # not "ready"
    assert found["porch_build_info"].samples == []
    assert values(found["porch_connections_accepted"]) == {(): 3}
    for name in ("porch_connections", "porch_cgi_scripts_running", "porch_http_request_duration_seconds"):
        assert found[name].samples == []
    for name in ("porch_http_requests", "porch_workers_started", "porch_workers_exited"):
        assert found[name].samples == []


def test_buckets_that_do_not_match_the_bounds_are_refused() -> None:
    broken = snapshot()
    broken["durations"][0]["cumulative"].pop()
    with pytest.raises(ValueError):
        prometheus_text(broken)


def test_counters_are_declared_as_each_format_wants() -> None:
    """Prometheus text declares ``porch_x_total``; OpenMetrics ``porch_x`` and ends with # EOF."""
    prometheus, openmetrics = prometheus_text(snapshot()), openmetrics_text(snapshot())
    assert "# TYPE porch_reloads_total counter\n" in prometheus and "# TYPE porch_reloads " not in prometheus
    assert "# TYPE porch_reloads counter\n" in openmetrics and "# TYPE porch_reloads_total" not in openmetrics
    assert 'porch_reloads_total{result="refused"} 1.0\n' in prometheus and "# EOF" not in prometheus
    assert 'porch_reloads_total{result="refused"} 1.0\n' in openmetrics and openmetrics.endswith("\n# EOF\n")
    assert 'mount="/odd \\"quoted\\" \\\\ back\\nslash"' in prometheus


def test_help_texts_need_no_escaping() -> None:
    """Neither format's HELP escaping is written, so no help text may contain what it escapes."""
    for family in FAMILIES:
        assert not any(char in family.help_text for char in '\\"\n'), family.name


@pytest.mark.parametrize(
    "value", [*BOUNDS, math.inf, -math.inf, 0.0, 3, 1e-7, 123456.5, 1234567.0, 1e21, 1767225600.25]
)
def test_numbers_are_written_as_prometheus_client_writes_them(value: float) -> None:
    assert number_text(value) == floatToGoString(value)
