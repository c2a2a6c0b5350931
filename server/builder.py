"""The composition root: ``build_server(config)`` wires every part, ``Runtime.run()`` serves.

Order matters and is the point of this module: logs first (so everything after can report),
then handlers (a handler that cannot be built is a config error before any port is taken), then
listeners, then the concurrency model.  ``run()`` keeps the arbiter's shape even with one
process: the acceptor runs in a thread, the main thread only waits for signals, which the
signal handlers merely queue (TERM/INT: graceful stop, QUIT: immediate stop, USR1: reopen logs).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from dataclasses import dataclass
from types import FrameType

from server import __version__
from server.concurrency import SERVER_CLASSES, SelectorServer
from server.config import Config, build_handlers, handler_context
from server.dispatch import Router
from server.listener import BoundListener, bind_all
from server.logs import Logs
from server.pipeline import Pipeline

log = logging.getLogger(__name__)

SOFTWARE = f"porch/{__version__}"
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGHUP)


@dataclass
class Runtime:
    """Everything one serving process owns."""

    config: Config
    logs: Logs
    router: Router
    server: SelectorServer
    listeners: list[BoundListener]

    def run(self) -> int:
        """Serve until a stop signal; returns the exit status."""
        signals: queue.SimpleQueue[int] = queue.SimpleQueue()

        def enqueue(signum: int, frame: FrameType | None) -> None:
            signals.put(signum)

        for signum in HANDLED_SIGNALS:
            signal.signal(signum, enqueue)
        acceptor = threading.Thread(target=self.server.serve_forever, name="porch-acceptor", daemon=True)
        acceptor.start()
        log.info("%s serving (pid %d, %s)", SOFTWARE, os.getpid(), self.config.concurrency)
        try:
            while True:
                try:
                    signum = signals.get(timeout=1.0)
                except queue.Empty:
                    if not acceptor.is_alive():
                        log.error("the acceptor stopped unexpectedly")
                        return 1
                    continue
                if signum == signal.SIGUSR1:
                    self.logs.reopen()
                elif signum == signal.SIGHUP:
                    log.warning("SIGHUP: reloading needs workers; restart to apply a new config")
                elif signum == signal.SIGQUIT:
                    log.info("SIGQUIT: stopping now")
                    self.server.shutdown()
                    return 0
                else:
                    log.info("%s: stopping gracefully (up to %ss)", signal.Signals(signum).name,
                             self.config.timeouts.graceful)
                    self.server.begin_drain()
                    acceptor.join(self.config.timeouts.graceful)
                    if acceptor.is_alive():
                        log.warning("graceful timeout: in-flight requests were cut off")
                        self.server.shutdown()
                    return 0
        finally:
            self.close()

    def close(self) -> None:
        self.server.server_close()
        self.router.close()
        log.info("stopped")
        self.logs.close()


def build_server(config: Config) -> Runtime:
    """Wire logs, handlers, listeners and the concurrency model for one serving process."""
    logs = Logs(config.log)
    for warning in config.warnings:
        log.warning("%s", warning)
    router = Router(build_handlers(config, handler_context(config)))
    try:
        listeners = bind_all(config.listen)
    except OSError:
        router.close()
        raise
    for listener in listeners:
        log.info("listening on %s", listener.name)
    pipeline = Pipeline(config, router, logs)
    server = SERVER_CLASSES[config.concurrency](listeners, pipeline, config)
    return Runtime(config, logs, router, server, listeners)
