"""A worker's counters: float64 cells in a page of shared memory the master reads.

The master makes the page (``Counters(Layout(...))``) before it forks the worker, so what the
worker counts is visible to the master at once and survives the worker: a worker killed with
SIGKILL loses nothing it had counted.  Every label set has a fixed cell, so recording a request
is a few additions under a lock: mounts are known from the config, methods and status classes
are fixed lists, latency buckets fixed bounds.  XML-RPC fault codes are not known in advance:
they get a small table (``FAULT_SLOTS``) filled as codes appear, the last slot counting the rest.

The page is ``1 + writers`` slices of the same layout, which the master sums.  Each of a
worker's threads (up to ``writers``) claims a slice of its own the first time it counts and then
counts there without a lock: one lock for all threads cost 0.7 µs a request with one thread and
6.5 µs with eight contending.  The first slice is shared, under a ``threading.Lock``: threads
beyond ``writers``, and the XML-RPC fault table (whose slots are claimed by value).  Under
``forking`` the children serving connections count there too, so ``share_between_processes()``
swaps in a process-shared lock and hands out no more slices (a child inherits its parent's
thread-local slice).  A lock not granted within ``LOCK_SECONDS`` (a child killed while holding
it) loses that one count rather than stopping a request.
"""

from __future__ import annotations

import mmap
import threading
from bisect import bisect_left
from collections.abc import Iterable
from typing import Protocol, cast

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other")
CODES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Upper bounds of the latency buckets in seconds, from a cached static file to a slow CGI script.
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BUCKETS = len(BOUNDS) + 1  # and one above the last bound
FIRST_BOUND, SECOND_BOUND, THIRD_BOUND = BOUNDS[:3]
UNMATCHED = ""  # the mount label of requests no mount served (a 404 outside every mount, a 400)
FAULT_SLOTS = 32
OTHER_FAULT = "other"  # the code label of faults counted after the table filled up
LOCK_SECONDS = 1.0
MAX_PLACES = 4096  # remembered (mount, method, status) cell positions
SCALARS = (
    "connections_accepted",
    "connections_closed",
    "cgi_started",
    "cgi_running",
    "cgi_timed_out",
    "cgi_killed",
    "rate_limited",  # requests answered 429 by a mount's rate_limit
    "connections_refused",  # connections closed at once: limits.connections_per_client
)
GAUGES = frozenset({"cgi_running"})  # cells that go down again: not added up over exited workers

METHOD_INDEX = {method: index for index, method in enumerate(METHODS)}
OTHER_METHOD = METHOD_INDEX["other"]

Key = tuple[str, ...]  # a series: its name, then its label values
Totals = dict[Key, float]


class Recorder(Protocol):
    """What the pipeline, the connections and the handlers count."""

    def request(self, mount: str, method: str, status: int, seconds: float, received: int, sent: int) -> None: ...
    def add(self, name: str, amount: float = 1.0) -> None: ...
    def wsgi_exception(self, mount: str) -> None: ...
    def xmlrpc_fault(self, mount: str, code: int) -> None: ...


class NoMetrics:
    """Counts nothing: ``metrics: false``, unit tests, ``porch check``."""

    def request(self, mount: str, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        pass

    def add(self, name: str, amount: float = 1.0) -> None:
        pass

    def wsgi_exception(self, mount: str) -> None:
        pass

    def xmlrpc_fault(self, mount: str, code: int) -> None:
        pass


NO_METRICS: Recorder = NoMetrics()


class Layout:
    """Where each series lives in a page, for one config's mounts (their paths are the labels)."""

    def __init__(self, mounts: Iterable[str]) -> None:
        self.mounts = list(dict.fromkeys([*mounts, UNMATCHED]))  # mounts sharing a path share a label
        self.index = {mount: number for number, mount in enumerate(self.mounts)}
        count = len(self.mounts)
        self.scalars = {name: number for number, name in enumerate(SCALARS)}
        self.requests = len(SCALARS)
        self.buckets = self.requests + count * len(METHODS) * len(CODES)
        self.sums = self.buckets + count * BUCKETS
        self.body_bytes = self.sums + count  # received, sent
        self.exceptions = self.body_bytes + 2 * count
        self.faults = self.exceptions + count  # FAULT_SLOTS of (mount number + 1, code, count)
        self.cells = self.faults + 3 * FAULT_SLOTS

    def mount_number(self, mount: str) -> int:
        return self.index.get(mount, self.index[UNMATCHED])


class ProcessLock(Protocol):
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...
    def release(self) -> None: ...


class Counters:
    """One worker's page: written by its threads (and forked children), read by the master."""

    def __init__(self, layout: Layout, writers: int = 0) -> None:
        """``writers``: how many threads get a slice of their own (the worker's pool, its acceptor)."""
        self.layout = layout
        self.slices = 1 + writers
        self.memory = mmap.mmap(-1, layout.cells * 8 * self.slices)
        self.page = memoryview(self.memory).cast("d")
        self.cells = self.page[: layout.cells]  # the shared slice
        self.lock: threading.Lock | ProcessLock = threading.Lock()
        self.places: dict[tuple[str, str, int], tuple[int, int, int, int]] = {}
        self.claimed = 1  # slices handed out, the shared one included
        self.views = [self.cells]  # every view of the page, released before it is closed
        self.own = threading.local()  # .cells: this thread's slice, or None (it counts in the shared one)

    def share_between_processes(self) -> None:
        """Forking: children count on this page too, so its lock must hold across processes."""
        import multiprocessing  # only the forking model pays for this import

        self.lock = multiprocessing.Lock()
        self.claimed = self.slices

    def claim(self) -> memoryview[float] | None:
        """This thread's slice, claimed now; None once every slice is taken."""
        width = self.layout.cells
        self.lock.acquire()
        try:
            number = self.claimed
            if number < self.slices:
                self.claimed += 1
        finally:
            self.lock.release()
        cells = self.page[number * width : (number + 1) * width] if number < self.slices else None
        if cells is not None:
            self.views.append(cells)
        self.own.cells = cells
        return cells

    def request(self, mount: str, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        """One request: its series, its latency bucket, the duration sum, the body bytes (written
        out here, not in helpers: this runs for every request)."""
        try:
            series, buckets, total, body = self.places[mount, method, status]
        except KeyError:
            series, buckets, total, body = self.place(mount, method, status)
        # The first buckets by comparisons: cheaper than a call, and most requests end there.
        if seconds <= FIRST_BOUND:
            bucket = buckets
        elif seconds <= SECOND_BOUND:
            bucket = buckets + 1
        elif seconds <= THIRD_BOUND:
            bucket = buckets + 2
        else:
            bucket = buckets + bisect_left(BOUNDS, seconds)
        try:
            cells = self.own.cells
        except AttributeError:
            cells = self.claim()
        locked = cells is None
        if locked:
            if not self.lock.acquire(True, LOCK_SECONDS):
                return
            cells = self.cells
        try:
            cells[series] += 1.0
            cells[bucket] += 1.0
            cells[total] += seconds
            if received:
                cells[body] += received
            cells[body + 1] += sent
        finally:
            if locked:
                self.lock.release()

    def place(self, mount: str, method: str, status: int) -> tuple[int, int, int, int]:
        """The cells of a request's series, histogram, duration sum and body bytes, remembered
        for the next request of the same mount, method and status."""
        layout = self.layout
        number = layout.mount_number(mount)
        code = min(max(status // 100, 1), 5) - 1
        series = (number * len(METHODS) + METHOD_INDEX.get(method, OTHER_METHOD)) * len(CODES) + code
        where = (
            layout.requests + series,
            layout.buckets + number * BUCKETS,
            layout.sums + number,
            layout.body_bytes + 2 * number,
        )
        if len(self.places) < MAX_PLACES:  # methods are the client's words: the cache stays bounded
            self.places[(mount, method, status)] = where
        return where

    def add(self, name: str, amount: float = 1.0) -> None:
        self._add(self.layout.scalars[name], amount)

    def wsgi_exception(self, mount: str) -> None:
        self._add(self.layout.exceptions + self.layout.mount_number(mount), 1.0)

    def xmlrpc_fault(self, mount: str, code: int) -> None:
        layout, cells = self.layout, self.cells
        tag = layout.mount_number(mount) + 1  # 0 marks a free slot
        if not self.lock.acquire(True, LOCK_SECONDS):
            return
        try:
            last = layout.faults + 3 * (FAULT_SLOTS - 1)
            for slot in range(layout.faults, last, 3):
                if cells[slot] == 0:
                    cells[slot], cells[slot + 1] = tag, code
                if cells[slot] == tag and cells[slot + 1] == code:
                    cells[slot + 2] += 1
                    return
            if cells[last] == 0:  # the table is full: the last slot counts the rest
                cells[last] = tag
            cells[last + 2] += 1
        finally:
            self.lock.release()

    def _add(self, cell: int, amount: float) -> None:
        try:
            cells = self.own.cells
        except AttributeError:
            cells = self.claim()
        if cells is not None:
            cells[cell] += amount
        elif self.lock.acquire(True, LOCK_SECONDS):
            try:
                self.cells[cell] += amount
            finally:
                self.lock.release()

    def read(self) -> Totals:
        """Every series of this page with its value (zeros left out), its slices summed: for the master.

        The fault table is only ever written in the shared slice, so the sum leaves it as it is.
        """
        layout = self.layout
        width = layout.cells
        values = cast(list[float], self.page.tolist())
        raw = [
            sum(column)
            for column in zip(*(values[n * width : (n + 1) * width] for n in range(self.slices)), strict=True)
        ]
        cells: list[float] = [int(value) if value.is_integer() else value for value in raw]
        found: Totals = {}
        for name, number in layout.scalars.items():
            found[(name,)] = cells[number]
        for m, mount in enumerate(layout.mounts):
            for i, method in enumerate(METHODS):
                for c, code in enumerate(CODES):
                    value = cells[layout.requests + (m * len(METHODS) + i) * len(CODES) + c]
                    if value:
                        found[("requests", mount, method, code)] = value
            for bucket in range(BUCKETS):
                if value := cells[layout.buckets + m * BUCKETS + bucket]:
                    found[("bucket", mount, str(bucket))] = value
            for name, cell in (
                ("duration_sum", layout.sums + m),
                ("received", layout.body_bytes + 2 * m),
                ("sent", layout.body_bytes + 2 * m + 1),
                ("wsgi_exceptions", layout.exceptions + m),
            ):
                if cells[cell]:
                    found[(name, mount)] = cells[cell]
        last = layout.faults + 3 * (FAULT_SLOTS - 1)
        for slot in range(layout.faults, layout.faults + 3 * FAULT_SLOTS, 3):
            tag, fault_code, count = cells[slot : slot + 3]
            if tag and count and 0 < tag <= len(layout.mounts):
                label = OTHER_FAULT if slot == last else str(int(fault_code))
                key = ("xmlrpc_faults", layout.mounts[int(tag) - 1], label)
                found[key] = found.get(key, 0.0) + count
        return found

    def close(self) -> None:
        for view in self.views:
            view.release()
        self.page.release()
        self.memory.close()
