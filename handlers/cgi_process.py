"""Running one CGI script: spawn it, feed its stdin, log its stderr, read its stdout, end it.

How this works::

    ScriptRun(argv, env, stdin) ──► Popen: no shell, own session (so its own process group)
        ├─ feeder thread:  request body ──► stdin pipe, then closes it (only when there is a body)
        ├─ stderr thread:  each stderr line ──► error log, tagged with the script
        └─ read():         stdout, polled against the run's deadline (GatewayTimeout after it)
    finish(): after end of output, wait for the exit (until the deadline), kill stragglers, reap
    close():  SIGTERM to the group, a short grace, SIGKILL to the group, reap, join the threads

The script is never reaped before its group is signalled: ``waitid(WNOWAIT)`` sees the exit
without reaping, so the pid -- which is the group id -- cannot have been reused by an unrelated
process when ``killpg`` runs.  The feeder and stderr threads own their pipe ends and close them
themselves, so no descriptor is closed under a thread that is still using it.

``ScriptOutput`` is the response body: it streams stdout to the connection, which always calls
its ``close()`` (also when the client went away), so a script never outlives its request.
``SlotPool`` caps how many scripts of one mount run at once in a worker, across its threads and
its forked connection children alike.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from server.errors import ClientDisconnected, GatewayTimeout
from server.logs import escape
from server.messages import Body

log = logging.getLogger(__name__)

BLOCK_BYTES = 65536
STDERR_LINE_BYTES = 4096  # longer stderr lines are logged in pieces
TERM_GRACE_SECONDS = 0.5  # between SIGTERM and SIGKILL when a script is stopped early
STDERR_JOIN_SECONDS = 1.0
CLIENT_CHECK_SECONDS = 1.0  # how often a silent script's client is checked for a hang-up
STDIN_POLL_MILLISECONDS = 250  # how often a blocked feeder checks whether the run was stopped
HAS_WAITID = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


@dataclass(frozen=True)
class ResourceLimits:
    """Per-script limits applied with ``setrlimit`` in the child between fork and exec."""

    cpu_seconds: int | None = None
    address_space: int | None = None  # bytes
    open_files: int | None = None

    def preexec(self) -> Callable[[], None] | None:
        """The function the child runs before exec, or None when no limit is set.

        None keeps subprocess on its fast path (vfork, no Python code in the child).  The values
        are computed here in the parent, so the child only makes ``setrlimit`` calls: no imports,
        no locks, nothing that a fork in a threaded process could deadlock on.
        """
        settings: list[tuple[int, tuple[int, int]]] = []
        for which, value, hard_extra in ((resource.RLIMIT_CPU, self.cpu_seconds, 1),
                                         (resource.RLIMIT_AS, self.address_space, 0),
                                         (resource.RLIMIT_NOFILE, self.open_files, 0)):
            if value is None:
                continue
            _, hard_now = resource.getrlimit(which)
            hard = value + hard_extra
            if hard_now != resource.RLIM_INFINITY:
                hard = min(hard, hard_now)  # an unprivileged process cannot raise its hard limit
            settings.append((which, (min(value, hard), hard)))
        if not settings:
            return None

        def apply_limits() -> None:
            # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL one second later at the hard one.
            for which, pair in settings:
                resource.setrlimit(which, pair)

        return apply_limits


class Slot:
    """One held place in a ``SlotPool``; ``release()`` gives it back (idempotent)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class SlotPool:
    """At most ``size`` holders at once, counted across threads and forked processes.

    Each place is a lock file taken with ``flock``.  Such a lock belongs to one open file
    description, so every taker opens the file itself (two threads of one process exclude each
    other too), and the kernel drops the lock when its holder dies: a crashed worker cannot leak
    a place.  The descriptors are close-on-exec, so scripts never inherit them.
    """

    def __init__(self, size: int) -> None:
        import fcntl  # POSIX only, like the rest of the CGI runner

        self._fcntl = fcntl
        self.size = size
        self.directory = Path(tempfile.mkdtemp(prefix="porch-cgi-slots-"))
        self._owner = os.getpid()
        self._paths = [self.directory / f"slot-{index}" for index in range(size)]
        for path in self._paths:
            path.touch()

    def acquire(self) -> Slot | None:
        """A free place, or None when all are taken."""
        start = random.randrange(self.size)
        for offset in range(self.size):
            fd = os.open(self._paths[(start + offset) % self.size], os.O_RDWR | os.O_CLOEXEC)
            try:
                self._fcntl.flock(fd, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return Slot(fd)
        return None

    def close(self) -> None:
        """Remove the lock files; only the process that made them does (forked children share them)."""
        if os.getpid() == self._owner:
            shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class ScriptInput:
    """What the script reads on stdin: nothing, a file, or the request body through a pipe."""

    file: IO[bytes] | None = None  # a de-chunked body spooled to an unlinked file; becomes stdin
    body: Body | None = None  # streamed by the feeder thread
    first: bytes = b""  # the start of ``body``, already read (see CGIHandler.script_input)
    content_length: int | None = None  # CONTENT_LENGTH; None when the request has no body

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


class ScriptRun:
    """One running script and everything it holds: process group, pipes, threads."""

    def __init__(self, argv: list[str], *, cwd: str, env: dict[str, str], stdin: ScriptInput,
                 timeout: float, tag: str, preexec: Callable[[], None] | None = None,
                 client_gone: Callable[[], bool] = lambda: False) -> None:
        """Start the script; OSError (from exec) propagates with nothing left behind."""
        self.tag = tag
        self.client_gone = client_gone
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._closed = False
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._threads: list[threading.Thread] = []
        self._feeding = False  # once the feeder runs, it alone closes the stdin pipe
        stdin_arg: Any = subprocess.DEVNULL
        if stdin.file is not None:
            stdin_arg = stdin.file
        elif stdin.body is not None:
            stdin_arg = subprocess.PIPE
        self.proc = subprocess.Popen(  # RFC 3875 4.4: never the query string as arguments
            argv, stdin=stdin_arg, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
            env=env, close_fds=True, start_new_session=True, preexec_fn=preexec)
        assert self.proc.stdout is not None
        self._stdout = self.proc.stdout
        self._stdout_fd = self._stdout.fileno()
        self._poller = select.poll()
        self._poller.register(self._stdout_fd, select.POLLIN)
        try:
            self._start(self._log_stderr, "stderr")
            if stdin.body is not None:
                self._start(self._feed, "stdin", stdin.body, stdin.first)
                self._feeding = True
        except BaseException:  # e.g. no thread could be started: leave nothing running
            self.close()
            raise

    # -- stdout -------------------------------------------------------------------------------

    def read(self) -> bytes:
        """The next bytes of stdout, b"" at its end; GatewayTimeout once the deadline passed.

        Output a finished script left in the pipe is still read after the deadline (the client
        may simply be slow); a script still running then is killed.
        """
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                if self._exited() and self._poller.poll(0):
                    return os.read(self._stdout_fd, BLOCK_BYTES)
                raise self._time_out()
            if self._poller.poll(math.ceil(min(remaining, CLIENT_CHECK_SECONDS) * 1000)):
                return os.read(self._stdout_fd, BLOCK_BYTES)
            if self.client_gone():  # a silent script would otherwise run until its timeout
                log.info("%s: the client went away; stopping the script", self.tag)
                self._end()
                raise ClientDisconnected()

    def finish(self) -> int:
        """After the end of stdout: wait for the exit (until the deadline), reap; the status.

        The stderr thread is given a moment to log the script's last lines first, so the error
        log reads in order.
        """
        if not self._wait_exited(self.deadline):
            log.warning("%s: still running after closing its output; stopped at its %gs timeout",
                        self.tag, self.timeout)
        self._end()
        for thread in self._threads:
            if thread.name.startswith("cgi-stderr"):
                thread.join(STDERR_JOIN_SECONDS)
        return self.proc.returncode

    def _time_out(self) -> GatewayTimeout:
        log.error("%s: stopped after running for its %gs timeout", self.tag, self.timeout)
        self._end()
        return GatewayTimeout(f"the script did not finish within {self.timeout:g}s")

    # -- the process group --------------------------------------------------------------------

    def _exited(self) -> bool:
        """Whether the script exited, without reaping it (so its pid stays reserved)."""
        if self.proc.returncode is not None:
            return True
        if not HAS_WAITID:
            return self.proc.poll() is not None
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _wait_exited(self, until: float) -> bool:
        delay = 0.001
        while not self._exited():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
        return True

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _end(self) -> None:
        """Stop the whole process group and reap the script; nothing is left running."""
        with self._lock:
            if self.proc.returncode is not None:
                return
            if not self._exited():
                self._signal_group(signal.SIGTERM)
                self._wait_exited(time.monotonic() + TERM_GRACE_SECONDS)
            # The script is not reaped yet, so its pid (the group id) is still ours to signal:
            # this also ends whatever it left running in its group.
            self._signal_group(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """End the script now (server shutdown); its reader sees the end of output."""
        self._stop.set()
        self._end()

    def close(self) -> None:
        """End the script and release everything it holds; safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._end()
        self._stdout.close()
        if self.proc.stdin is not None and not self._feeding:
            self.proc.stdin.close()
        for thread in self._threads:
            # The feeder may be inside body.read(); it must be done before the connection uses
            # the request body again.  Socket timeouts bound that read; the stderr thread ends
            # once every process holding the pipe is gone.
            thread.join(None if thread.name.startswith("cgi-stdin") else STDERR_JOIN_SECONDS)

    # -- stdin and stderr threads ------------------------------------------------------------

    def _start(self, target: Callable[..., None], role: str, *args: object) -> None:
        context = contextvars.copy_context()  # keeps the request id on the log lines
        thread = threading.Thread(target=context.run, args=(target, *args),
                                  name=f"cgi-{role}-{self.proc.pid}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _feed(self, body: Body, first: bytes) -> None:
        """Copy the request body to stdin, then close it: the script sees end of file."""
        pipe = self.proc.stdin
        assert pipe is not None
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        try:
            chunk = first
            while chunk:
                view = memoryview(chunk)
                while view:
                    if self._stop.is_set():
                        return
                    try:
                        view = view[os.write(fd, view):]
                    except BlockingIOError:
                        poller.poll(STDIN_POLL_MILLISECONDS)
                if self._stop.is_set():
                    return
                chunk = body.read(BLOCK_BYTES)
        except BrokenPipeError:
            log.debug("%s: stopped reading its input", self.tag)
        except Exception as error:  # the client did not deliver the body: timeout, framing
            log.warning("%s: request body not delivered: %s", self.tag, error)
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    def _log_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        try:
            while line := stream.readline(STDERR_LINE_BYTES):
                text = line.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
                if text.strip():
                    log.warning("%s: %s", self.tag, escape(text))
        except (OSError, ValueError):
            pass
        finally:
            stream.close()


class ScriptOutput:
    """A response body streaming a script's stdout; ``close()`` always ends the script.

    ``first`` is the output already read past the header block.  Errors raised while iterating
    (GatewayTimeout) make the connection abort the response: its head has been sent.
    """

    def __init__(self, run: ScriptRun, first: bytes, release: Callable[[], None]) -> None:
        self._run = run
        self._pending = first
        self._ended = False
        self._release = release

    def __iter__(self) -> ScriptOutput:
        return self

    def __next__(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if self._ended:
            raise StopIteration
        data = self._run.read()
        if not data:
            self._ended = True
            status = self._run.finish()
            if status:
                log.warning("%s: %s", self._run.tag, describe_exit(status))
            raise StopIteration
        return data

    def close(self) -> None:
        try:
            self._run.close()
        finally:
            self._release()
