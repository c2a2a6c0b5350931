"""The pre-fork master: bind once, fork workers, keep them alive, act on signals.

    master: bind listeners → fork N workers → loop { reap, heartbeats, reload, respawn, signals }
    worker: build handlers → serve on the inherited sockets → drain on TERM → exit

The master never serves a request, and never waits for a worker: everything slow is a state the
loop looks at every tick (a reload whose workers are booting, a stop, a worker told to stop), so
it acts on a signal and replaces a dead worker within a tick whatever its workers do.  Its
signal handlers only queue the signal; the loop acts, and an error while acting is logged, never
fatal: the master does not die of a worker's, a log's or a signal's trouble.

- HUP: re-read the config.  If it is invalid, every problem is logged and the old workers keep
  serving.  Otherwise listeners that are new are bound, a new generation of workers is started
  with the new config, and once all of them are serving the old generation is retired
  gracefully.  A new generation that cannot boot (say, a WSGI import error) is abandoned and the
  old one keeps serving.  Every attempt gets a generation number of its own; a HUP while one is
  still booting abandons it for the newer config.
- TERM: stop gracefully: ``ready`` answers 503 at once, the workers keep accepting for
  ``drain_delay`` seconds (every response saying Connection: close) so a load balancer takes the
  instance out of rotation, then close their listeners and finish in-flight requests within
  ``timeouts.graceful``, then are killed; a reload still booting is stopped too.  INT (Ctrl-C):
  the same without the delay.  QUIT: stop now (also during a
  graceful stop).  USR1: reopen log files, here and in every worker.  TTIN/TTOU: one worker more
  or less.

Workers heartbeat through a shared page of memory (``Heartbeat``): when their acceptor loop last
ran, how many threads they serve with, the requests in flight and since when that set has not
changed.  A worker whose acceptor is silent for ``worker_timeout`` seconds is killed and
replaced, and the request it was stuck on is logged.  A worker whose every thread (under
forking, every child) has been in a request, none completing, for ``worker_timeout`` is stuck
too: each of its requests is logged, and it is replaced gracefully (TERM), then killed if still
there after ``timeouts.graceful`` (a forking worker's children end with it).
A worker that dies is replaced, with a growing delay when workers keep dying.  A worker that
cannot boot at start-up stops the master (exit 1); after start-up it is retried with a growing
delay, and the master gives up (exit 1) only when no worker has been up for ``respawn_timeout``.
"""

from __future__ import annotations

import importlib
import itertools
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

from porch import BUILD, SOFTWARE, __version__
from porch.config.settings import Config, ConfigError
from porch.master.daemon import (
    DaemonError,
    Pidfile,
    Startup,
    check_privileges,
    chown_logs,
    daemonize,
    drop_privileges,
    read_state,
    root_warning,
    write_state,
)
from porch.master.notify import notify, notify_ready, notify_reloading, watchdog_interval
from porch.master.upgrade import Upgrade, start_new_master
from porch.master.watch import CodeWatcher
from porch.metrics.aggregate import Aggregate, Busy, WorkerView
from porch.metrics.board import Board
from porch.metrics.counters import NO_METRICS, Counters, Layout
from porch.net.listener import BoundListener, bind_all, dropped, rebind
from porch.spine.clients import ClientTable
from porch.spine.logs import Logs
from porch.spine.pipeline import InFlight
from porch.workers.runtime import Pulse, build_server

log = logging.getLogger(__name__)

WORKER_BOOT_ERROR = 3  # a worker's exit status when it cannot build its handlers
MASTER_SIGNALS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)
TICK_SECONDS = 0.5
BOOT_TIMEOUT_SECONDS = 60.0
CRASH_WINDOW_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0
# After timeouts.graceful, before a worker told to stop is killed: one that cut its requests off
# still closes its pool (up to a second, ``porch.workers.pool.THREAD_STOP_SECONDS``) and exits.
KILL_GRACE_SECONDS = 2.0
QUIT_GRACE_SECONDS = 2.0  # how long an immediate stop waits before killing
# The page's head: write sequence (odd while a write is in progress), pulse time, acceptor's last
# loop, when the requests in flight last changed, how many there are, threads (or children) serving them.
# Then resident memory, kept-alive connections waiting, forked children serving.
HEARTBEAT = struct.Struct("QdddIIQII")
SEQUENCE = struct.Struct("Q")
HEARTBEAT_TEXT_BYTES = 32768  # the requests in flight, one per line, or why the worker could not boot
SHOWN_REQUEST_LINE = 200  # characters of each request line the page carries
SHOWN_REQUEST_ID = 64
SHOWN_THREAD = 40
PUBLISH_SECONDS = 0.25  # the board is written at most this often (every tick, and after signals)
READ_ATTEMPTS = 100  # reads that may meet a write in progress before a torn one is accepted


@dataclass(frozen=True)
class Beat:
    """One reading of a worker's heartbeat page."""

    time: float  # when the worker wrote it; 0 before it serves
    loop_time: float
    changed: float
    busy: int
    capacity: int
    text: str
    rss_bytes: int = 0
    idle: int = 0
    children: int = 0

    def requests(self) -> list[InFlight]:
        """The requests in flight the page lists, oldest first."""
        found = []
        for line in self.text.splitlines() if self.time else ():
            fields = line.split("\t", 4)
            if len(fields) < 5:  # a page its writer died while writing
                continue
            start, request_id, thread, client, request_line = fields
            try:
                found.append(InFlight(float(start), request_id, request_line, thread, client))
            except ValueError:
                continue
        return found


class Heartbeat:
    """One page shared by a worker (writer) and the master (reader), created before the fork.

    A sequence number makes the reads consistent (a seqlock): the writer makes it odd, writes,
    makes it even again; the reader keeps a copy only if the number was even and unchanged.
    """

    def __init__(self) -> None:
        self.page = mmap.mmap(-1, HEARTBEAT.size + HEARTBEAT_TEXT_BYTES)
        self.sequence = 0

    def beat(self, pulse: Pulse) -> None:
        lines = []
        room = HEARTBEAT_TEXT_BYTES - 1
        for request in pulse.in_flight:
            line = (
                f"{request.start!r}\t{request.request_id[:SHOWN_REQUEST_ID]}\t{request.thread[:SHOWN_THREAD]}"
                f"\t{request.client}\t{request.request_line[:SHOWN_REQUEST_LINE]}\n"
            )
            room -= len(line.encode("utf-8", "backslashreplace"))
            if room < 0:
                break  # the master says how many were left out
            lines.append(line)
        self.write(
            pulse.time,
            pulse.loop_time,
            pulse.changed,
            len(pulse.in_flight),
            pulse.capacity,
            "".join(lines),
            (pulse.rss_bytes, pulse.idle, pulse.children),
        )

    def failed(self, reason: str) -> None:
        """Why the worker could not boot, for the master to show on its terminal."""
        self.write(0.0, 0.0, 0.0, 0, 0, reason)

    def write(
        self,
        now: float,
        loop_time: float,
        changed: float,
        busy: int,
        capacity: int,
        text: str,
        gauges: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        data = text.encode("utf-8", "backslashreplace")[: HEARTBEAT_TEXT_BYTES - 1] + b"\0"
        self.sequence += 1
        self.page[: HEARTBEAT.size] = HEARTBEAT.pack(self.sequence, now, loop_time, changed, busy, capacity, *gauges)
        self.page[HEARTBEAT.size : HEARTBEAT.size + len(data)] = data
        self.sequence += 1
        self.page[: SEQUENCE.size] = SEQUENCE.pack(self.sequence)

    def read(self) -> Beat:
        for _ in range(READ_ATTEMPTS):
            copy = self.page[:]
            sequence = SEQUENCE.unpack_from(copy)[0]
            if sequence % 2 == 0 and SEQUENCE.unpack_from(self.page)[0] == sequence:
                break
        _, now, loop_time, changed, busy, capacity, rss, idle, children = HEARTBEAT.unpack_from(copy)
        text = copy[HEARTBEAT.size :].split(b"\0", 1)[0].decode("utf-8", "replace")
        return Beat(now, loop_time, changed, busy, capacity, text, rss, idle, children)

    def close(self) -> None:
        self.page.close()


@dataclass
class Worker:
    pid: int
    generation: int
    heartbeat: Heartbeat
    counters: Counters  # what it counts, read by the master (``porch.metrics.counters``)
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)  # the same, as unix time for people
    retiring: bool = False
    kill_at: float | None = None  # a retiring worker still there then is killed
    killed: bool = False  # SIGKILL sent: only its exit is left to see
    booted: bool = False  # the master has seen it serve

    @property
    def ready(self) -> bool:
        """Whether the worker has built its handlers and its acceptor runs."""
        return self.heartbeat.read().loop_time > 0

    def view(self, now: float) -> WorkerView:
        """The worker as the status page and the metrics show it."""
        beat = self.heartbeat.read()
        busy = []
        for request in beat.requests():
            path = request.target.partition("?")[0]  # another user's query string is not for the page
            age = round(max(0.0, now - request.start), 3)
            busy.append(Busy(request.thread, request.method, path, request.client, age, request.request_id))
        state = "retiring" if self.retiring else "serving" if self.booted else "booting"
        return WorkerView(
            self.pid,
            self.generation,
            state,
            self.started_at,
            self.counters.read(),
            rss_bytes=beat.rss_bytes,
            threads=beat.capacity,
            children=beat.children,
            idle=beat.idle,
            busy=busy,
        )


@dataclass
class Reload:
    """A generation started by HUP: adopted once all its workers serve, abandoned if one fails."""

    config: Config
    listeners: list[BoundListener]
    generation: int
    workers: list[Worker] = field(default_factory=list)
    why: str = ""  # why a worker of it could not boot


def set_title(title: str) -> None:
    """Show the role in ps/top when setproctitle (the ``proctitle`` extra) is installed; nothing otherwise."""
    try:
        module = importlib.import_module("setproctitle")
    except ImportError:
        return
    module.setproctitle(title)


class Arbiter:
    """The master process."""

    def __init__(
        self,
        config: Config,
        reload_config: Callable[[], Config] | None = None,
        *,
        daemon: bool = False,
        pidfile: Path | None = None,
        name: str | None = None,
        watch: bool = False,
        upgrade: tuple[int, Startup] | None = None,
    ) -> None:
        self.config = config
        # --reload: restart the workers when their code changes (development)
        self.watcher = CodeWatcher(config) if watch and reload_config is not None else None
        self.name = name  # the config file as the command line gave it, for the first line
        self.reload_config = reload_config
        self.daemon = daemon
        self.pidfile = Pidfile(pidfile) if pidfile else None
        # reports to the terminal that ran `porch --daemon`, or to the master this one upgrades
        self.startup = Startup(None) if upgrade is None else upgrade[1]
        self.upgrading_from = None if upgrade is None else upgrade[0]  # that master's pid
        self.upgrade: Upgrade | None = None  # USR2: the new master starting on our sockets
        self.handed_over = False  # the new master serves: this one retires without a word to systemd
        self.launch_directory = os.getcwd()  # before a daemon moves to "/": where an upgrade starts
        self.listeners: list[BoundListener] = []
        self.workers: dict[int, Worker] = {}
        self.generation = 0
        self.generations = itertools.count(1)  # every reload attempt gets a number of its own
        self.pending: Reload | None = None
        self.reloads = 0  # reloads whose outcome is recorded in the state file
        self.target = config.workers
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.crashes: list[float] = []
        self.respawn_at = 0.0
        self.started_up = False  # every worker of the first generation has served
        self.boot_errors: list[str] = []  # why workers could not boot at start-up
        self.boot_retries = 0  # boot failures since a worker last booted, after start-up
        self.down_since: float | None = None  # no worker up, and one could not boot, since then
        self.stopping = False
        self.stopping_gracefully = False
        self.stop_deadline: float | None = None
        self.exit_status = 0
        self.logs: Logs | None = None
        self.board = Board()  # before any fork: every worker of every generation reads it
        self.clients = ClientTable()  # before any fork too: limits per client hold across workers and reloads
        self.aggregate = Aggregate()
        self.published = 0.0
        self.publish_failed = False  # said once in the error log, until a publication works again

    # -- start and stop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Bind, start the workers and supervise them until stopped; the exit status."""
        self.logs = Logs(self.config.log)
        for warning in (*self.config.warnings, root_warning(self.config)):
            if warning:
                log.warning("%s", warning)
        try:
            # Before binding: a second porch must not touch the sockets.  An upgrade's new master
            # takes the pidfile over once it serves; the old master holds it until then.
            if self.pidfile is not None and self.upgrading_from is None:
                self.pidfile.acquire()
            self.listeners = bind_all(self.config.listen, any_port=self.upgrading_from is not None)
        except (OSError, DaemonError) as error:
            log.error("%s", error)
            why = str(getattr(error, "strerror", None) or error)
            self.tell(why)
            self.startup.failed(why)  # an upgrade's old master logs it and keeps serving
            if self.pidfile is not None:
                self.pidfile.release()
            return 1
        for listener in self.listeners:
            log.info("listening on %s", listener.name)
        chown_logs(self.config)
        if self.daemon and self.upgrading_from is None:  # an upgrade's new master is detached already
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
        """The master loop; returns the exit status when every worker is gone after a stop."""
        watchdog = watchdog_interval()
        last_ping = 0.0
        while True:
            try:
                self.step()
            except Exception:
                log.exception("unexpected error in the master loop; carrying on")
            self.publish()
            if self.stopping and not self.workers:
                return self.exit_status
            if watchdog and time.monotonic() - last_ping >= watchdog:
                notify("WATCHDOG=1")
                last_ping = time.monotonic()
            try:
                signum = self.signals.get(timeout=TICK_SECONDS)
            except queue.Empty:
                continue
            try:
                self.handle_signal(signum)
            except Exception:
                log.exception("error while handling %s; carrying on", signal.Signals(signum).name)

    def step(self) -> None:
        """One look at every worker: collect the dead, enforce deadlines, move a reload on, respawn."""
        if not self.stopping:
            self.note_booted()  # before reaping: a worker that served, then died, did boot
        self.reap()
        now = time.monotonic()
        if self.stopping:
            if self.workers and self.stop_deadline is not None and now >= self.stop_deadline:
                log.warning("killing %d workers still running after the stop timeout", len(self.workers))
                self.signal_workers(signal.SIGKILL, lambda worker: True)
                self.stop_deadline = None
            return
        if not self.started_up and self.boot_errors:
            self.give_up_at_startup()
            return
        if self.down_since is not None and now - self.down_since > self.config.respawn_timeout:
            log.error("no worker could boot for %.0fs (respawn_timeout); stopping", now - self.down_since)
            self.exit_status = 1
            self.stop(graceful=True)
            return
        self.check_heartbeats(now)
        self.advance_upgrade()
        self.advance_reload()
        self.spawn_missing()
        if self.watcher is not None and self.pending is None and (changed := self.watcher.changed()):
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            log.info("changed: %s%s; reloading", ", ".join(str(path) for path in changed[:3]), more)
            self.reload()

    def publish(self) -> None:
        """Sum what the workers counted and write it to the board for the status handlers; a
        failure is logged once and never stops the master."""
        if time.monotonic() - self.published < PUBLISH_SECONDS:
            return
        self.published = now = time.monotonic()
        try:
            if self.stopping:
                self.board.set_state("stopping")
            elif self.pending is not None:
                self.board.set_state("reloading")
            elif self.started_up:
                self.board.set_state("ready")
            workers = [worker.view(now) for worker in sorted(self.workers.values(), key=lambda w: w.started)]
            snapshot = self.aggregate.snapshot(
                workers,
                about={
                    "software": SOFTWARE,
                    "version": __version__,
                    "python": f"{sys.version.split()[0]} ({sys.implementation.name})",
                    "build": BUILD,
                    "concurrency": self.config.concurrency,
                    "master_pid": os.getpid(),
                    "generation": self.generation,
                    "state": self.board.state(),
                    "workers_target": self.target,
                },
                mount_types={mount.path: mount.type for mount in self.config.mounts},
            )
            if not self.board.publish(snapshot):
                raise ValueError("the snapshot is larger than the board")
        except Exception:
            if not self.publish_failed:
                log.exception("cannot publish the metrics; carrying on")
            self.publish_failed = True
        else:
            self.publish_failed = False

    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # the loop reaps
        if signum == signal.SIGHUP:
            if not self.stopping:
                self.reload()
        elif signum == signal.SIGTERM:
            self.stop(graceful=True, delay=self.config.drain_seconds)
        elif signum == signal.SIGINT:
            self.stop(graceful=True)
        elif signum == signal.SIGQUIT:
            self.stop(graceful=False)
        elif signum == signal.SIGUSR2:
            self.begin_upgrade()
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
                self.retire([current[-1]], self.config.timeouts.graceful)

    def stop(self, graceful: bool, delay: float = 0.0) -> None:
        """Tell every worker to stop: INT lets them drain within ``timeouts.graceful``; TERM (a
        ``delay``) first has them close softly for ``drain_delay`` seconds, ``ready`` answering
        503, so a balancer stops sending before the listeners close; QUIT stops them now.  The
        loop kills what is left at the deadline and returns once all are gone."""
        if self.stopping and not (self.stopping_gracefully and not graceful):
            return  # QUIT still hurries a graceful stop along
        if not self.stopping and not self.handed_over:  # after a handover, systemd follows the new master
            notify("STOPPING=1")
            if self.pending is not None:  # its workers stop with the others
                self.forget_reload()
        self.stopping, self.stopping_gracefully = True, graceful
        self.board.set_state("stopping")  # ``ready`` says 503 before any worker closes a listener
        # Our copies of the listening sockets go now: once the workers have closed theirs, the
        # kernel refuses new connections, where a copy kept here would queue them unanswered
        # until the master exits, then reset them (a balancer could not retry those cleanly).
        self.shutdown_listeners(self.listeners)
        self.listeners = []
        if not graceful:
            log.info("stopping now")
            self.signal_workers(signal.SIGQUIT, lambda worker: True)
            self.stop_deadline = time.monotonic() + QUIT_GRACE_SECONDS
            return
        log.info("stopping gracefully%s", f" after a drain_delay of {delay:g}s" if delay else "")
        self.signal_workers(signal.SIGTERM if delay else signal.SIGINT, lambda worker: True)
        self.stop_deadline = time.monotonic() + delay + self.config.timeouts.graceful + KILL_GRACE_SECONDS

    # -- workers ----------------------------------------------------------------------------------

    def current_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.generation == self.generation and not w.retiring]

    def spawn_missing(self) -> None:
        """Start workers until the current generation has ``target`` of them (after any backoff)."""
        if time.monotonic() < self.respawn_at:
            return
        try:
            while len(self.current_workers()) < self.target:
                self.spawn(self.config, self.listeners, self.generation, respawn=self.started_up)
        except OSError as error:  # fork or mmap: out of processes or memory, for now
            log.error("cannot start a worker: %s", error.strerror or error)
            self.note_crash()

    def spawn(self, config: Config, listeners: list[BoundListener], generation: int, respawn: bool = False) -> Worker:
        heartbeat = Heartbeat()
        # a slice of the page for each thread that counts: the pool's, the acceptor, the main thread
        writers = config.threads + 2 if config.concurrency == "threading" else 0
        counters = Counters(Layout(mount.path for mount in config.mounts), writers)
        # Signals stay blocked across the fork, so none reaches the child while it still has
        # the master's handlers; the child unblocks them once it has its own.
        signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                os._exit(self.worker_main(config, listeners, heartbeat, counters))
        except OSError:
            heartbeat.close()
            counters.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
        worker = Worker(pid, generation, heartbeat, counters)
        self.workers[pid] = worker
        self.aggregate.worker_started(respawn)
        log.info("worker %d started (generation %d)", pid, generation)
        return worker

    def worker_main(
        self, config: Config, listeners: list[BoundListener], heartbeat: Heartbeat, counters: Counters
    ) -> int:
        """The body of a worker process; returns its exit status."""
        for signum in MASTER_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # The master handles these; USR1 is ignored until the worker's own logs are open.
        for signum in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
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
            # Every socket of the master that is not ours, a booting reload's included: a copy
            # left open here would keep its address bound after the master closed it.
            for other in (*self.listeners, *(self.pending.listeners if self.pending else ())):
                if other.sock not in mine:
                    other.sock.close()
            if self.logs is not None:
                self.logs.close()
            max_requests = config.max_requests
            if max_requests and config.max_requests_jitter:
                max_requests += random.randint(0, config.max_requests_jitter)
            if config.concurrency == "forking":
                counters.share_between_processes()
            runtime = build_server(
                config, listeners, counters if config.metrics else NO_METRICS, self.board, self.clients
            )
        except ConfigError as error:
            for problem in error.problems:
                log.error("%s", problem)
            heartbeat.failed(str(error))
            return WORKER_BOOT_ERROR
        except BaseException as error:
            log.exception("worker failed to boot")
            heartbeat.failed(f"worker failed to boot: {error!r}")
            return WORKER_BOOT_ERROR

        def beat(pulse: Pulse) -> None:
            heartbeat.beat(pulse)
            if os.getppid() != master:  # the master is gone: do not linger as an orphan
                os.kill(os.getpid(), signal.SIGINT)

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
            self.clients.forget(pid)  # its connections are gone, even if SIGKILL left them counted
            code = os.waitstatus_to_exitcode(status)
            why = worker.heartbeat.read().text
            worker.heartbeat.close()
            if worker.killed:
                reason = "killed"
                log.info("worker %d exited (killed)", pid)
            elif worker.retiring or self.stopping:
                reason = "retired"
                log.info("worker %d exited", pid)
            elif code == 0:
                reason = "max_requests"
                log.info("worker %d exited after its max_requests; replacing it", pid)
            elif code == WORKER_BOOT_ERROR:
                reason = "boot_failed"
                self.boot_failed(worker, why)
            else:
                reason = "crashed"
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
                log.error("worker %d died (%s); replacing it", pid, how)
                self.note_crash()
            self.aggregate.worker_exited(reason, worker.counters.read())
            worker.counters.close()

    def note_booted(self) -> None:
        """Mark workers seen serving: one of the current generation ends any boot backoff, and
        the first generation all serving ends the start-up (the service manager is told)."""
        for worker in self.workers.values():
            if not worker.booted and worker.ready:
                worker.booted = True
                if worker.generation == self.generation:
                    self.boot_retries = 0
                    self.down_since = None
        current = self.current_workers()
        if not self.started_up and len(current) >= self.target and all(worker.booted for worker in current):
            if self.upgrading_from is not None and self.pidfile is not None:
                try:
                    self.pidfile.take_over()
                except DaemonError as error:
                    log.error("%s; `porch stop` and friends will not find this master", error)
            notify_ready([listener.name for listener in self.listeners])
            line = self.serving_line()
            if not self.daemon:
                print(line, file=sys.stderr)  # noqa: T201 (the terminal)
            self.startup.ready(line)
            self.started_up = True

    def serving_line(self) -> str:
        """Where to go: ``porch: serving http://127.0.0.1:8000/ (config/porch.yaml, 2 workers × 8 threads)``."""
        urls = []
        for listener in self.listeners:
            if listener.name.startswith("unix:"):
                urls.append(listener.name)
            else:
                urls.append(f"{listener.scheme}://{listener.name}/")
        config = self.config
        each = f"{config.threads} threads" if config.concurrency == "threading" else f"{config.max_children} children"
        workers = f"{self.target} worker{'' if self.target == 1 else 's'} × {each}"
        return f"porch: serving {' '.join(urls)} ({self.name or self.describe()}, {workers})"

    def tell(self, message: str) -> None:
        """A start-up failure on the terminal, unless the error log already put it there (stderr)."""
        if self.config.log.error != "-":
            for line in message.splitlines():
                print(f"porch: {line}", file=sys.stderr)  # noqa: T201 (the terminal)

    def boot_failed(self, worker: Worker, why: str) -> None:
        """A worker could not boot: at start-up the master will stop, later it retries."""
        if worker.generation != self.generation or not self.started_up:
            # A reload's worker (``advance_reload`` abandons the reload), or one at start-up.
            log.error("worker %d could not boot (generation %d)", worker.pid, worker.generation)
            if self.pending is not None and worker.generation == self.pending.generation:
                self.pending.why = self.pending.why or why
            if worker.generation == self.generation:
                self.boot_errors.append(why)
            return
        now = time.monotonic()
        self.boot_retries += 1
        delay = min(MAX_BACKOFF_SECONDS, 2.0 ** (self.boot_retries - 1))
        self.respawn_at = max(self.respawn_at, now + delay)
        if self.down_since is None and not any(w.booted for w in self.current_workers()):
            self.down_since = now
        log.error("worker %d could not boot (generation %d); retrying in %.0fs", worker.pid, worker.generation, delay)

    def give_up_at_startup(self) -> None:
        """At start-up, a worker that cannot boot will never boot: stop instead of looping."""
        log.error("workers cannot boot with this configuration; stopping")
        self.startup.failed(self.boot_errors[0])
        self.tell(self.boot_errors[0])
        self.exit_status = 1
        self.stop(graceful=False)

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

    def check_heartbeats(self, now: float) -> None:
        """Kill workers whose acceptor loop is silent, replace stuck ones, kill retiring laggards.

        A worker is silent when its acceptor has not run for ``worker_timeout`` (or it has not
        served within ``BOOT_TIMEOUT_SECONDS`` of its start).  It is stuck when its every thread
        (under forking, every child) has been in a request for ``worker_timeout`` with none
        completing -- its acceptor keeps running, so only the requests show it.  A single slow
        request among idle threads is not.
        """
        for worker in list(self.workers.values()):
            if worker.killed:
                continue
            if worker.retiring:
                if worker.kill_at is not None and now >= worker.kill_at:
                    log.error("worker %d still running after its graceful timeout; killing it", worker.pid)
                    self.kill(worker)
                continue
            beat = worker.heartbeat.read()
            if not beat.loop_time:
                if now - worker.started > BOOT_TIMEOUT_SECONDS:
                    log.error("worker %d timed out (no heartbeat for %.1fs)", worker.pid, now - worker.started)
                    self.kill(worker)
            elif now - beat.loop_time > self.config.worker_timeout:
                requests = beat.requests()
                stuck = (
                    f"; it was serving {requests[0].request_line!r} for {now - requests[0].start:.1f}s"
                    if requests
                    else ""
                )
                log.error("worker %d timed out (no heartbeat for %.1fs)%s", worker.pid, now - beat.loop_time, stuck)
                self.kill(worker)
            elif beat.capacity and beat.busy >= beat.capacity and beat.time - beat.changed > self.config.worker_timeout:
                self.replace_stuck(worker, beat, now)

    def replace_stuck(self, worker: Worker, beat: Beat, now: float) -> None:
        """Log every request a stuck worker holds, then replace it (TERM, later KILL)."""
        log.error(
            "worker %d is stuck: all %d %s in a request, none completed for %.1fs; replacing it",
            worker.pid,
            beat.capacity,
            "children" if beat.children else "threads",
            beat.time - beat.changed,
        )
        requests = beat.requests()
        for request in requests:
            log.error(
                "worker %d stuck on %s %s for %.1fs (request %s)",
                worker.pid,
                request.method,
                request.target,
                now - request.start,
                request.request_id,
            )
        if beat.busy > len(requests):
            log.error("worker %d: %d more requests in flight", worker.pid, beat.busy - len(requests))
        self.retire([worker], self.config.timeouts.graceful)

    def kill(self, worker: Worker) -> None:
        worker.killed = True
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def signal_workers(self, signum: int, which: Callable[[Worker], bool]) -> None:
        for worker in list(self.workers.values()):
            if which(worker):
                try:
                    os.kill(worker.pid, signum)
                except ProcessLookupError:
                    pass

    def retire(self, workers: list[Worker], graceful: float) -> None:
        """Let workers finish what they serve within ``graceful`` seconds and exit (they drain at
        once on INT: the instance keeps serving, so no balancer needs warning); the loop kills
        those still there after that."""
        kill_at = time.monotonic() + graceful + KILL_GRACE_SECONDS
        for worker in workers:
            worker.retiring = True
            worker.kill_at = kill_at
            try:
                os.kill(worker.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    # -- upgrade (USR2) ---------------------------------------------------------------------------

    def begin_upgrade(self) -> None:
        """USR2: start the installed porch as a new master on our listening sockets; the loop
        follows it (``advance_upgrade``) and retires this master once it serves."""
        if self.stopping:
            return
        if self.upgrade is not None:
            log.warning("SIGUSR2: the upgrade to pid %d is still starting", self.upgrade.pid)
            return
        if self.pending is not None:
            log.warning("SIGUSR2 refused: a reload is still starting; send it again once the reload is done")
            return
        if os.getpid() == 1:
            log.error(
                "SIGUSR2 refused: this master is PID 1 (a container), whose exit would end the container; "
                "upgrade by replacing the container"
            )
            return
        log.info("SIGUSR2: starting a new master on the listening sockets")
        try:
            self.upgrade = start_new_master(self.listeners, self.launch_directory)
        except OSError as error:
            log.error("upgrade failed: cannot start a new master: %s; this master keeps serving", error.strerror)
            self.record_upgrade(None, error.strerror or str(error))
            return
        log.info("new master %d starting (upgrade)", self.upgrade.pid)

    def advance_upgrade(self) -> None:
        """Hand over to the new master once it serves; if it cannot, keep serving and say why."""
        upgrade = self.upgrade
        if upgrade is None or (outcome := upgrade.outcome()) is None:
            return
        self.upgrade = None
        upgrade.close()
        serves, why = outcome
        if not serves:
            log.error("upgrade failed: the new master (pid %d): %s; this master keeps serving", upgrade.pid, why)
            try:
                os.kill(upgrade.pid, signal.SIGQUIT)  # one that hangs in its start-up (exited: reaped)
            except ProcessLookupError:
                pass
            self.record_upgrade(upgrade.pid, why)
            return
        log.info("upgrade: the new master (pid %d) serves; this master retires", upgrade.pid)
        notify(f"MAINPID={upgrade.pid}")
        self.record_upgrade(upgrade.pid, None)
        self.handed_over = True
        for listener in self.listeners:
            listener.hand_over()
        self.stop(graceful=True)

    def record_upgrade(self, pid: int | None, failure: str | None) -> None:
        """The outcome of an upgrade in ``<pidfile>.state``, where ``porch upgrade`` waits for it."""
        if self.pidfile is not None:
            state = read_state(self.pidfile.path)
            state["upgrade"] = {
                "from": os.getpid(),
                "to": pid,
                "result": "failed" if failure else "ok",
                "reason": failure or "",
                "time": time.time(),
            }
            write_state(self.pidfile.path, state)

    # -- reload -----------------------------------------------------------------------------------

    def reload(self) -> None:
        """HUP: start a new generation with the new config; the loop adopts or abandons it."""
        if self.reload_config is None:
            log.warning("SIGHUP: no config file to reload (serving a directory)")
            return
        log.info("SIGHUP: reloading the configuration")
        notify_reloading()
        self.board.set_state("reloading")
        if self.pending is not None:
            log.warning("abandoning the reload still starting (generation %d) for this one", self.pending.generation)
            self.record_reload(self.pending.generation, "superseded by a newer reload (HUP)", result="superseded")
            self.kill_reload()
        try:
            config = self.reload_config()
        except ConfigError as error:
            for problem in error.problems:
                log.error("%s", problem)
            log.error("reload failed: keeping the running configuration")
            self.refuse_reload(str(error))
            return
        refusal = check_privileges(config)
        if refusal is not None:
            log.error("reload failed: %s; keeping the running configuration", refusal)
            self.refuse_reload(refusal)
            return
        try:
            listeners = rebind(self.listeners, config.listen)
        except OSError as error:
            log.error("reload failed: %s; keeping the running configuration", error)
            self.refuse_reload(str(error))
            return
        for listener in listeners:
            if listener.sock not in {old.sock for old in self.listeners}:
                log.info("listening on %s", listener.name)
        self.pending = pending = Reload(config, listeners, next(self.generations))
        try:
            for _ in range(config.workers):
                pending.workers.append(self.spawn(config, listeners, pending.generation))
        except OSError as error:
            self.abandon_reload(f"cannot start a worker: {error.strerror or error}")

    def advance_reload(self) -> None:
        """Adopt the pending generation once all its workers serve; abandon it if one is gone
        (it could not boot, died, or was killed for not booting within BOOT_TIMEOUT_SECONDS)."""
        pending = self.pending
        if pending is None:
            return
        if any(worker.pid not in self.workers for worker in pending.workers):
            self.abandon_reload("the new workers did not start")
        elif all(worker.booted for worker in pending.workers):
            self.adopt_reload(pending)

    def refuse_reload(self, why: str) -> None:
        """A reload that started no generation: say so to systemd and to ``porch reload``."""
        self.aggregate.reloaded(succeeded=False)
        self.record_reload(None, why)
        notify("READY=1")

    def abandon_reload(self, why: str) -> None:
        assert self.pending is not None
        why = self.pending.why or why
        log.error("reload failed: %s; keeping the running configuration", why)
        self.aggregate.reloaded(succeeded=False)
        self.record_reload(self.pending.generation, why)
        self.kill_reload()
        notify("READY=1")

    def record_reload(self, generation: int | None, failure: str | None, result: str = "failed") -> None:
        """The outcome of a reload in ``<pidfile>.state``, where ``porch reload`` waits for it.

        "superseded" (a HUP came while it booted) is not an outcome anyone waits for: the
        newer reload's is.
        """
        self.reloads += 1
        if self.pidfile is None:
            return
        state = {
            "pid": os.getpid(),
            "reloads": self.reloads,
            "generation": self.generation,
            "attempted_generation": generation,
            "result": result if failure else "ok",
            "reason": failure or "",
            "time": time.time(),
        }
        write_state(self.pidfile.path, state)

    def kill_reload(self) -> None:
        """Kill the pending generation's workers and forget it."""
        for worker in self.forget_reload().workers:
            worker.retiring = True
            if worker.pid in self.workers:
                self.kill(worker)

    def forget_reload(self) -> Reload:
        """Drop the pending reload, closing the listeners only it had bound."""
        pending, self.pending = self.pending, None
        assert pending is not None
        kept = {listener.sock for listener in self.listeners}
        for listener in pending.listeners:
            if listener.sock not in kept:
                listener.close()
        return pending

    def adopt_reload(self, pending: Reload) -> None:
        """Every new worker serves: make its generation current and retire the old workers."""
        self.pending = None
        old_workers = [w for w in self.workers.values() if not w.retiring and w.generation != pending.generation]
        self.retire(old_workers, self.config.timeouts.graceful)
        for listener in dropped(self.listeners, pending.listeners):
            listener.close()  # only the master's copy: retiring workers drain theirs
        self.config, self.listeners, self.generation = pending.config, pending.listeners, pending.generation
        self.target = pending.config.workers
        if self.watcher is not None:
            self.watcher.follow(pending.config)
        self.boot_retries, self.down_since = 0, None
        try:
            logs = Logs(self.config.log)
        except OSError as error:
            log.error("cannot open the new logs (%s); the master keeps writing to the old ones", error)
        else:
            if self.logs is not None:
                self.logs.close()
            self.logs = logs
        chown_logs(self.config)
        self.aggregate.reloaded(succeeded=True)
        self.record_reload(pending.generation, None)
        log.info("reloaded: generation %d serving, %d old workers retiring", pending.generation, len(old_workers))
        notify_ready([listener.name for listener in self.listeners])
