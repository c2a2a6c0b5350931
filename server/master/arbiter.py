"""The pre-fork master: bind once, fork workers, keep them alive, act on signals.

    master: bind listeners → fork N workers → loop { reap, heartbeats, respawn, signals }
    worker: build handlers → serve on the inherited sockets → drain on TERM → exit

The master never serves a request.  Its signal handlers only queue the signal; the loop acts:

- HUP: re-read the config.  If it is invalid, every problem is logged and the old workers keep
  serving.  Otherwise listeners that are new are bound, a new generation of workers is started
  with the new config, and once all of them are serving the old generation is retired
  gracefully.  A new generation that cannot boot (say, a WSGI import error) is abandoned and the
  old one keeps serving.
- TERM/INT: stop gracefully (workers finish in-flight requests for up to ``timeouts.graceful``).
- QUIT: stop now.  USR1: reopen log files, here and in every worker.  TTIN/TTOU: one worker more
  or less.

Workers heartbeat through a shared page of memory: the time their acceptor loop last ran and
the oldest request in flight.  A worker silent for ``worker_timeout`` seconds is killed and
replaced, and the request it was stuck on is logged.  A worker that dies is replaced, with a
growing delay when workers keep dying; a worker that cannot even boot at start-up stops the
master (exit 1) instead of looping.
"""

from __future__ import annotations

import logging
import mmap
import os
import queue
import random
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from porch import SOFTWARE
from porch.config.settings import Config, ConfigError
from porch.master.daemon import (
    DaemonError,
    Pidfile,
    Startup,
    check_privileges,
    chown_logs,
    daemonize,
    drop_privileges,
    root_warning,
)
from porch.master.notify import notify, notify_ready, notify_reloading, watchdog_interval
from porch.net.listener import BoundListener, bind_all, rebind
from porch.spine.logs import Logs
from porch.workers.runtime import build_server

log = logging.getLogger(__name__)

WORKER_BOOT_ERROR = 3  # a worker's exit status when it cannot build its handlers
MASTER_SIGNALS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)
TICK_SECONDS = 0.5
BOOT_TIMEOUT_SECONDS = 60.0
CRASH_WINDOW_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0
HEARTBEAT = struct.Struct("dd")  # acceptor's last loop time, start of the oldest request in flight
HEARTBEAT_TEXT_BYTES = 16384  # the oldest request line, or why the worker could not boot


class Heartbeat:
    """One page shared by a worker (writer) and the master (reader), created before the fork."""

    def __init__(self) -> None:
        self.page = mmap.mmap(-1, HEARTBEAT.size + HEARTBEAT_TEXT_BYTES)

    def beat(self, loop_time: float, oldest_start: float, oldest_request: str) -> None:
        text = oldest_request.encode("utf-8", "backslashreplace")[: HEARTBEAT_TEXT_BYTES - 1]
        self.page[HEARTBEAT.size : HEARTBEAT.size + len(text) + 1] = text + b"\0"
        self.page[: HEARTBEAT.size] = HEARTBEAT.pack(loop_time, oldest_start)

    def read(self) -> tuple[float, float, str]:
        loop_time, oldest_start = HEARTBEAT.unpack(self.page[: HEARTBEAT.size])
        text = self.page[HEARTBEAT.size :].split(b"\0", 1)[0].decode("utf-8", "replace")
        return loop_time, oldest_start, text

    def close(self) -> None:
        self.page.close()


@dataclass
class Worker:
    pid: int
    generation: int
    heartbeat: Heartbeat
    started: float = field(default_factory=time.monotonic)
    retiring: bool = False

    @property
    def ready(self) -> bool:
        """Whether the worker has built its handlers and its acceptor runs."""
        return self.heartbeat.read()[0] > 0


def set_title(title: str) -> None:
    """Show the role in ps/top when setproctitle is installed; nothing otherwise."""
    try:
        import setproctitle  # type: ignore[import-not-found]
    except ImportError:
        return
    setproctitle.setproctitle(title)


class Arbiter:
    """The master process."""

    def __init__(
        self,
        config: Config,
        reload_config: Callable[[], Config] | None = None,
        *,
        daemon: bool = False,
        pidfile: Path | None = None,
    ) -> None:
        self.config = config
        self.reload_config = reload_config
        self.daemon = daemon
        self.pidfile = Pidfile(pidfile) if pidfile else None
        self.startup = Startup(None)  # reports to the terminal that ran `porch --daemon`
        self.listeners: list[BoundListener] = []
        self.workers: dict[int, Worker] = {}
        self.generation = 0
        self.target = config.workers
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.crashes: list[float] = []
        self.respawn_at = 0.0
        self.stopping = False
        self.boot_failures: list[int] = []  # generations whose workers could not boot
        self.boot_errors: list[str] = []
        self.logs: Logs | None = None

    # -- start and stop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Bind, start the workers and supervise them until stopped; the exit status."""
        self.logs = Logs(self.config.log)
        for warning in (*self.config.warnings, root_warning(self.config)):
            if warning:
                log.warning("%s", warning)
        try:
            if self.pidfile is not None:  # before binding: a second porch must not touch the sockets
                self.pidfile.acquire()
            self.listeners = bind_all(self.config.listen)
        except (OSError, DaemonError) as error:
            log.error("%s", error)
            print(f"porch: {getattr(error, 'strerror', None) or error}", file=sys.stderr)  # noqa: T201 (the terminal)
            if self.pidfile is not None:
                self.pidfile.release()
            return 1
        for listener in self.listeners:
            log.info("listening on %s", listener.name)
        chown_logs(self.config)
        if self.daemon:
            self.startup = daemonize()
            if self.pidfile is not None:
                self.pidfile.update()
        for signum in MASTER_SIGNALS:
            signal.signal(signum, lambda signum, frame: self.signals.put(signum))
        set_title(f"porch: master {self.describe()}")
        log.info(
            "%s master starting (pid %d, %d %s worker%s)",
            SOFTWARE,
            os.getpid(),
            self.target,
            self.config.concurrency,
            "" if self.target == 1 else "s",
        )
        try:
            status = self.supervise()
        finally:
            self.shutdown_listeners(self.listeners)
            if self.pidfile is not None:
                self.pidfile.release()
            log.info("master stopped")
            self.logs.close()
        return status

    def describe(self) -> str:
        return (
            str(self.config.source)
            if self.config.source
            else ", ".join(listener.address for listener in self.config.listen)
        )

    def shutdown_listeners(self, listeners: list[BoundListener]) -> None:
        for listener in listeners:
            listener.close()

    def supervise(self) -> int:
        """The master loop; returns when every worker is gone after a stop."""
        self.spawn_missing()
        announced = False
        watchdog = watchdog_interval()
        last_ping = 0.0
        while True:
            self.reap()
            if self.stopping:
                if not self.workers:
                    return 0
            else:
                if self.boot_failed():
                    return 1
                self.check_heartbeats()
                self.spawn_missing()
                if not announced and all(worker.ready for worker in self.current_workers()):
                    notify_ready([listener.name for listener in self.listeners])
                    self.startup.ready()
                    announced = True
            if watchdog and time.monotonic() - last_ping >= watchdog:
                notify("WATCHDOG=1")
                last_ping = time.monotonic()
            try:
                signum = self.signals.get(timeout=TICK_SECONDS)
            except queue.Empty:
                continue
            self.handle_signal(signum)

    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # the loop reaps
        if signum == signal.SIGHUP:
            self.reload()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self.stop(graceful=True)
        elif signum == signal.SIGQUIT:
            self.stop(graceful=False)
        elif signum == signal.SIGUSR1:
            assert self.logs is not None
            self.logs.reopen()
            chown_logs(self.config)
            self.signal_workers(signal.SIGUSR1, lambda worker: True)
        elif signum == signal.SIGTTIN:
            self.target += 1
            log.info("SIGTTIN: %d workers", self.target)
        elif signum == signal.SIGTTOU and self.target > 1:
            self.target -= 1
            log.info("SIGTTOU: %d workers", self.target)
            current = sorted(self.current_workers(), key=lambda worker: worker.started)
            if len(current) > self.target:
                self.retire([current[-1]])

    def stop(self, graceful: bool) -> None:
        """Stop every worker: TERM lets them drain within ``timeouts.graceful``, QUIT does not."""
        if self.stopping:
            return
        self.stopping = True
        notify("STOPPING=1")
        log.info("stopping %s", "gracefully" if graceful else "now")
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        self.signal_workers(sig, lambda worker: True)
        deadline = time.monotonic() + (self.config.timeouts.graceful + 1.0 if graceful else 2.0)
        while self.workers and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        if self.workers:
            log.warning("killing %d workers still running after the stop timeout", len(self.workers))
            self.signal_workers(signal.SIGKILL, lambda worker: True)

    # -- workers ----------------------------------------------------------------------------------

    def current_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.generation == self.generation and not w.retiring]

    def spawn_missing(self) -> None:
        """Start workers until the current generation has ``target`` of them (after any backoff)."""
        if time.monotonic() < self.respawn_at:
            return
        while len(self.current_workers()) < self.target:
            self.spawn(self.config, self.listeners, self.generation)

    def spawn(self, config: Config, listeners: list[BoundListener], generation: int) -> Worker:
        heartbeat = Heartbeat()
        # Signals stay blocked across the fork, so none reaches the child while it still has
        # the master's handlers; the child unblocks them once it has its own.
        signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                os._exit(self.worker_main(config, listeners, heartbeat))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
        worker = Worker(pid, generation, heartbeat)
        self.workers[pid] = worker
        log.info("worker %d started (generation %d)", pid, generation)
        return worker

    def worker_main(self, config: Config, listeners: list[BoundListener], heartbeat: Heartbeat) -> int:
        """The body of a worker process; returns its exit status."""
        for signum in MASTER_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # The master handles these; USR1 is ignored until the worker's own logs are open.
        for signum in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
        master = os.getppid()
        set_title(f"porch: worker {self.describe()}")
        self.startup.forget()
        if self.pidfile is not None:
            self.pidfile.forget()
        try:
            drop_privileges(config.user, config.group)  # before any application code runs
            mine = {listener.sock for listener in listeners}
            for other in self.listeners:
                if other.sock not in mine:
                    other.sock.close()
            if self.logs is not None:
                self.logs.close()
            max_requests = config.max_requests
            if max_requests and config.max_requests_jitter:
                max_requests += random.randint(0, config.max_requests_jitter)
            runtime = build_server(config, listeners)
        except ConfigError as error:
            for problem in error.problems:
                log.error("%s", problem)
            heartbeat.beat(0.0, 0.0, str(error))  # for the master to show on its terminal
            return WORKER_BOOT_ERROR
        except BaseException as error:
            log.exception("worker failed to boot")
            heartbeat.beat(0.0, 0.0, f"worker failed to boot: {error!r}")
            return WORKER_BOOT_ERROR

        def beat(loop_time: float, oldest_start: float, oldest_request: str) -> None:
            heartbeat.beat(loop_time, oldest_start, oldest_request)
            if os.getppid() != master:  # the master is gone: do not linger as an orphan
                os.kill(os.getpid(), signal.SIGTERM)

        try:
            return runtime.run(heartbeat=beat, max_requests=max_requests)
        except BaseException:
            log.exception("worker failed")
            return 1

    def reap(self) -> None:
        """Collect exited workers and decide what their exit means."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            why = worker.heartbeat.read()[2]
            worker.heartbeat.close()
            if worker.retiring or self.stopping:
                log.info("worker %d exited", pid)
            elif code == 0:
                log.info("worker %d exited after its max_requests; replacing it", pid)
            elif code == WORKER_BOOT_ERROR:
                log.error("worker %d could not boot (generation %d)", pid, worker.generation)
                self.boot_failures.append(worker.generation)
                self.boot_errors.append(why)
            else:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
                log.error("worker %d died (%s); replacing it", pid, how)
                self.note_crash()

    def boot_failed(self) -> bool:
        """At start-up, a worker that cannot boot will never boot: stop instead of looping."""
        if self.generation in self.boot_failures:
            log.error("workers cannot boot with this configuration; stopping")
            self.startup.failed(self.boot_errors[0])
            for line in self.boot_errors[0].splitlines():
                print(f"porch: {line}", file=sys.stderr)  # noqa: T201 (the terminal)
            self.stop(graceful=False)
            return True
        return False

    def note_crash(self) -> None:
        """Back off when workers keep dying, so a crash loop does not spin the machine."""
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_SECONDS] + [now]
        if len(self.crashes) > 3:
            delay = min(MAX_BACKOFF_SECONDS, 2.0 ** (len(self.crashes) - 3))
            self.respawn_at = now + delay
            log.warning(
                "%d worker deaths in %ss: waiting %.0fs before the next start",
                len(self.crashes),
                CRASH_WINDOW_SECONDS,
                delay,
            )

    def check_heartbeats(self) -> None:
        """Kill and replace workers whose acceptor loop has not run for ``worker_timeout``."""
        now = time.monotonic()
        for worker in list(self.workers.values()):
            loop_time, oldest_start, oldest = worker.heartbeat.read()
            last = loop_time or worker.started
            limit = self.config.worker_timeout if loop_time else BOOT_TIMEOUT_SECONDS
            if now - last <= limit:
                continue
            stuck = f"; it was serving {oldest!r} for {now - oldest_start:.1f}s" if oldest else ""
            log.error("worker %d timed out (no heartbeat for %.1fs)%s", worker.pid, now - last, stuck)
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            worker.heartbeat.beat(now, 0.0, "")  # do not report it twice while it dies

    def signal_workers(self, signum: int, which: Callable[[Worker], bool]) -> None:
        for worker in list(self.workers.values()):
            if which(worker):
                try:
                    os.kill(worker.pid, signum)
                except ProcessLookupError:
                    pass

    def retire(self, workers: list[Worker]) -> None:
        """Let workers finish what they serve and exit (they drain on TERM)."""
        for worker in workers:
            worker.retiring = True
            try:
                os.kill(worker.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # -- reload -----------------------------------------------------------------------------------

    def reload(self) -> None:
        """HUP: start a new generation with the new config, then retire the old one."""
        if self.reload_config is None:
            log.warning("SIGHUP: no config file to reload (serving a directory)")
            return
        log.info("SIGHUP: reloading the configuration")
        notify_reloading()
        try:
            config = self.reload_config()
        except ConfigError as error:
            for problem in error.problems:
                log.error("%s", problem)
            log.error("reload failed: keeping the running configuration")
            notify("READY=1")
            return
        refusal = check_privileges(config)
        if refusal is not None:
            log.error("reload failed: %s; keeping the running configuration", refusal)
            notify("READY=1")
            return
        try:
            listeners = rebind(self.listeners, config.listen)
        except OSError as error:
            log.error("reload failed: %s; keeping the running configuration", error)
            notify("READY=1")
            return
        for listener in listeners:
            if listener.sock not in {old.sock for old in self.listeners}:
                log.info("listening on %s", listener.name)
        old_workers = [w for w in self.workers.values() if not w.retiring]
        generation = self.generation + 1
        new_workers = [self.spawn(config, listeners, generation) for _ in range(config.workers)]
        if not self.wait_ready(new_workers, generation):
            log.error("reload failed: the new workers did not start; keeping the running configuration")
            for worker in new_workers:
                worker.retiring = True
            self.signal_workers(signal.SIGKILL, lambda worker: worker in new_workers)
            kept = {old.sock for old in self.listeners}
            for listener in listeners:
                if listener.sock not in kept:
                    listener.close()
            notify("READY=1")
            return
        self.config, self.listeners, self.generation, self.target = config, listeners, generation, config.workers
        self.retire(old_workers)
        if self.logs is not None:
            self.logs.close()
        self.logs = Logs(config.log)
        chown_logs(config)
        log.info("reloaded: generation %d serving, %d old workers retiring", generation, len(old_workers))
        notify_ready([listener.name for listener in listeners])

    def wait_ready(self, workers: list[Worker], generation: int) -> bool:
        """Wait until every new worker serves; False if one cannot boot or boots too slowly."""
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self.reap()
            if generation in self.boot_failures or any(w.pid not in self.workers for w in workers):
                return False
            if all(worker.ready for worker in workers):
                return True
            time.sleep(0.02)
        return False
