"""The pure parts of the metrics: a worker's page, the master's sums and history, the board."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from porch.config.load import config_from_mapping
from porch.metrics.aggregate import Aggregate, WorkerView, quantile
from porch.metrics.board import READ_WAIT_SECONDS, SEQUENCE, Board
from porch.metrics.counters import BOUNDS, BUCKETS, FAULT_SLOTS, OTHER_FAULT, UNMATCHED, Counters, Layout


def page(*mounts: str) -> Counters:
    return Counters(Layout(mounts))


def test_a_request_lands_in_its_cells() -> None:
    counters = page("/", "/app")
    counters.request("/app", "POST", 201, 0.003, 10, 20)
    counters.request("/app", "BREW", 503, 20.0, 0, 5)  # unknown method, beyond the last bound
    counters.request("/nowhere", "GET", 404, 0.0001, 0, 7)  # a path no mount has: unmatched
    totals = counters.read()
    assert totals[("requests", "/app", "POST", "2xx")] == 1
    assert totals[("requests", "/app", "other", "5xx")] == 1
    assert totals[("requests", UNMATCHED, "GET", "4xx")] == 1
    assert totals[("bucket", "/app", str(BOUNDS.index(0.005)))] == 1
    assert totals[("bucket", "/app", str(BUCKETS - 1))] == 1
    assert totals[("received", "/app")] == 10
    assert totals[("sent", "/app")] == 25
    assert totals[("duration_sum", "/app")] == pytest.approx(20.003)
    assert ("requests", "/", "GET", "2xx") not in totals, "zeros are left out"


def test_each_duration_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    """Prometheus ``le``: a duration equal to a bound counts in that bound's bucket, one a hair
    above it in the next -- for the bounds the fast comparisons decide and those bisected alike."""
    durations = [0.0, *BOUNDS, *(bound * 1.000001 for bound in BOUNDS), 1e-9, 3600.0]
    counters = page("/")
    for seconds in durations:
        counters.request("/", "GET", 200, seconds, 0, 0)
    totals = counters.read()
    expected: dict[int, int] = {}
    for seconds in durations:
        bucket = next((index for index, bound in enumerate(BOUNDS) if seconds <= bound), len(BOUNDS))
        expected[bucket] = expected.get(bucket, 0) + 1
    found = {int(key[2]): value for key, value in totals.items() if key[0] == "bucket"}
    assert found == expected
    counters.close()


def test_threads_count_in_slices_of_their_own_and_nothing_is_lost() -> None:
    """Six threads, three slices of their own: three count without a lock, the others share the
    first slice under it; the master's sum has every request and every connection."""
    counters = Counters(Layout(["/"]), writers=3)
    each = 5000

    def count() -> None:
        for _ in range(each):
            counters.request("/", "GET", 200, 0.002, 1, 10)
            counters.add("connections_accepted")

    threads = [threading.Thread(target=count) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = counters.read()
    assert counters.claimed == counters.slices == 4
    assert totals[("requests", "/", "GET", "2xx")] == 6 * each
    assert totals[("connections_accepted",)] == 6 * each
    assert totals[("sent", "/")] == 60 * each and totals[("received", "/")] == 6 * each
    assert totals[("bucket", "/", str(BOUNDS.index(0.0025)))] == 6 * each
    counters.close()


def test_status_codes_outside_the_classes_are_clamped() -> None:
    counters = page("/")
    counters.request("/", "GET", 99, 0.0, 0, 0)
    counters.request("/", "GET", 999, 0.0, 0, 0)
    assert counters.read()[("requests", "/", "GET", "1xx")] == 1
    assert counters.read()[("requests", "/", "GET", "5xx")] == 1


def test_mounts_sharing_a_path_share_a_label() -> None:
    layout = Layout(["/", "/app", "/app"])
    assert layout.mounts == ["/", "/app", UNMATCHED]


def test_fault_codes_fill_a_table_then_the_rest_is_other() -> None:
    counters = page("/RPC2")
    for code in range(FAULT_SLOTS + 5):
        counters.xmlrpc_fault("/RPC2", -code)
    counters.xmlrpc_fault("/RPC2", 0)  # a code already in the table
    totals = counters.read()
    assert totals[("xmlrpc_faults", "/RPC2", "0")] == 2
    assert totals[("xmlrpc_faults", "/RPC2", "-1")] == 1
    assert totals[("xmlrpc_faults", "/RPC2", OTHER_FAULT)] == 6  # slot FAULT_SLOTS-1 onwards
    assert sum(v for k, v in totals.items() if k[0] == "xmlrpc_faults") == FAULT_SLOTS + 6


def test_children_of_a_forked_worker_count_on_the_same_page() -> None:
    counters = page("/")
    counters.share_between_processes()
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            for _ in range(250):
                counters.request("/", "GET", 200, 0.001, 0, 1)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert counters.read()[("requests", "/", "GET", "2xx")] == 1000, "no increment lost between processes"


def test_quantiles_interpolate_within_a_bucket() -> None:
    counts = [0.0] * BUCKETS
    counts[BOUNDS.index(0.01)] = 10  # all ten between 5 ms and 10 ms
    assert quantile(0.5, counts) == pytest.approx(0.0075)
    assert quantile(0.99, counts) == pytest.approx(0.00995)
    assert quantile(0.5, [0.0] * BUCKETS) is None
    beyond = [0.0] * BUCKETS
    beyond[-1] = 3
    assert quantile(0.5, beyond) == BOUNDS[-1], "above the last bound: the last bound"


def view(pid: int, counters: Counters) -> WorkerView:
    return WorkerView(pid, 0, "serving", 0.0, counters.read())


def test_an_exited_workers_counts_are_kept_but_not_its_gauges() -> None:
    aggregate = Aggregate()
    first, second = page("/"), page("/")
    for counters in (first, second):
        counters.request("/", "GET", 200, 0.001, 0, 1)
        counters.add("cgi_running")
        counters.add("connections_accepted", 3)
    aggregate.worker_exited("crashed", first.read())
    snapshot = aggregate.snapshot([view(2, second)], about={}, mount_types={"/": "static"}, now=1000.0)
    assert snapshot["requests"] == [{"mount": "/", "method": "GET", "code": "2xx", "count": 2}]
    assert snapshot["cgi"]["running"] == 1, "a gauge of a dead worker is gone with it"
    assert snapshot["connections"]["accepted"] == 6
    assert snapshot["connections"]["open"] == 3, "open connections are the live workers'"
    assert snapshot["worker_events"]["exited"] == {"crashed": 1}
    assert snapshot["mounts"][0]["type"] == "static"


def test_history_samples_once_a_second_from_what_grew() -> None:
    aggregate = Aggregate()
    counters = page("/")
    aggregate.snapshot([view(1, counters)], about={}, mount_types={}, now=100.0)
    for _ in range(20):
        counters.request("/", "GET", 200, 0.002, 0, 0)
    for _ in range(5):
        counters.request("/", "GET", 500, 0.2, 0, 0)
    aggregate.snapshot([view(1, counters)], about={}, mount_types={}, now=100.5)  # too soon: no point
    history = aggregate.snapshot([view(1, counters)], about={}, mount_types={}, now=102.0)["history"]
    assert history["time"] == [102.0]
    assert history["requests_per_second"] == [12.5]
    assert history["codes"]["2xx"] == [10.0] and history["codes"]["5xx"] == [2.5]
    assert 0.001 < history["p50"][0] <= 0.0025
    assert 0.1 < history["p99"][0] <= 0.25


def test_the_board_round_trips_and_refuses_what_does_not_fit() -> None:
    board = Board(size=4096)
    assert board.read() == {}
    assert board.state() == "starting"
    assert board.publish({"a": [1, 2, 3]})
    assert board.read() == {"a": [1, 2, 3]}
    assert not board.publish({"big": "x" * 5000})
    assert board.read() == {"a": [1, 2, 3]}, "a refused snapshot leaves the last one"
    board.set_state("reloading")
    assert board.state() == "reloading"
    assert board.read() == {"a": [1, 2, 3]}
    pid = os.fork()
    if pid == 0:  # a reader forked before the write sees it: the memory is shared
        deadline = time.monotonic() + 5
        while board.read() != {"b": 1} and time.monotonic() < deadline:
            time.sleep(0.01)
        os._exit(0 if board.read() == {"b": 1} else 1)
    board.publish({"b": 1})
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_a_reader_waits_out_a_write_in_progress_then_answers_its_last_copy() -> None:
    board = Board(size=4096)
    board.publish({"a": 1})
    assert board.read() == {"a": 1}
    SEQUENCE.pack_into(board.memory, 0, board.sequence + 1)  # the master stopped in mid-write
    started = time.monotonic()
    assert board.read() == {"a": 1}, "the last copy, not an empty snapshot"
    assert time.monotonic() - started >= READ_WAIT_SECONDS
    finish = threading.Timer(0.01, board.publish, [{"b": 2}])  # the write completes while it waits
    finish.start()
    try:
        assert board.read() == {"b": 2}
    finally:
        finish.join()


def test_observability_mounts_admit_loopback_only_unless_they_say_otherwise() -> None:
    config = config_from_mapping(
        {
            "access": {"allow": ["0.0.0.0/0"]},
            "mounts": [
                {"path": "/", "type": "redirect", "to": "https://example.org/"},
                {"path": "/status", "type": "status"},
                {"path": "/metrics", "type": "metrics"},
                {"path": "/healthz", "type": "health"},
                {"path": "/readyz", "type": "ready", "access": {"allow": ["10.0.0.0/8"]}},
            ],
        },
        source="<test>",
        base_dir=Path("."),
    )
    allowed = {mount.path: {str(net) for net in mount.access.allow} for mount in config.mounts}
    assert allowed["/"] == {"0.0.0.0/0"}
    for path in ("/status", "/metrics", "/healthz"):
        assert allowed[path] == {"127.0.0.0/8", "::1/128"}, path
    assert allowed["/readyz"] == {"10.0.0.0/8"}, "the mount's own rule wins"
