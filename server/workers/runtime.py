"""The composition root of a worker: ``build_server(config, listeners)`` wires one, ``run()`` serves.

Order matters: logs first (so everything after can report), then the signal handlers (the pool
threads serve as soon as they exist, so a TERM from then on must drain, not kill), then handlers
(a handler that cannot be built is a config error, reported before the worker serves anything),
then the pipeline and the concurrency model (``SERVER_CLASSES``, by the config's name) on the
listeners the master bound.  ``run()`` has the arbiter's shape: the acceptor runs in a thread and
the main thread only waits for signals, which the handlers merely queue (TERM: close softly for
``drain_delay``, then drain and exit; INT: drain and exit; QUIT: exit now; USR1: reopen logs), and
heartbeats to the master meanwhile.

The heartbeat (a ``Pulse``) says whether the acceptor loop runs and whether the serving threads
(or forked children) do: which requests are in flight, how many threads (children) there may
be, and since when that set has not changed -- a worker whose every thread is stuck in a request
still has a running acceptor.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from types import FrameType

from porch import SOFTWARE
from porch.config.settings import Config
from porch.handlers.base import no_snapshot
from porch.handlers.build import build_handlers, handler_context
from porch.metrics.board import Board
from porch.metrics.counters import NO_METRICS, Recorder
from porch.net.listener import BoundListener
from porch.spine.clients import ClientTable
from porch.spine.dispatch import Router
from porch.spine.gates import gates_for
from porch.spine.logs import Logs
from porch.spine.pipeline import InFlight, Pipeline
from porch.workers.forking import ForkingServer
from porch.workers.pool import ThreadPoolServer
from porch.workers.selector import SelectorServer
from porch.workers.tuning import SWITCH_INTERVAL_SECONDS

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)
HEARTBEAT_SECONDS = 0.5
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# The concurrency models, by the name ``concurrency`` gives in the config.
SERVER_CLASSES: dict[str, type[SelectorServer]] = {"threading": ThreadPoolServer, "forking": ForkingServer}


@dataclass(frozen=True)
class Pulse:
    """One heartbeat: what the master needs to tell a stuck worker from a busy one."""

    time: float  # when this pulse was taken
    loop_time: float  # when the acceptor loop last ran
    changed: float  # when a request last entered or left ``in_flight``
    capacity: int  # requests served at once: threads, or children (forking)
    in_flight: list[InFlight]  # oldest first
    idle: int = 0  # kept-alive connections waiting for their next request
    children: int = 0  # forking: children serving a connection each
    rss_bytes: int = 0  # resident memory of this process


Heartbeat = Callable[[Pulse], None]


@dataclass
class Runtime:
    """Everything one serving process owns."""

    config: Config
    logs: Logs
    router: Router
    pipeline: Pipeline
    server: SelectorServer
    listeners: list[BoundListener]
    capacity: int
    signals: queue.SimpleQueue[int]  # what the signal handlers queued, since before the pool started

    def pulse(self) -> Pulse:
        """The heartbeat now: the acceptor's last loop and what the serving threads are doing."""
        return Pulse(
            time.monotonic(),
            self.server.last_loop,
            self.server.requests_changed(),
            self.capacity,
            self.server.requests_in_flight(),
            self.server.idle_connections(),
            self.server.children_serving(),
            resident_bytes(),
        )

    def run(self, heartbeat: Heartbeat | None = None, max_requests: int = 0) -> int:
        """Serve until a stop signal (or ``max_requests``); returns the exit status.

        ``heartbeat(pulse)`` is called every ``HEARTBEAT_SECONDS`` so the master can tell a stuck
        worker from a busy one.  ``max_requests`` is counted where requests complete: the drain
        starts with the completion of the last one, not at the next heartbeat (under forking,
        as soon as the acceptor reads the child's report of it).

        TERM first closes softly for ``drain_delay`` seconds -- ``ready`` answers 503 and every
        response says Connection: close, while the listeners still accept -- so a balancer takes
        the instance out of rotation before it refuses anyone; then it drains.  INT (and a
        retirement: a reload, ``max_requests``) drains at once.  QUIT stops now.
        """
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        signals = self.signals

        def retire() -> None:
            log.info("served %d requests (max_requests): retiring", self.pipeline.served)
            self.server.begin_drain()
            signals.put(signal.SIGINT)

        if max_requests:
            self.pipeline.retire_after(max_requests, retire)
        acceptor = threading.Thread(target=self.server.serve_forever, name="porch-acceptor", daemon=True)
        acceptor.start()
        if heartbeat is not None:
            while not self.server.last_loop and acceptor.is_alive():
                time.sleep(0.005)
            heartbeat(self.pulse())
        log.info("%s serving (pid %d, %s)", SOFTWARE, os.getpid(), self.config.concurrency)
        drain_at: float | None = None  # TERM came: when the soft close ends and the drain starts
        try:
            while True:
                wait = HEARTBEAT_SECONDS if drain_at is None else min(HEARTBEAT_SECONDS, drain_at - time.monotonic())
                try:
                    signum = signals.get(timeout=max(wait, 0.0))
                except queue.Empty:
                    if not acceptor.is_alive():
                        log.error("the acceptor stopped unexpectedly")
                        return 1
                    if heartbeat is not None:
                        heartbeat(self.pulse())
                    if drain_at is not None and time.monotonic() >= drain_at:
                        return self.drain(acceptor, heartbeat)
                    continue
                if signum == signal.SIGUSR1:
                    self.logs.reopen()
                elif signum == signal.SIGQUIT:
                    log.info("SIGQUIT: stopping now")
                    self.server.shutdown()
                    return 0
                elif signum == signal.SIGTERM and self.config.drain_seconds > 0:
                    if drain_at is None:  # a second TERM (the master's, after systemd's) changes nothing
                        log.info(
                            "SIGTERM: ready answers 503; the listeners close in %gs (drain_delay)",
                            self.config.drain_seconds,
                        )
                        self.server.begin_closing()
                        drain_at = time.monotonic() + self.config.drain_seconds
                else:
                    log.info(
                        "%s: stopping gracefully (up to %ss)",
                        signal.Signals(signum).name,
                        self.config.timeouts.graceful,
                    )
                    return self.drain(acceptor, heartbeat)
        finally:
            self.close()

    def drain(self, acceptor: threading.Thread, heartbeat: Heartbeat | None) -> int:
        """Close the listeners and let what is in flight finish within ``timeouts.graceful``."""
        self.server.begin_drain()
        deadline = time.monotonic() + self.config.timeouts.graceful
        while acceptor.is_alive() and (left := deadline - time.monotonic()) > 0:
            acceptor.join(min(left, HEARTBEAT_SECONDS))
            if heartbeat is not None:  # a draining worker is still watched
                heartbeat(self.pulse())
        if acceptor.is_alive():
            log.warning("graceful timeout: in-flight requests were cut off")
            self.server.shutdown()
        return 0

    def close(self) -> None:
        self.server.server_close()
        self.router.close()
        log.info("stopped")
        self.logs.close()


def resident_bytes() -> int:
    """This process's resident memory, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


def build_server(
    config: Config,
    listeners: list[BoundListener],
    metrics: Recorder = NO_METRICS,
    board: Board | None = None,
    clients: ClientTable | None = None,
) -> Runtime:
    """Wire logs, handlers and the concurrency model for one worker on bound ``listeners``.

    ``metrics`` is where this worker counts; ``board`` is where the master publishes what all
    workers counted (and whether it is ready), for the status, metrics and probe handlers.
    ``clients`` is the instance's table of client addresses (rate limits, connections per client),
    which the master made before the fork; without one, the limits hold within this process.
    """
    logs = Logs(config.log)
    signals = queue_signals()  # before any thread serves: a TERM from now on drains, never kills

    closing = threading.Event()  # the server's first step in stopping (a handler may ask before it exists)

    def readiness() -> str | None:
        if closing.is_set():
            return "draining"
        state = board.state() if board is not None else "ready"
        return None if state == "ready" else state

    context = replace(
        handler_context(config),
        snapshot=board.read if board is not None else no_snapshot,
        readiness=readiness,
        metrics=metrics,
    )
    clients = ClientTable() if clients is None else clients
    router = Router(build_handlers(config, context), partial(gates_for, clients=clients, metrics=metrics))
    pipeline = Pipeline(config, router, logs, metrics)
    server = SERVER_CLASSES[config.concurrency](listeners, pipeline, config, clients=clients, closing=closing)
    capacity = config.max_children if isinstance(server, ForkingServer) else config.threads
    return Runtime(config, logs, router, pipeline, server, listeners, capacity, signals)


def queue_signals() -> queue.SimpleQueue[int]:
    """Handle the worker's signals from now on by queueing them for ``Runtime.run``."""
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()

    def enqueue(signum: int, frame: FrameType | None) -> None:
        signals.put(signum)

    for handled in HANDLED_SIGNALS:
        signal.signal(handled, enqueue)
    return signals
