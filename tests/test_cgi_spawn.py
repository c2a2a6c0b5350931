"""Starting a CGI script (``porch.handlers.cgi.spawn``): what the script gets, by ``posix_spawn``
and by the ``subprocess`` way alike, and what a failed start leaves behind (nothing)."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from porch.handlers.cgi import spawn
from porch.handlers.cgi.spawn import ScriptProcess, start_script

SH = "/bin/sh"


@pytest.fixture(params=["posix_spawn", "subprocess"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs both ways; the subprocess way is what platforms without the C functions get."""
    if request.param == "posix_spawn" and spawn.POSIX_SPAWN is None:
        pytest.skip("this C library has no posix_spawn_file_actions_addchdir_np / addclosefrom_np")
    if request.param == "subprocess":
        monkeypatch.setattr(spawn, "POSIX_SPAWN", None)
    yield request.param


def output(process: ScriptProcess) -> tuple[bytes, bytes, int]:
    """Stdout and stderr to their ends, then the exit status; the descriptors closed."""
    found = []
    for fd in (process.stdout, process.stderr):
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        os.close(fd)
        found.append(data)
    return found[0], found[1], process.wait()


def run(script: str, env: dict[str, str] | None = None, cwd: str = "/") -> tuple[bytes, bytes, int]:
    process = start_script([SH, "-c", script], cwd=cwd, env=env or {}, stdin_file=None, stdin_pipe=False)
    return output(process)


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_script_gets_its_output_pipes_environment_directory_and_exit_status(way: str, tmp_path: Path) -> None:
    out, err, status = run(
        "printf out; printf err >&2; pwd >&2; env | sort; exit 3", {"A": "1", "B": "two words"}, str(tmp_path)
    )
    assert out.startswith(b"out")
    lines = out[3:].decode().splitlines()
    # exactly the environment given (a shell adds PWD, and may add SHLVL or _), nothing of porch's
    assert {line for line in lines if not line.startswith(("PWD=", "SHLVL=", "_="))} == {"A=1", "B=two words"}
    assert err == f"err{tmp_path}\n".encode()
    assert status == 3


def test_the_script_leads_a_session_of_its_own(way: str) -> None:
    out, _, _ = run("echo $$; ps -o sid= -p $$ 2>/dev/null || sed 's/.*) //' /proc/$$/stat | cut -d' ' -f4")
    pid, session = out.split()[:2]
    assert pid == session, "its own session, so its own process group: killpg ends all it started"
    assert int(session) != os.getsid(0)


def test_no_other_descriptor_reaches_the_script(way: str) -> None:
    kept = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(kept, True)  # even an inheritable one
    try:
        out, _, _ = run(f"[ -e /proc/$$/fd/{kept} ] && echo open; [ -e /proc/$$/fd/2 ] && echo stderr")
    finally:
        os.close(kept)
    assert out == b"stderr\n"


def test_stdin_from_a_pipe_a_file_or_nothing(way: str) -> None:
    piped = start_script([SH, "-c", "cat"], cwd="/", env={}, stdin_file=None, stdin_pipe=True)
    assert piped.stdin is not None
    os.write(piped.stdin, b"body through the pipe")
    os.close(piped.stdin)
    assert output(piped)[0] == b"body through the pipe"
    with tempfile.TemporaryFile() as spool:
        spool.write(b"a spooled body")
        spool.seek(0)
        filed = start_script([SH, "-c", "cat"], cwd="/", env={}, stdin_file=spool.fileno(), stdin_pipe=False)
        assert filed.stdin is None
        assert output(filed)[0] == b"a spooled body"
    assert run("cat; echo end")[0] == b"end\n", "no body: /dev/null, an immediate end of file"


def test_signals_start_at_their_defaults_and_unblocked() -> None:
    """posix_spawn resets what the worker set: an ignored signal, a thread's blocked one."""
    if spawn.POSIX_SPAWN is None:
        pytest.skip("this C library has no posix_spawn_file_actions_addchdir_np / addclosefrom_np")
    found: list[bytes] = []

    def start() -> None:  # in a thread of its own: the blocked signal stays in that thread's mask
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        found.append(run("grep -E '^Sig(Blk|Ign)' /proc/self/status")[0])

    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        thread = threading.Thread(target=start)
        thread.start()
        thread.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert found[0].split() == [b"SigBlk:", b"0000000000000000", b"SigIgn:", b"0000000000000000"]


@pytest.mark.parametrize(
    ("argv", "cwd", "error"),
    [
        (["/nonexistent/script"], "/", FileNotFoundError),
        ([os.devnull], "/", PermissionError),  # not executable
        ([SH, "-c", "true"], "/nonexistent-directory", FileNotFoundError),
    ],
)
def test_a_failed_start_raises_and_leaves_nothing_open(
    way: str, argv: list[str], cwd: str, error: type[OSError]
) -> None:
    before = open_descriptors()
    for stdin_pipe in (False, True):
        with pytest.raises(error):
            start_script(argv, cwd=cwd, env={}, stdin_file=None, stdin_pipe=stdin_pipe)
    assert open_descriptors() == before


@pytest.mark.parametrize("env", [{"A=B": "1"}, {"A": "a\0b"}])
def test_an_environment_no_process_could_get_is_refused(way: str, env: dict[str, str]) -> None:
    before = open_descriptors()
    with pytest.raises(ValueError):
        start_script([SH, "-c", "true"], cwd="/", env=env, stdin_file=None, stdin_pipe=False)
    assert open_descriptors() == before


def test_the_fast_way_is_there_on_a_current_linux() -> None:
    """glibc 2.34 has every function the fast way needs: there, a missing one would be a bug."""
    version = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    if not sys.platform.startswith("linux") or not version or not version.startswith("glibc "):
        pytest.skip("not Linux with glibc")
    major, minor = (int(part) for part in version.split()[1].split(".")[:2])
    if (major, minor) < (2, 34):
        pytest.skip(f"{version}: older than 2.34, without posix_spawn_file_actions_addclosefrom_np")
    assert spawn.POSIX_SPAWN is not None
