"""The master's side of the metrics: sum the workers' pages, remember the exited, keep history.

``Aggregate.snapshot(...)`` is called by the master every tick with what it sees of each live
worker; it adds the totals of workers that have exited (``retire``) -- so every counter only
grows while the master runs, whatever happens to workers -- and samples the history once a
second: requests a second by status class, latency quantiles (from the histogram's growth, as
Prometheus' ``histogram_quantile`` interpolates within a bucket) and connections.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from porch.metrics.counters import BOUNDS, BUCKETS, CODES, GAUGES, Totals

HISTORY_POINTS = 300  # a sample a second: five minutes
SAMPLE_SECONDS = 1.0
RECENT_SECONDS = 60.0  # the per-mount quantiles are of the last minute
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


@dataclass
class Busy:
    """A request a worker is serving, as the status page shows it: no query, no headers."""

    thread: str
    method: str
    path: str
    client: str
    age_seconds: float
    request_id: str


@dataclass
class WorkerView:
    """What the master knows of one live worker this tick."""

    pid: int
    generation: int
    state: str  # booting, serving, retiring
    started: float  # unix time
    totals: Totals
    rss_bytes: int = 0
    threads: int = 0
    children: int = 0
    idle: int = 0
    busy: list[Busy] = field(default_factory=list)

    @property
    def open_connections(self) -> float:
        """Accepted and not yet closed: the worker's connections now."""
        return self.totals.get(("connections_accepted",), 0.0) - self.totals.get(("connections_closed",), 0.0)


def quantile(q: float, counts: Sequence[float]) -> float | None:
    """The q-quantile of a histogram of per-bucket counts, interpolated linearly in its bucket."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0.0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            if index >= len(BOUNDS):
                return BOUNDS[-1]  # beyond the last bound: the most a histogram can say
            lower = BOUNDS[index - 1] if index else 0.0
            return round(lower + (BOUNDS[index] - lower) * (rank - below) / count, 6)
        below += count
    return BOUNDS[-1]


def add_into(target: Totals, totals: Totals) -> None:
    for key, value in totals.items():
        if key[0] not in GAUGES:
            target[key] = target.get(key, 0.0) + value


def buckets_of(totals: Totals, mount: str | None = None) -> list[float]:
    """Per-bucket request counts, of one mount or of all."""
    counts = [0.0] * BUCKETS
    for key, value in totals.items():
        if key[0] == "bucket" and (mount is None or key[1] == mount):
            counts[int(key[2])] += value
    return counts


class Aggregate:
    """Counts that outlive workers, worker and reload events, and the history."""

    def __init__(self) -> None:
        self.started = time.time()
        self.retired: Totals = {}
        self.events: dict[str, float] = {"started": 0, "respawned": 0}
        self.exits: dict[str, float] = {}
        self.reloads = {"succeeded": 0, "refused": 0}
        self.history: dict[str, deque[Any]] = {
            name: deque(maxlen=HISTORY_POINTS)
            for name in ("time", "requests_per_second", "p50", "p95", "p99", "connections", "in_flight", *CODES)
        }
        self.last_sample: tuple[float, Totals] | None = None
        self.recent: deque[tuple[float, Totals]] = deque()  # samples of the last minute, for quantiles

    def worker_started(self, respawn: bool) -> None:
        self.events["started"] += 1
        if respawn:
            self.events["respawned"] += 1

    def worker_exited(self, reason: str, totals: Totals) -> None:
        """A worker is gone: keep what it counted, and why it went."""
        add_into(self.retired, totals)
        self.exits[reason] = self.exits.get(reason, 0) + 1

    def reloaded(self, succeeded: bool) -> None:
        self.reloads["succeeded" if succeeded else "refused"] += 1

    def totals(self, workers: Iterable[WorkerView]) -> Totals:
        """Every counter now: the exited workers' and the live ones'."""
        found = dict(self.retired)
        for worker in workers:
            add_into(found, worker.totals)
        return found

    def snapshot(
        self,
        workers: Sequence[WorkerView],
        *,
        about: dict[str, Any],
        mount_types: dict[str, str],
        now: float | None = None,
    ) -> dict[str, Any]:
        """The document the board publishes (its shape: ``porch.metrics``)."""
        now = time.time() if now is None else now
        totals = self.totals(workers)
        accepted = totals.get(("connections_accepted",), 0.0)
        live_open = sum(w.open_connections for w in workers)
        idle = sum(w.idle for w in workers)
        in_flight = sum(len(w.busy) for w in workers)  # forking children report their requests too
        connections = {"accepted": accepted, "open": live_open, "idle": idle, "active": max(0.0, live_open - idle)}
        self.sample(now, totals, live_open, in_flight)
        mounts = sorted(
            {key[1] for key in totals if len(key) > 1 and key[0] in ("requests", "bucket")} | set(mount_types)
        )
        return {
            **about,
            "started": self.started,
            "time": now,
            "uptime_seconds": round(now - self.started, 3),
            "requests": [
                {"mount": k[1], "method": k[2], "code": k[3], "count": v}
                for k, v in sorted(totals.items())
                if k[0] == "requests"
            ],
            "bounds": list(BOUNDS),
            "durations": [self.duration(totals, mount) for mount in mounts],
            "bytes": [
                {"mount": mount, "received": totals.get(("received", mount), 0), "sent": totals.get(("sent", mount), 0)}
                for mount in mounts
            ],
            "connections": connections,
            "in_flight": in_flight,
            "cgi": {
                "running": sum(w.totals.get(("cgi_running",), 0.0) for w in workers),
                "started": totals.get(("cgi_started",), 0),
                "timed_out": totals.get(("cgi_timed_out",), 0),
                "killed": totals.get(("cgi_killed",), 0),
            },
            "wsgi_exceptions": [
                {"mount": k[1], "count": v} for k, v in sorted(totals.items()) if k[0] == "wsgi_exceptions"
            ],
            "xmlrpc_faults": [
                {"mount": k[1], "code": k[2], "count": v} for k, v in sorted(totals.items()) if k[0] == "xmlrpc_faults"
            ],
            "worker_events": {**self.events, "exited": dict(self.exits)},
            "reloads": dict(self.reloads),
            "limits": {
                "rate_limited": totals.get(("rate_limited",), 0),
                "connections_refused": totals.get(("connections_refused",), 0),
            },
            "workers": [self.worker(w) for w in workers],
            "mounts": [self.mount(totals, mount, mount_types.get(mount, "")) for mount in mounts if mount],
            "history": {
                "interval_seconds": SAMPLE_SECONDS,
                **{name: list(points) for name, points in self.history.items() if name not in CODES},
                "codes": {code: list(self.history[code]) for code in CODES},
            },
        }

    @staticmethod
    def duration(totals: Totals, mount: str) -> dict[str, Any]:
        counts = buckets_of(totals, mount)
        cumulative, running = [], 0.0
        for count in counts:
            running += count
            cumulative.append(running)
        return {
            "mount": mount,
            "cumulative": cumulative,
            "sum": totals.get(("duration_sum", mount), 0.0),
            "count": running,
        }

    @staticmethod
    def worker(worker: WorkerView) -> dict[str, Any]:
        open_ = worker.open_connections
        return {
            "pid": worker.pid,
            "generation": worker.generation,
            "state": worker.state,
            "started": worker.started,
            "requests": sum(v for k, v in worker.totals.items() if k[0] == "requests"),
            "rss_bytes": worker.rss_bytes,
            "threads": worker.threads,
            "children": worker.children,
            "connections": {"open": open_, "idle": worker.idle, "active": max(0.0, open_ - worker.idle)},
            "busy": [vars(busy) for busy in worker.busy],
        }

    def mount(self, totals: Totals, mount: str, kind: str) -> dict[str, Any]:
        requests = errors = 0.0
        for key, value in totals.items():
            if key[0] == "requests" and key[1] == mount:
                requests += value
                errors += value if key[3] == "5xx" else 0
        recent = buckets_of(totals, mount)
        if self.recent:
            before = buckets_of(self.recent[0][1], mount)
            recent = [now - then for now, then in zip(recent, before, strict=True)]
        return {
            "mount": mount,
            "type": kind,
            "requests": requests,
            "errors": errors,
            "sent": totals.get(("sent", mount), 0),
            **{name: quantile(q, recent) for name, q in QUANTILES},
        }

    def sample(self, now: float, totals: Totals, connections: float, in_flight: int) -> None:
        """Once a second: what changed since the last sample, into the history."""
        if self.last_sample is not None and now - self.last_sample[0] < SAMPLE_SECONDS:
            return
        kept: Totals = {k: v for k, v in totals.items() if k[0] in ("requests", "bucket")}
        if self.last_sample is not None:
            then, before = self.last_sample
            elapsed = max(now - then, 1e-3)
            by_code = dict.fromkeys(CODES, 0.0)
            for key, value in kept.items():
                if key[0] == "requests":
                    by_code[key[3]] += value - before.get(key, 0.0)
            grown = [a - b for a, b in zip(buckets_of(kept), buckets_of(before), strict=True)]
            history = self.history
            history["time"].append(round(now, 3))
            history["requests_per_second"].append(round(sum(by_code.values()) / elapsed, 3))
            for code, count in by_code.items():
                history[code].append(round(count / elapsed, 3))
            for name, q in QUANTILES:
                history[name].append(quantile(q, grown))
            history["connections"].append(connections)
            history["in_flight"].append(in_flight)
        self.last_sample = (now, kept)
        self.recent.append((now, kept))
        while self.recent and now - self.recent[0][0] > RECENT_SECONDS:
            self.recent.popleft()
