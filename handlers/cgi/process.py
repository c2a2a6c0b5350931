"""Running one CGI script: spawn it, feed its stdin, log its stderr, read its stdout, end it.

How this works::

    ScriptRun(argv, env, stdin) ──► Popen: no shell, own session (so its own process group)
        ├─ feeder thread:    request body ──► stdin pipe, then closes it (only when there is a body)
        ├─ read():           stdout and stderr in one poll, against the run's deadline (then
        │                    GatewayTimeout); each stderr line ──► error log, tagged with the script;
        │                    after each second without output: is the client still there?
        └─ read_available(): what stdout holds right now, never waiting (a short output goes whole)
    finish(): after end of output, wait for the exit on a pidfd (until the deadline) logging
              stderr, kill stragglers, reap, log stderr to its end
    close():  SIGTERM to the group, a short grace, SIGKILL to the group, reap, log the rest of
              stderr, join the feeder

Stdout and stderr are read by the thread serving the request, in the same poll, so a script
that fills its stderr pipe while the server waits for stdout cannot deadlock.  The script is
never reaped before its group is signalled: a pidfd or ``waitid(WNOWAIT)`` sees the exit
without reaping, so the pid -- which is the group id -- cannot have been reused by an unrelated
process when ``killpg`` runs.  The feeder thread owns the stdin pipe and closes it itself, so
no descriptor is closed under a thread that is still using it.

``ScriptOutput`` is the response body: it streams stdout to the connection, which always calls
its ``close()`` (also when the client went away), so a script never outlives its request.  (An
output complete with its head is sent as bytes instead; the handler ends the run before that.)
``SlotPool`` caps how many scripts of one mount run at once in a worker, across its threads and
its forked connection children alike.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import resource
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from porch.http.errors import ClientDisconnected, GatewayTimeout
from porch.http.messages import Body, escape
from porch.timing import milliseconds

log = logging.getLogger(__name__)

BLOCK_BYTES = 65536
STDERR_LINE_BYTES = 4096  # longer stderr lines are logged in pieces
TERM_GRACE_SECONDS = 0.5  # between SIGTERM and SIGKILL when a script is stopped early
STDERR_GRACE_SECONDS = 1.0  # for stderr's end after the group ended (a process left the group)
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
        for which, value, hard_extra in (
            (resource.RLIMIT_CPU, self.cpu_seconds, 1),
            (resource.RLIMIT_AS, self.address_space, 0),
            (resource.RLIMIT_NOFILE, self.open_files, 0),
        ):
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

    Each place is a file taken with ``flock``.  Such a lock belongs to one open file description,
    so every taker opens the file itself (two threads of one process exclude each other too), and
    the kernel drops the lock when its holder dies: a crashed worker cannot leak a place.  The
    files have no name, so nothing is left on disk however the process ends (even by SIGKILL):
    each is made unlinked (``O_TMPFILE``, else unlinked as soon as made) and kept open here, and
    a taker opens its own description of it through ``/proc/self/fd/<fd>`` -- a forked child
    through the descriptor it inherited.  All are close-on-exec, so scripts never inherit them.
    """

    def __init__(self, size: int) -> None:
        import fcntl  # POSIX only, like the rest of the CGI runner

        self._fcntl = fcntl
        self._files: list[IO[bytes]] = [tempfile.TemporaryFile(buffering=0) for _ in range(size)]

    def acquire(self) -> Slot | None:
        """A free place, or None when all are taken (or the pool is closed)."""
        files = self._files
        start = random.randrange(len(files)) if files else 0
        for file in files[start:] + files[:start]:
            fd = os.open(f"/proc/self/fd/{file.fileno()}", os.O_RDWR | os.O_CLOEXEC)
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
        """Close this process's copies of the files; each goes when its last descriptor does."""
        files, self._files = self._files, []
        for file in files:
            file.close()


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
    """One running script and everything it holds: process group, pipes, the feeder thread.

    Only the thread serving the request reads stdout and stderr (``read``, ``read_available``,
    ``finish``, ``close``); ``stop`` may come from another thread and only ends the group.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        stdin: ScriptInput,
        timeout: float,
        tag: str,
        preexec: Callable[[], None] | None = None,
        client_gone: Callable[[], bool] = lambda: False,
        before_wait: Callable[[], None] = lambda: None,
    ) -> None:
        """Start the script; OSError (from exec) propagates with nothing left behind."""
        self.tag = tag
        self.client_gone = client_gone
        self.before_wait = before_wait
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.timed_out = False  # it ran past its timeout
        self.killed = False  # porch had to end it (timeout, the client gone, a stop): for the metrics
        self._closed = False
        self._stopping = False  # the run is being stopped: the feeder gives up (a flag; an Event costs more)
        self._lock = threading.RLock()
        self._feeder: threading.Thread | None = None  # once it runs, it alone closes the stdin pipe
        stdin_arg: Any = subprocess.DEVNULL
        if stdin.file is not None:
            stdin_arg = stdin.file
        elif stdin.body is not None:
            stdin_arg = subprocess.PIPE
        self.proc = subprocess.Popen(  # RFC 3875 4.4: never the query string as arguments
            argv,
            stdin=stdin_arg,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # the pipes are read and written by descriptor: no buffered wrapper to make
            cwd=cwd,
            env=env,
            close_fds=True,
            start_new_session=True,
            preexec_fn=preexec,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._stdout = self.proc.stdout
        self._stdout_fd = self._stdout.fileno()
        self._stderr_fd: int | None = self.proc.stderr.fileno()  # None once closed
        self._stderr_pending = bytearray()  # the start of a stderr line not yet complete
        self._poller = select.poll()  # stdout and stderr in one poll: neither pipe can fill up unread
        self._poller.register(self._stdout_fd, select.POLLIN)
        self._poller.register(self._stderr_fd, select.POLLIN)
        if stdin.body is not None:
            try:
                self._start_feeder(stdin.body, stdin.first)
            except BaseException:  # e.g. no thread could be started: leave nothing running
                self.close()
                raise

    # -- stdout -------------------------------------------------------------------------------

    def read(self) -> bytes:
        """The next bytes of stdout, b"" at its end; GatewayTimeout once the deadline passed.

        Output a finished script left in the pipe is still read after the deadline (the client
        may simply be slow); a script still running then is killed.  Stderr is logged meanwhile.
        """
        check_at = time.monotonic() + CLIENT_CHECK_SECONDS
        while True:
            now = time.monotonic()
            remaining = self.deadline - now
            if remaining <= 0:
                if self._exited() and self._poll_stdout(0):
                    return os.read(self._stdout_fd, BLOCK_BYTES)
                raise self._time_out()
            if now >= check_at:  # a script silent on stdout would otherwise run until its timeout
                if self.client_gone():
                    log.info("%s: the client went away; stopping the script", self.tag)
                    self._end()
                    raise ClientDisconnected()
                check_at = now + CLIENT_CHECK_SECONDS
            if self._poll_stdout(milliseconds(min(remaining, check_at - now))):
                return os.read(self._stdout_fd, BLOCK_BYTES)

    def read_available(self, limit: int) -> tuple[bytes, bool]:
        """What stdout holds right now (at most ``limit`` bytes), and whether it ended; never waits."""
        chunks: list[bytes] = []
        size = 0
        while size < limit and self._poll_stdout(0):
            data = os.read(self._stdout_fd, min(BLOCK_BYTES, limit - size))
            if not data:
                return b"".join(chunks), True
            chunks.append(data)
            size += len(data)
        return b"".join(chunks), False

    def finish(self) -> int:
        """After the end of stdout: wait for the exit (until the deadline), reap; the status.

        Stderr is logged while waiting (a script blocked on a full stderr pipe would never exit)
        and then to its end, so the error log has the script's last lines before its status.
        """
        if not self._wait_exited(self.deadline, log_stderr=True):
            log.warning(
                "%s: still running after closing its output; stopped at its %gs timeout", self.tag, self.timeout
            )
        self._end()
        self._drain_stderr()
        return self.proc.returncode

    def conclude(self) -> None:
        """``finish()`` after a normal end of output, where only a failed exit is worth a line."""
        if status := self.finish():
            log.warning("%s: %s", self.tag, describe_exit(status))

    @property
    def feeding(self) -> bool:
        """Whether the request body is still being copied to stdin (the feeder may be in body.read())."""
        return self._feeder is not None and self._feeder.is_alive()

    def _poll_stdout(self, timeout_ms: int) -> bool:
        """Whether stdout is readable within ``timeout_ms``; stderr arriving meanwhile is logged."""
        ready = False
        if timeout_ms:
            self.before_wait()
        for fd, _ in self._poller.poll(timeout_ms):
            if fd == self._stdout_fd:
                ready = True
            else:
                self._read_stderr()
        return ready

    def _time_out(self) -> GatewayTimeout:
        log.error("%s: stopped after running for its %gs timeout", self.tag, self.timeout)
        self.timed_out = True
        self._end()
        return GatewayTimeout(f"the script did not finish within {self.timeout:g}s")

    # -- stderr -------------------------------------------------------------------------------

    def _read_stderr(self) -> None:
        """Log the complete lines stderr holds now; at its end, the rest too, and close it."""
        assert self._stderr_fd is not None
        data = os.read(self._stderr_fd, BLOCK_BYTES)
        self._stderr_pending += data
        self._log_stderr_lines(final=not data)
        if not data:
            self._close_stderr()

    def _log_stderr_lines(self, final: bool) -> None:
        """One log line per stderr line; longer lines in STDERR_LINE_BYTES pieces."""
        pending = self._stderr_pending
        start = 0
        while start < len(pending):
            newline = pending.find(b"\n", start, start + STDERR_LINE_BYTES)
            if newline >= 0:
                end = newline + 1
            elif final or len(pending) - start >= STDERR_LINE_BYTES:
                end = min(start + STDERR_LINE_BYTES, len(pending))
            else:
                break
            text = pending[start:end].rstrip(b"\r\n").decode("utf-8", "backslashreplace")
            if text.strip():
                log.warning("%s: %s", self.tag, escape(text))
            start = end
        del pending[:start]

    def _drain_stderr(self) -> None:
        """Log stderr to its end (the group is gone by now), then close it.

        A process that left the group may still hold the pipe: it gets until the deadline, at
        most STDERR_GRACE_SECONDS, and then the pipe is closed under it.
        """
        if self._stderr_fd is None:
            return
        until = min(self.deadline, time.monotonic() + STDERR_GRACE_SECONDS)
        poller = select.poll()
        poller.register(self._stderr_fd, select.POLLIN)
        while self._stderr_fd is not None and poller.poll(milliseconds(until - time.monotonic())):
            self._read_stderr()
        if self._stderr_fd is not None:
            self._log_stderr_lines(final=True)
            self._close_stderr()

    def _close_stderr(self) -> None:
        assert self._stderr_fd is not None and self.proc.stderr is not None
        self._poller.unregister(self._stderr_fd)
        self._stderr_fd = None
        self.proc.stderr.close()

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

    def _wait_exited(self, until: float, log_stderr: bool = False) -> bool:
        """Whether the script exited by ``until``, without reaping it; stderr logged meanwhile if asked.

        A pidfd turns readable at the exit, so the wait is one poll; without one (not Linux, or
        an old kernel) the exit is polled for with a growing pause.
        """
        if self._exited():
            return True
        pidfd = self._open_pidfd()
        poller = select.poll()
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        if log_stderr and self._stderr_fd is not None:
            poller.register(self._stderr_fd, select.POLLIN)
        pause = 0.001
        self.before_wait()
        try:
            while not self._exited():
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return False
                wait = remaining if pidfd is not None else min(pause, remaining)
                pause = min(pause * 2, 0.05)
                for fd, _ in poller.poll(milliseconds(wait)):
                    if fd != pidfd:
                        self._read_stderr()
                        if self._stderr_fd is None:
                            poller.unregister(fd)
            return True
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _open_pidfd(self) -> int | None:
        """A descriptor that turns readable when the script exits; None where there is none."""
        with self._lock:  # not while _end reaps: the pid must still be the script's
            if self.proc.returncode is not None:
                return None
            try:
                return os.pidfd_open(self.proc.pid)
            except (AttributeError, OSError):
                return None

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
                self.killed = True
                self._signal_group(signal.SIGTERM)
                self._wait_exited(time.monotonic() + TERM_GRACE_SECONDS)
            # The script is not reaped yet, so its pid (the group id) is still ours to signal:
            # this also ends whatever it left running in its group.
            self._signal_group(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """End the script now (server shutdown); its reader sees the end of output."""
        self._stopping = True
        self._end()

    def close(self) -> None:
        """End the script and release everything it holds; safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping = True
        self._end()
        self._stdout.close()
        self._drain_stderr()
        if self._feeder is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        else:
            # The feeder may be inside body.read(); it must be done before the connection uses
            # the request body again.  Socket timeouts bound that read.
            self._feeder.join()

    # -- stdin --------------------------------------------------------------------------------

    def _start_feeder(self, body: Body, first: bytes) -> None:
        context = contextvars.copy_context()  # keeps the request id on the log lines
        feeder = threading.Thread(
            target=context.run, args=(self._feed, body, first), name=f"cgi-stdin-{self.proc.pid}", daemon=True
        )
        feeder.start()
        self._feeder = feeder

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
                    if self._stopping:
                        return
                    try:
                        view = view[os.write(fd, view) :]
                    except BlockingIOError:
                        poller.poll(STDIN_POLL_MILLISECONDS)
                if self._stopping:
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
            self._run.conclude()
            raise StopIteration
        return data

    def close(self) -> None:
        try:
            self._run.close()
        finally:
            self._release()
