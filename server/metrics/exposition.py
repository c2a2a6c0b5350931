"""The metrics snapshot (``porch.metrics``) as Prometheus text 0.0.4 or OpenMetrics 1.0.0.

One table, ``FAMILIES``, says for every metric family its name, type, help and how its samples
come out of a snapshot; both formats render that table and differ only where the formats do: a
counter family is declared ``porch_x_total`` in Prometheus text and ``porch_x`` in OpenMetrics
(its samples are ``porch_x_total`` in both), and OpenMetrics ends with ``# EOF``.

A family whose part of the snapshot is missing (an empty snapshot where no master publishes
one) keeps its HELP and TYPE lines and has no samples, so the list of families never changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
OPENMETRICS_MEDIA_TYPE = "application/openmetrics-text"

Snapshot = Mapping[str, Any]
Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]  # name suffix ("", "_total", "_bucket"...), labels, value
# What a counter or gauge takes from a snapshot: its label sets and values.
Source = Callable[[Snapshot], Iterable[tuple[Labels, float]]]
Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Family:
    """One metric family: ``name`` as OpenMetrics declares it (a counter's without ``_total``)."""

    name: str
    kind: Kind
    help_text: str
    samples: Callable[[Snapshot], Iterable[Sample]]


# --- reading a snapshot ----------------------------------------------------------------------


def is_number(value: object) -> TypeGuard[float]:
    """A count or a measure; not a bool, though Python counts bools as ints."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def value_at(snapshot: Snapshot, path: tuple[str, ...]) -> Any:
    """The value at nested keys ``path``, or None where any of them is missing."""
    node: Any = snapshot
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def rows_at(snapshot: Snapshot, key: str) -> Iterator[Mapping[str, Any]]:
    """The entries of a list of objects (``requests``, ``durations``...); none when missing."""
    rows = snapshot.get(key)
    if isinstance(rows, list):
        yield from (row for row in rows if isinstance(row, Mapping))


def single(*path: str) -> Source:
    """One unlabelled sample: the number at ``path``."""

    def samples(snapshot: Snapshot) -> Iterator[tuple[Labels, float]]:
        value = value_at(snapshot, path)
        if is_number(value):
            yield (), value

    return samples


def per_row(key: str, labels: tuple[str, ...], field: str) -> Source:
    """A sample per entry of the list ``key``: its ``labels`` fields as labels, ``field`` as value."""

    def samples(snapshot: Snapshot) -> Iterator[tuple[Labels, float]]:
        for row in rows_at(snapshot, key):
            value = row.get(field)
            if is_number(value) and all(label in row for label in labels):
                yield tuple((label, str(row[label])) for label in labels), value

    return samples


def per_key(label: str, *path: str, keys: tuple[str, ...] = ()) -> Source:
    """A sample per key of the object at ``path`` (only ``keys`` when given), the key as ``label``."""

    def samples(snapshot: Snapshot) -> Iterator[tuple[Labels, float]]:
        mapping = value_at(snapshot, path)
        if not isinstance(mapping, Mapping):
            return
        for name in keys or sorted(mapping):
            value = mapping.get(name)
            if is_number(value):
                yield ((label, str(name)),), value

    return samples


def build_info(snapshot: Snapshot) -> Iterator[tuple[Labels, float]]:
    labels = ("version", "python", "build", "concurrency")
    if all(isinstance(snapshot.get(label), str) for label in labels):
        yield tuple((label, snapshot[label]) for label in labels), 1


def ready(snapshot: Snapshot) -> Iterator[tuple[Labels, float]]:
    state = snapshot.get("state")
    if isinstance(state, str):
        yield (), 1 if state == "ready" else 0


def workers_now(snapshot: Snapshot) -> Iterator[tuple[Labels, float]]:
    workers = snapshot.get("workers")
    if isinstance(workers, list):
        yield (), len(workers)


def request_durations(snapshot: Snapshot) -> Iterator[Sample]:
    """Per mount: a cumulative ``_bucket`` per bound and ``+Inf``, then ``_sum`` and ``_count``."""
    bounds = snapshot.get("bounds")
    if not isinstance(bounds, list):
        return
    upper_bounds = [number_text(bound) for bound in [*bounds, math.inf]]
    for row in rows_at(snapshot, "durations"):
        mount_path, cumulative, total, count = (row.get(key) for key in ("mount", "cumulative", "sum", "count"))
        if not (isinstance(mount_path, str) and isinstance(cumulative, list) and is_number(total) and is_number(count)):
            continue
        mount: Labels = (("mount", mount_path),)
        # strict: buckets that do not match the bounds are a broken snapshot, never to be guessed at
        for upper_bound, below in zip(upper_bounds, cumulative, strict=True):
            yield "_bucket", (*mount, ("le", upper_bound)), below
        yield "_sum", mount, total
        yield "_count", mount, count


# --- the families ------------------------------------------------------------------------------


def counter(name: str, help_text: str, source: Source) -> Family:
    return Family(name, "counter", help_text, lambda snapshot: (("_total", *sample) for sample in source(snapshot)))


def gauge(name: str, help_text: str, source: Source) -> Family:
    return Family(name, "gauge", help_text, lambda snapshot: (("", *sample) for sample in source(snapshot)))


FAMILIES: tuple[Family, ...] = (
    gauge("porch_build_info", "porch version, Python version, build and concurrency model (always 1)", build_info),
    gauge("porch_start_time_seconds", "when the master started, in seconds since the epoch", single("started")),
    gauge("porch_uptime_seconds", "seconds since the master started", single("uptime_seconds")),
    gauge("porch_config_generation", "configuration generation, counting reloads that took", single("generation")),
    gauge("porch_ready", "1 when the server is ready for requests, else 0 (starting, reloading, stopping)", ready),
    gauge("porch_workers", "worker processes now", workers_now),
    gauge("porch_workers_desired", "worker processes the configuration asks for", single("workers_target")),
    counter(
        "porch_http_requests",
        "HTTP requests answered, by mount, method and status class",
        per_row("requests", ("mount", "method", "code"), "count"),
    ),
    Family(
        "porch_http_request_duration_seconds",
        "histogram",
        "time from a complete request head to the end of its response, by mount",
        request_durations,
    ),
    counter(
        "porch_http_request_body_bytes",
        "request body bytes received, by mount",
        per_row("bytes", ("mount",), "received"),
    ),
    counter(
        "porch_http_response_body_bytes", "response body bytes sent, by mount", per_row("bytes", ("mount",), "sent")
    ),
    gauge("porch_http_requests_in_flight", "requests being served now", single("in_flight")),
    counter("porch_connections_accepted", "client connections accepted", single("connections", "accepted")),
    gauge(
        "porch_connections",
        "client connections now: open (all), idle (waiting for a request) and active (in a request)",
        per_key("state", "connections", keys=("open", "idle", "active")),
    ),
    gauge("porch_cgi_scripts_running", "CGI scripts running now", single("cgi", "running")),
    counter("porch_cgi_scripts_started", "CGI scripts started", single("cgi", "started")),
    counter("porch_cgi_scripts_timed_out", "CGI scripts that ran out of time", single("cgi", "timed_out")),
    counter("porch_cgi_scripts_killed", "CGI scripts killed", single("cgi", "killed")),
    counter(
        "porch_wsgi_exceptions",
        "exceptions raised by WSGI applications, by mount",
        per_row("wsgi_exceptions", ("mount",), "count"),
    ),
    counter(
        "porch_xmlrpc_faults",
        "XML-RPC faults answered, by mount and fault code",
        per_row("xmlrpc_faults", ("mount", "code"), "count"),
    ),
    counter("porch_workers_started", "worker processes started", single("worker_events", "started")),
    counter(
        "porch_workers_respawned",
        "worker processes started to replace one that exited unasked",
        single("worker_events", "respawned"),
    ),
    counter(
        "porch_workers_exited", "worker processes that exited, by reason", per_key("reason", "worker_events", "exited")
    ),
    counter(
        "porch_reloads",
        "configuration reloads, by result",
        per_key("result", "reloads", keys=("succeeded", "refused")),
    ),
    counter("porch_rate_limited", "requests refused by a rate_limit (429)", single("limits", "rate_limited")),
    counter(
        "porch_connections_refused",
        "connections closed at once: their client held limits.connections_per_client",
        single("limits", "connections_refused"),
    ),
)


# --- the two formats ---------------------------------------------------------------------------


def number_text(value: float) -> str:
    """A sample value or bucket bound as prometheus_client writes it (Go's float formatting):
    ``0.0025``, ``10.0``, ``1e+06``, ``+Inf``; counts as floats too (``3.0``), as the counters keep them."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def label_value(text: str) -> str:
    """A label value escaped as both formats require: backslash, double quote, newline."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sample_line(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {number_text(value)}"
    pairs = ",".join(f'{label}="{label_value(text)}"' for label, text in labels)
    return f"{name}{{{pairs}}} {number_text(value)}"


def render(snapshot: Snapshot, *, openmetrics: bool) -> str:
    lines: list[str] = []
    for family in FAMILIES:
        declared = family.name + "_total" if family.kind == "counter" and not openmetrics else family.name
        lines.append(f"# HELP {declared} {family.help_text}")
        lines.append(f"# TYPE {declared} {family.kind}")
        lines.extend(
            sample_line(family.name + suffix, labels, value) for suffix, labels, value in family.samples(snapshot)
        )
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"


def prometheus_text(snapshot: Snapshot) -> str:
    """The Prometheus text exposition format 0.0.4 (``PROMETHEUS_CONTENT_TYPE``)."""
    return render(snapshot, openmetrics=False)


def openmetrics_text(snapshot: Snapshot) -> str:
    """OpenMetrics 1.0.0 text (``OPENMETRICS_CONTENT_TYPE``), ending with ``# EOF``."""
    return render(snapshot, openmetrics=True)
