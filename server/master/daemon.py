"""Daemon mode: detaching from the terminal, the pidfile, and who the workers run as.

How this works, in the order the master process uses it::

    ... logs opened ...
    pidfile = Pidfile(path); pidfile.acquire()   lock + write our pid, before any socket is bound
    ... listeners bound ...
    startup = daemonize()                        double fork; the command's process waits on a pipe
    pidfile.update()                             the pidfile now names the daemon, lock kept
    chown_logs(config)                           the workers' user may reopen the log files
    ... workers forked; in each: startup.forget(), pidfile.forget(), drop_privileges(user, group)
    startup.ready()   or   startup.failed(msg)   the waiting command exits 0, or 1 with msg
    ...
    pidfile.release()                            at exit: remove the file if it still names us

The pidfile is *locked* (``flock``) for the life of the master.  The lock, not the pid written
in the file, says whether porch runs: a pidfile left by a crash, or naming a pid the kernel has
since given to another program, is stale because nobody holds its lock.  A lock belongs to the
open file, so it survives the forks of ``daemonize`` and ends with the last process holding it.

Root policy (``check_root``): porch refuses to serve a network address with workers running as
root unless the config sets ``user`` (workers drop to it after the master has bound the ports)
or ``allow_root: true``.  Listening only on loopback or Unix sockets as root (a developer's
machine, a container, the test suite) is allowed, with a warning (``root_warning``) when the config
runs code of its own, silently when it only serves files.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import logging
import os
import select
import signal
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from porch.config.settings import group_entry, user_entry

if TYPE_CHECKING:
    from porch.config.settings import Config, Listener

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 120.0  # how long `porch --daemon` waits for the daemon to report
LOCK_ATTEMPTS = 20  # retries while another process is mid-way through taking the pidfile
LOCK_RETRY_SECONDS = 0.025
MAX_REPORT_BYTES = 65536
READY, FAILED = b"R", b"F"
# Signals whose handlers the master may already have installed; the waiting command must not
# inherit them (TTIN/TTOU would otherwise be caught, HUP/TERM merely queued).
PARENT_DEFAULT_SIGNALS = (
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


class DaemonError(Exception):
    """A daemon-mode start-up problem; the message is written for the operator."""


class AlreadyRunning(DaemonError):
    """The pidfile is locked by a live porch."""


# --- detaching ------------------------------------------------------------------------------


class Startup:
    """The daemon's end of the pipe to the ``porch --daemon`` command waiting for it.

    ``Startup(None)`` is the foreground case: nobody waits, every method does nothing, so the
    master can call ``ready()`` without asking which mode it is in.
    """

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def ready(self, line: str = "") -> None:
        """Serving: let the command exit 0; it prints our pid, then ``line`` (where to go) on stderr."""
        self._send(READY + f"{os.getpid()}\n{line}".encode())

    def failed(self, message: str) -> None:
        """Start-up failed: the command prints ``message`` and exits 1."""
        self._send(FAILED + message.encode("utf-8", "replace")[: MAX_REPORT_BYTES - 1])

    def forget(self) -> None:
        """In a forked worker: close the inherited pipe end, so only the master can report.

        Otherwise a master that dies before reporting leaves the command waiting for the
        workers to end, instead of telling the operator at once.
        """
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _send(self, report: bytes) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, report)
        except OSError as error:  # the command was interrupted (Ctrl-C): nobody to tell
            log.debug("the starting command is gone: %s", error)
        finally:
            self.forget()


def daemonize() -> Startup:
    """Detach from the terminal; returns in the daemon only.  Call before starting any thread.

    Classic double fork (APUE 13.3): the first child calls ``setsid`` to leave the terminal's
    session, the second is not a session leader and so can never acquire a controlling terminal
    again.  The daemon works from ``/`` (it keeps no directory busy; the config loader made every
    path absolute) and has stdin, stdout and stderr on /dev/null, so logs must be files.  The
    umask is not touched here: the CLI applies the configured one before logs, sockets and the
    pidfile are created, which happens before this call.

    The original process never returns: it waits for the daemon's ``ready()`` or ``failed()``
    and exits 0 or 1, so ``porch --daemon`` ends only once the server is really serving.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the buffered text would be written by both sides of the fork
    read_end, write_end = os.pipe()
    first = os.fork()
    if first > 0:
        os.close(write_end)
        _wait_for_daemon(read_end, first)
    os.close(read_end)
    try:
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
    except OSError as error:
        os.write(write_end, FAILED + f"cannot detach: {error.strerror}".encode())
        os._exit(1)
    os.chdir("/")
    _stdio_to_devnull()
    return Startup(write_end)


def _stdio_to_devnull() -> None:
    """Point fds 0-2 at /dev/null: a write to a closed terminal would otherwise fail or hang."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def _wait_for_daemon(read_end: int, first_child: int) -> NoReturn:
    """The command's side: report what the daemon said, then exit without any cleanup.

    ``os._exit`` skips atexit handlers and finalizers, which belong to the daemon now (the
    pidfile, the unix sockets, buffered log records).
    """
    status = 1
    try:
        for signum in PARENT_DEFAULT_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            os.waitpid(first_child, 0)  # the session leader exits at once
        except ChildProcessError:
            pass  # already reaped: SIGCHLD was ignored when it exited
        status, message = _outcome(_read_report(read_end, READY_TIMEOUT_SECONDS))
        os.write(1 if status == 0 else 2, message.encode())
    except KeyboardInterrupt:
        os.write(2, b"porch: interrupted; the server goes on starting in the background\n")
        status = 130
    except BaseException as error:  # whatever happens, never return into the master's code
        os.write(2, f"porch: waiting for the server failed: {error}\n".encode())
    finally:
        os._exit(status)


def _read_report(fd: int, timeout: float) -> bytes | None:
    """Everything the daemon writes until it closes the pipe; None if it takes too long."""
    deadline = time.monotonic() + timeout
    report = b""
    while len(report) < MAX_REPORT_BYTES:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, MAX_REPORT_BYTES)
        if not chunk:
            break
        report += chunk
    return report


def _outcome(report: bytes | None) -> tuple[int, str]:
    """Exit status and the line to print for what the daemon reported."""
    if report is None:
        return 1, (
            f"porch: the server did not report ready within {READY_TIMEOUT_SECONDS:.0f} s; it may "
            "still be starting (see its error log)\n"
        )
    if report.startswith(READY):
        pid, _, line = report[1:].decode(errors="replace").partition("\n")
        if line:
            os.write(2, f"{line}\n".encode())
        return 0, f"started (pid {pid})\n"
    if report.startswith(FAILED):
        return 1, f"porch: {report[1:].decode(errors='replace')}\n"
    return 1, "porch: the server exited during start-up (its error log says why)\n"


# --- the pidfile and the state file next to it ----------------------------------------------


def state_path(pidfile: str | os.PathLike[str]) -> Path:
    """``<pidfile>.state``: the outcome of the master's last reload, for ``porch reload`` to wait on."""
    path = Path(os.path.abspath(pidfile))
    return path.with_name(path.name + ".state")


def write_state(pidfile: str | os.PathLike[str], state: Mapping[str, object]) -> None:
    """Replace the state file atomically (write, then rename), so a reader never sees half of it."""
    path = state_path(pidfile)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(state) + "\n", encoding="utf-8")
        os.replace(temp, path)
    except OSError as error:
        log.warning("cannot write the state file %s: %s", path, error.strerror or error)
        temp.unlink(missing_ok=True)


def read_state(pidfile: str | os.PathLike[str]) -> dict[str, object]:
    """The state file's content; empty when there is none (no reload yet, or an older porch)."""
    try:
        state = json.loads(state_path(pidfile).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


class Pidfile:
    """A pidfile written atomically and locked for as long as the process holding it lives."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.abspath(path))
        self.fd: int | None = None

    def acquire(self) -> None:
        """Lock the pidfile and write our pid, or raise AlreadyRunning / DaemonError.

        An existing file is locked first, so two porches starting together cannot both decide
        it is stale; a new one is created with ``link``, which fails if the name exists.
        """
        if self.fd is not None:
            raise DaemonError(f"pidfile {self.path} is already held by this process")
        for _ in range(LOCK_ATTEMPTS):
            existing = _open_existing(self.path)
            if existing is None:
                if self._write(create=True):
                    return
                continue  # another process created it meanwhile: look at theirs
            try:
                if not _try_lock(existing, fcntl.LOCK_EX) or not _is_current(existing, self.path):
                    owner = _pid_in(existing)
                    if owner is not None and _alive(owner) and _is_current(existing, self.path):
                        raise AlreadyRunning(f"porch is already running (pid {owner}, pidfile {self.path})")
                    time.sleep(LOCK_RETRY_SECONDS)  # mid-way through a replace, or someone peeking
                    continue
                log.info(
                    "replacing stale pidfile %s (pid %s is not running porch)",
                    self.path,
                    _pid_in(existing) or "unknown",
                )
                self._write(create=False)
                return
            finally:
                os.close(existing)
        raise AlreadyRunning(f"porch is already running (pidfile {self.path} is locked by another process)")

    def update(self) -> None:
        """Write the current pid, keeping the lock: the daemon calls this after ``daemonize``."""
        if self.fd is None:
            raise DaemonError(f"pidfile {self.path} is not held by this process")
        self._write(create=False)

    def take_over(self) -> None:
        """An upgrade's new master, once it serves: replace the file the old master holds with
        one naming us (the old master's lock stays on the old file, which it no longer removes)."""
        self._write(create=False)

    def forget(self) -> None:
        """In a forked worker: close the inherited descriptor without unlocking or removing.

        The lock belongs to the open file shared with the master, so it stays held; closing
        our copy keeps it from outliving the master.
        """
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        """Remove the pidfile if it still names us, then let go of the lock."""
        if self.fd is None:
            return
        try:
            if _is_current(self.fd, self.path) and _pid_in(self.fd) == os.getpid():
                self.path.unlink()
        except OSError as error:
            log.warning("cannot remove pidfile %s: %s", self.path, error.strerror)
        finally:
            self.forget()

    def _write(self, *, create: bool) -> bool:
        """Put a new, already locked file holding our pid at the path; False if it appeared.

        Readers see the old content or the new, never a half-written file (the new one is
        complete before ``link``/``replace`` gives it the name).
        """
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            temp.unlink(missing_ok=True)  # left by a crash of an earlier process with our pid
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise DaemonError(f"cannot write pidfile {self.path}: {error.strerror}") from None
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new inode: nobody else has it
            if create:
                os.link(temp, self.path)
            else:
                os.replace(temp, self.path)
        except FileExistsError:
            os.close(fd)
            return False
        except OSError as error:
            os.close(fd)
            raise DaemonError(f"cannot write pidfile {self.path}: {error.strerror}") from None
        finally:
            temp.unlink(missing_ok=True)
        self.forget()  # the previous file (update after daemonize), unlinked by now
        self.fd = fd
        return True


def read_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid of the porch holding ``path``; None when it is missing or stale.

    Stale means nobody holds the lock (a crash, a ``kill -9``) or the pid it names is gone.
    The check takes a shared lock for an instant, which the holder's exclusive lock refuses.
    """
    try:
        fd = _open_existing(Path(path))
    except DaemonError:
        return None
    if fd is None:
        return None
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            return None  # nobody holds it
        pid = _pid_in(fd)
        return pid if pid is not None and _alive(pid) else None
    finally:
        os.close(fd)


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its parent counts as exited)."""
    if not _alive(pid):
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:  # Linux: state is after "(comm) "
            return stat_file.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _open_existing(path: Path) -> int | None:
    """A read-only descriptor of the pidfile, None if absent; a link or device is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DaemonError(f"pidfile {path} is a symbolic link; refusing to use it") from None
        raise DaemonError(f"cannot open pidfile {path}: {error.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DaemonError(f"pidfile {path} is not a regular file")
    return fd


def _try_lock(fd: int, kind: int) -> bool:
    """Take the lock without waiting; True if we got it (a shared probe is dropped at once)."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    if kind == fcntl.LOCK_SH:
        fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (another process may have replaced it)."""
    try:
        named, opened = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _pid_in(fd: int) -> int | None:
    content = os.pread(fd, 64, 0).strip()
    return int(content) if content.isdigit() and int(content) > 0 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


# --- privileges -----------------------------------------------------------------------------


def target_ids(user: str | None, group: str | None) -> tuple[int | None, int | None, str | None]:
    """(uid, gid, user name) to switch to, from names or numeric ids; DaemonError if unknown.

    Without ``group`` the user's primary group is used, as login does.
    """
    uid, gid, name = _user_ids(user) if user is not None else (None, None, None)
    if group is not None:
        gid = _group_id(group)
    elif user is not None and gid is None:
        raise DaemonError(f"user {user} has no passwd entry, so it has no primary group: set `group:` too")
    return uid, gid, name


def _user_ids(user: str) -> tuple[int, int | None, str | None]:
    """(uid, primary gid, name); a numeric uid without a passwd entry is allowed."""
    try:
        entry = user_entry(user)
    except KeyError:
        if user.isdigit():
            return int(user), None, None
        raise DaemonError(f"no user named '{user}' on this system") from None
    return entry.pw_uid, entry.pw_gid, entry.pw_name


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)  # a numeric gid needs no entry, as for chown(1)
    try:
        return group_entry(group).gr_gid
    except KeyError:
        raise DaemonError(f"no group named '{group}' on this system") from None


def drop_privileges(user: str | None, group: str | None) -> None:
    """Become ``user``/``group`` for good; a worker calls it right after it is forked.

    The master keeps its privileges so that a reload can bind new low ports.  Order matters:
    supplementary groups and the gid can only be changed while still root, and ``setuid`` as
    root changes the real, effective and saved uid, so there is no way back -- which is checked.
    """
    if user is None and group is None:
        return
    uid, gid, name = target_ids(user, group)
    if os.geteuid() != 0:
        if uid in (None, os.geteuid()) and gid in (None, os.getegid()):
            return
        raise DaemonError(_needs_root(user, group))
    assert gid is not None  # target_ids gives a gid whenever a user or group is set
    if name is not None:
        os.initgroups(name, gid)
    else:
        os.setgroups([gid])
    os.setgid(gid)
    if uid is not None and uid != 0:
        os.setuid(uid)
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise DaemonError(f"could regain root after switching to user {user}; refusing to go on")


def chown_logs(config: Config) -> None:
    """Give the log files the master created to the workers' user and group.

    Workers open their logs (and reopen them on USR1) after dropping privileges; a file that
    root created would refuse them.  The directory must still let the user in.  A file that
    cannot be changed is reported, never raised: this runs on USR1, and a log's trouble must not
    stop the master.
    """
    if os.geteuid() != 0 or (config.user is None and config.group is None):
        return
    uid, gid, _ = target_ids(config.user, config.group)
    for path in {config.log.error, config.log.access}:
        if isinstance(path, str) and path != "-":
            try:
                os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
            except FileNotFoundError:
                pass
            except OSError as error:
                log.warning("cannot give %s to the workers' user: %s", path, error.strerror or error)


def check_privileges(config: Config) -> str | None:
    """Every privilege problem the CLI can report before it binds anything, or None.

    An unknown user or group, a user switch porch has no right to make (only root can), or
    the root policy of ``check_root``.
    """
    if config.user is not None or config.group is not None:
        try:
            uid, gid, _ = target_ids(config.user, config.group)
        except DaemonError as error:
            return str(error)
        if os.geteuid() != 0 and (uid not in (None, os.geteuid()) or gid not in (None, os.getegid())):
            return _needs_root(config.user, config.group)
    return check_root(config)


def check_root(config: Config) -> str | None:
    """Why porch refuses to run as root with this config, or None.

    Workers that parse untrusted requests must not run as root on a network address.  Root is
    needed only by the master, to bind low ports; ``user`` makes the workers drop it.  Loopback
    and Unix-socket listeners only reach local users, who could run the code themselves, so
    there root is allowed (with ``root_warning``).  ``listen: []`` serves inherited sockets
    whose address porch cannot know, so it counts as network.  ``allow_root: true`` overrides.
    """
    if os.geteuid() != 0 or config.allow_root or _drops_root(config.user):
        return None
    exposed = [listener.address for listener in config.listen if not is_loopback(listener)]
    if not config.listen:
        exposed = ["inherited sockets"]
    if not exposed:
        return None
    return (
        f"refusing to serve {', '.join(exposed)} with workers running as root: set `user:` "
        "(and `group:`) so workers drop privileges after binding, listen only on loopback or "
        "unix: addresses, or set `allow_root: true` to accept the risk"
    )


def root_warning(config: Config) -> str | None:
    """The warning to log when workers will run as root and ``check_root`` allowed it.

    None when root is harmless: only this machine can connect, and every mount serves files or
    answers by itself (``porch serve DIR``), so no code of the config's own runs as root.
    """
    if os.geteuid() != 0 or _drops_root(config.user) or check_root(config) is not None:
        return None
    runs_no_code = {"static", "redirect", "status", "metrics", "health", "ready"}
    code = [f"{mount.path} {mount.type}" for mount in config.mounts if mount.type not in runs_no_code]
    local = bool(config.listen) and all(is_loopback(listener) for listener in config.listen)
    if local and not code:
        return None
    reason = (
        f"it listens on loopback or unix sockets only, but runs code of its own: {', '.join(code)}"
        if local
        else "allow_root is true"
    )
    return f"workers run as root ({reason}); set `user:` to run them unprivileged"


def is_loopback(listener: Listener) -> bool:
    """Whether only this machine can reach the listener (a Unix socket or a loopback address)."""
    if listener.unix_path is not None:
        return True
    host = listener.host_port[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


def _drops_root(user: str | None) -> bool:
    """Whether ``user`` names someone other than root (an unknown user drops nothing)."""
    if user is None:
        return False
    try:
        return _user_ids(user)[0] != 0
    except DaemonError:
        return False


def _needs_root(user: str | None, group: str | None) -> str:
    wanted = " and ".join(f"{key} {value}" for key, value in (("user", user), ("group", group)) if value)
    try:
        current = user_entry(str(os.geteuid())).pw_name
    except KeyError:
        current = str(os.geteuid())
    return f"switching to {wanted} needs porch to be started as root (it runs as {current})"
