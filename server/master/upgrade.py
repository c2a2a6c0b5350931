"""Upgrading porch itself without refusing a connection: USR2, as nginx and gunicorn do it.

How this works::

    old master, on USR2                       new master (the installed ``porch``, same arguments)
    ───────────────────                       ─────────────────────────────────────────────────────
    fork; in the child: listening sockets  →  LISTEN_PID/LISTEN_FDS: adopts them (bind_all), binds
    dup'ed to fd 3.., a report pipe, exec     nothing twice; the port checks are skipped
    keeps serving meanwhile                   boots its workers; the pidfile now names it
    reads the pipe each tick               ←  "ready" (or "failed: why", or exits: EOF)
    ready: retires its workers (they drain,   serves on the same sockets: the kernel's queue of
    the sockets stay open in the new master)  pending connections is never closed
    and exits; failed: says why, serves on

The two masters share the listening sockets themselves, not copies of an address, so a
connection arriving during the handover waits in the one accept queue for whichever worker
takes it first.  The report is the same pipe protocol ``porch --daemon`` waits on
(``porch.master.daemon.Startup``): the new master cannot tell an upgrade from a daemon start.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

from porch.master.daemon import FAILED, MAX_REPORT_BYTES, READY, Startup
from porch.net.listener import SD_LISTEN_FDS_START, BoundListener

UPGRADE_VARIABLE = "PORCH_UPGRADE"  # "<old master pid>:<report fd>", in the new master's environment
UPGRADE_TIMEOUT_SECONDS = 90.0  # a new master that has not reported by then is stopped


@dataclass
class Upgrade:
    """A new master starting on our sockets, as the old master follows it."""

    pid: int
    report_fd: int
    started: float
    report: bytes = b""

    def outcome(self) -> tuple[bool, str] | None:
        """(True, "") once the new master serves, (False, why) if it cannot; None while it starts.

        Reads what has arrived without waiting: the master calls this every tick.
        """
        while True:
            try:
                chunk = os.read(self.report_fd, MAX_REPORT_BYTES)
            except BlockingIOError:
                break
            except OSError as error:
                return False, f"cannot read its report: {error.strerror}"
            if not chunk:  # it closed the pipe: exited, or reported and closed
                return self.judged() or (False, "it exited during start-up (its error log says why)")
            self.report += chunk
        if time.monotonic() - self.started > UPGRADE_TIMEOUT_SECONDS:
            return False, f"it did not report ready within {UPGRADE_TIMEOUT_SECONDS:.0f}s"
        return self.judged()

    def judged(self) -> tuple[bool, str] | None:
        if self.report.startswith(READY):
            return True, ""
        if self.report.startswith(FAILED):
            return False, self.report[1:].decode(errors="replace")
        return None

    def close(self) -> None:
        os.close(self.report_fd)


def start_new_master(listeners: Sequence[BoundListener], directory: str) -> Upgrade:
    """Fork and execute the installed porch with this process's arguments, in the directory
    it was started from, the listening sockets passed as systemd passes them; OSError if it
    cannot even be forked.

    ``sys.orig_argv`` is the command line as the interpreter got it (``python -m porch -c …``,
    or a console script's path): the new master runs whatever is installed there now.  A
    daemon works from "/", so a relative ``-c`` needs ``directory`` to mean the same file.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    argv = [sys.executable, *sys.orig_argv[1:]]
    environ = {key: value for key, value in os.environ.items() if not key.startswith("LISTEN_")}
    old_pid = os.getpid()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the buffered text would be written by both sides of the fork
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(directory)
            _become_new_master(argv, environ, old_pid, [listener.sock.fileno() for listener in listeners], write_end)
        finally:
            os._exit(127)
    os.close(write_end)
    return Upgrade(pid, read_end, time.monotonic())


def _become_new_master(argv: list[str], environ: dict[str, str], old_pid: int, fds: list[int], report: int) -> None:
    """In the forked child: sockets to fd 3.., the report pipe after them, then exec.

    Every descriptor is first copied above the range it goes to (close-on-exec, so the copies
    vanish at the exec), then put in place inheritable: a socket already at fd 3 or 4 is never
    overwritten before it was copied.
    """
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the exec'd master starts with none blocked
        top = SD_LISTEN_FDS_START + len(fds)
        copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top + 1) for fd in (*fds, report)]
        for target, copy in enumerate(copies, start=SD_LISTEN_FDS_START):
            os.dup2(copy, target, inheritable=True)
        environ.update(
            LISTEN_PID=str(os.getpid()),
            LISTEN_FDS=str(len(fds)),
            **{UPGRADE_VARIABLE: f"{old_pid}:{top}"},
        )
        os.execve(argv[0], argv, environ)
    except OSError as error:
        os.write(report, FAILED + f"cannot execute {argv[0]}: {error.strerror}".encode())


def upgrade_startup(environ: MutableMapping[str, str] = os.environ) -> tuple[int, Startup] | None:
    """In a new master: (the old master's pid, the pipe to report to), once; None otherwise.

    The variable is removed, like LISTEN_FDS: no worker or script may take the pipe.
    """
    value = environ.pop(UPGRADE_VARIABLE, None)
    if value is None:
        return None
    old, _, fd = value.partition(":")
    if not (old.isdigit() and fd.isdigit()):
        return None
    os.set_inheritable(int(fd), False)
    return int(old), Startup(int(fd))
