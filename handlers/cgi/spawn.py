"""Starting a CGI script: ``posix_spawn`` where the C library can do all a script needs, else
``subprocess``.

What a script gets either way: stdin, stdout and stderr on the descriptors given, every other
descriptor closed, its own session (so its own process group, which ``killpg`` ends as one), the
script's directory as its working directory, and exactly the environment given.  Signals:
``posix_spawn`` sets every one to its default disposition with none blocked; ``subprocess``
restores SIGPIPE and SIGXFSZ (which Python ignores) and exec resets the handled ones.

Why not ``subprocess`` alone: its ``fork_exec`` holds the GIL until the child has called exec
(up to Python 3.11; 3.12 releases it), so while one thread starts a script, no other thread of
the worker runs -- with a shell script, a few hundred microseconds each time -- and its Python
side costs about 60 µs of CPU a start more than a foreign call.  glibc's ``posix_spawn`` (a
``clone(CLONE_VM | CLONE_VFORK)``, like subprocess's vfork) is called through ``ctypes``, which
lets go of the GIL for the call.  It needs ``posix_spawn_file_actions_addchdir_np`` and
``..._addclosefrom_np`` (glibc 2.34 and later), and the flag values below are those of Linux's C
libraries, so the fast way is taken on Linux with those functions.  Everywhere else, and when
resource limits must be set between fork and exec (``preexec``: Python code in the child), the
script starts through ``subprocess.Popen`` with the same descriptors and settings.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

# <spawn.h> flag values of glibc and musl (Linux): the C library takes them as a short.
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80
# Larger than glibc's posix_spawn_file_actions_t (80 bytes), posix_spawnattr_t (336) and
# sigset_t (128), in 8-byte words so that they are aligned for the structures' fields.
FILE_ACTIONS_WORDS = 32
ATTRIBUTES_WORDS = 64
SIGSET_WORDS = 16

Words = ctypes.Array[ctypes.c_uint64]


def _checked(result: int) -> int:
    """A posix_spawn* return value: 0, or the error number it reports (errno is not set)."""
    if result:
        raise OSError(result, os.strerror(result))
    return result


class PosixSpawn:
    """The C library's ``posix_spawn`` and its helpers, found once; ``None`` where one is missing."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)  # the symbols of the running process: its libc
        self.spawn = libc.posix_spawn
        self.spawn.argtypes = [
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
        ]
        self.actions_init = libc.posix_spawn_file_actions_init
        self.actions_destroy = libc.posix_spawn_file_actions_destroy
        self.add_dup2 = libc.posix_spawn_file_actions_adddup2
        self.add_dup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.add_chdir = libc.posix_spawn_file_actions_addchdir_np
        self.add_chdir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.add_closefrom = libc.posix_spawn_file_actions_addclosefrom_np
        self.add_closefrom.argtypes = [ctypes.c_void_p, ctypes.c_int]
        for function in (self.spawn, self.actions_init, self.actions_destroy, self.add_dup2, self.add_chdir):
            function.restype = ctypes.c_int
        self.add_closefrom.restype = ctypes.c_int
        # The attributes are the same for every script: made once, read-only afterwards (the
        # C library takes them as const), so threads share them.
        self.attributes: Words = (ctypes.c_uint64 * ATTRIBUTES_WORDS)()
        # Every bit set, not sigfillset(): that leaves out glibc's two internal signals, which
        # the child would then start with ignored.
        every = (ctypes.c_uint64 * SIGSET_WORDS)(*[2**64 - 1] * SIGSET_WORDS)
        none = (ctypes.c_uint64 * SIGSET_WORDS)()
        _checked(libc.posix_spawnattr_init(self.attributes))
        flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSID
        _checked(libc.posix_spawnattr_setflags(self.attributes, ctypes.c_short(flags)))
        _checked(libc.posix_spawnattr_setsigdefault(self.attributes, every))
        _checked(libc.posix_spawnattr_setsigmask(self.attributes, none))

    def start(self, argv: Sequence[str], cwd: str, env: dict[str, str], fds: tuple[int, int, int]) -> int:
        """Start ``argv[0]`` (a path: no search) with ``fds`` as its stdin, stdout, stderr; its pid.

        The GIL is released for the call (a ``ctypes`` foreign call); OSError when the program
        cannot be started, as from ``subprocess``.
        """
        program = os.fsencode(argv[0])
        arguments = [os.fsencode(word) for word in argv]
        variables = [os.fsencode(name) + b"=" + os.fsencode(value) for name, value in env.items()]
        for name in env:
            if "=" in name or not name:
                raise ValueError(f"illegal environment variable name: {name!r}")
        if any(b"\0" in word for word in (*arguments, *variables)):
            raise ValueError("embedded null byte")
        c_argv = (ctypes.c_char_p * (len(arguments) + 1))(*arguments, None)
        c_env = (ctypes.c_char_p * (len(variables) + 1))(*variables, None)
        actions = (ctypes.c_uint64 * FILE_ACTIONS_WORDS)()
        _checked(self.actions_init(actions))
        try:
            for target, source in enumerate(fds):
                _checked(self.add_dup2(actions, source, target))
            _checked(self.add_chdir(actions, os.fsencode(cwd)))
            _checked(self.add_closefrom(actions, 3))
            pid = ctypes.c_int()
            failed = self.spawn(ctypes.byref(pid), program, actions, self.attributes, c_argv, c_env)
        finally:
            self.actions_destroy(actions)
        if failed:
            raise OSError(failed, os.strerror(failed), argv[0])
        return pid.value


def _find_posix_spawn() -> PosixSpawn | None:
    """The fast way, where this platform has all of it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return PosixSpawn()
    except (AttributeError, OSError):  # an older or another C library: subprocess it is
        return None


POSIX_SPAWN = _find_posix_spawn()


class ScriptProcess:
    """A started script: its pid, and the parent's ends of its pipes as descriptors.

    Whoever started it reaps it with ``wait`` (or ``poll``): through ``subprocess`` when that
    started it -- a ``Popen`` left unreaped would later reap whatever process got the pid next.
    """

    def __init__(self, pid: int, stdin: int | None, stdout: int, stderr: int, popen: subprocess.Popen[bytes] | None):
        self.pid = pid
        self.stdin = stdin  # the write end of the body's pipe, or None (no body, or a file)
        self.stdout = stdout
        self.stderr = stderr
        self._popen = popen
        self._status: int | None = None

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: the signal that ended it), as ``Popen``'s."""
        return self._popen.returncode if self._popen is not None else self._status

    def poll(self) -> int | None:
        if self._popen is not None:
            return self._popen.poll()
        if self._status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
        return self._status

    def wait(self) -> int:
        if self._popen is not None:
            return self._popen.wait()
        if self._status is None:
            self._status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self._status


def start_script(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    stdin_file: int | None,
    stdin_pipe: bool,
    preexec: Callable[[], None] | None = None,
) -> ScriptProcess:
    """Start a script with its output on two new pipes and its input from ``stdin_file``, a new
    pipe (``stdin_pipe``), or /dev/null; nothing is left open when it cannot be started."""
    writer: int | None = None  # the parent's end of the stdin pipe
    readers: list[int] = []  # the parent's ends of stdout and stderr
    theirs: list[int] = []  # the child's ends, closed here once it has them
    try:
        if stdin_file is not None:
            stdin = stdin_file
        else:
            if stdin_pipe:
                stdin, writer = os.pipe2(os.O_CLOEXEC)
            else:
                stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            theirs.append(stdin)
        for _ in ("stdout", "stderr"):
            reader, end = os.pipe2(os.O_CLOEXEC)
            readers.append(reader)
            theirs.append(end)
        stdout, stderr = theirs[-2:]
        popen = None
        if POSIX_SPAWN is not None and preexec is None and "/" in argv[0]:
            pid = POSIX_SPAWN.start(argv, cwd, env, (stdin, stdout, stderr))
        else:
            popen = subprocess.Popen(  # RFC 3875 4.4: never the query string as arguments
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                cwd=cwd,
                env=env,
                close_fds=True,
                start_new_session=True,
                preexec_fn=preexec,
            )
            pid = popen.pid
    except BaseException:
        for fd in (*readers, *([] if writer is None else [writer])):
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return ScriptProcess(pid, writer, readers[0], readers[1], popen)
