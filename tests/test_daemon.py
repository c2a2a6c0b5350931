"""Daemon mode: the pidfile and its lock, detaching, privileges, the root policy, the settings.

All of it is tested in real processes (forked children and small scripts), because a lock, a
session or a uid is only real across processes.  ``test_daemon_cli.py`` tests the control
commands; ``test_daemon_server.py`` runs the whole thing against a real daemonized porch.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from porchtest import wait_until

from porch.config.load import config_from_mapping, load_config
from porch.config.settings import ConfigError
from porch.master.daemon import (
    AlreadyRunning,
    DaemonError,
    Pidfile,
    check_privileges,
    check_root,
    chown_logs,
    drop_privileges,
    process_gone,
    read_pid,
    root_warning,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody")
WAIT_SECONDS = 10.0


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def in_child(function: Callable[[], Any]) -> dict[str, Any]:
    """Run ``function`` in a forked child; {"value": ...} or {"error": "Type: message"}."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                result: dict[str, Any] = {"value": function()}
            except Exception as error:
                result = {"error": f"{type(error).__name__}: {error}"}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data)


# --- the pidfile ----------------------------------------------------------------------------


def test_acquire_writes_our_pid_and_release_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "porch.pid"
    held = Pidfile(path)
    held.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    assert read_pid(path) == os.getpid()
    assert not [p for p in tmp_path.iterdir() if p.name != "porch.pid"], "no temporary file is left"
    held.release()
    assert not path.exists()
    assert read_pid(path) is None


def test_a_second_porch_is_refused_with_pid_and_path(tmp_path: Path) -> None:
    path = tmp_path / "porch.pid"
    held = Pidfile(path)
    held.acquire()
    try:
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from porch.master.daemon import Pidfile\nPidfile(sys.argv[1]).acquire()",
                str(path),
            ],
            capture_output=True,
            text=True,
        )
        assert other.returncode != 0
        assert f"porch is already running (pid {os.getpid()}, pidfile {path})" in other.stderr
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            Pidfile(path).acquire()  # a separate open file: flock refuses it in this process too
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        held.release()


@pytest.mark.parametrize("content", ["dead", "live-unlocked", "garbage", "empty"])
def test_a_stale_pidfile_is_replaced(tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture) -> None:
    """Stale: nobody holds the lock -- whether or not the pid in it is alive (pid reuse)."""
    path = tmp_path / "porch.pid"
    text = {"dead": f"{dead_pid()}\n", "live-unlocked": f"{os.getppid()}\n", "garbage": "porch\n", "empty": ""}
    path.write_text(text[content])
    assert read_pid(path) is None
    held = Pidfile(path)
    with caplog.at_level(logging.INFO, logger="porch.master.daemon"):
        held.acquire()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
        assert read_pid(path) == os.getpid()
        assert any("replacing stale pidfile" in record.getMessage() for record in caplog.records)
    finally:
        held.release()


def test_release_keeps_a_pidfile_that_names_someone_else(tmp_path: Path) -> None:
    path = tmp_path / "porch.pid"
    held = Pidfile(path)
    held.acquire()
    path.write_text("12345\n")  # the inode is the same; its content is no longer ours
    held.release()
    assert path.read_text() == "12345\n"


def test_a_symlink_or_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    link = tmp_path / "porch.pid"
    link.symlink_to(target)
    with pytest.raises(DaemonError, match="symbolic link"):
        Pidfile(link).acquire()
    assert target.read_text() == "precious\n"
    with pytest.raises(DaemonError, match=r"cannot write pidfile .*/nowhere/porch.pid: No such file"):
        Pidfile(tmp_path / "nowhere" / "porch.pid").acquire()


def test_the_lock_survives_a_fork_and_update_names_the_child(tmp_path: Path) -> None:
    """What daemonize relies on: the command locks, the daemon inherits the lock and the file."""
    path = tmp_path / "porch.pid"
    held = Pidfile(path)
    held.acquire()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            held.update()
            os.write(write_end, b"updated")
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        assert os.read(read_end, 16) == b"updated"
        held.forget()  # as the command's process does when it exits
        assert path.read_text() == f"{child}\n"
        assert read_pid(path) == child
        with pytest.raises(AlreadyRunning, match=f"pid {child}"):
            Pidfile(path).acquire()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    assert read_pid(path) is None, "the lock ends with the process"


def test_readers_never_see_a_half_written_pidfile(tmp_path: Path) -> None:
    path = tmp_path / "porch.pid"
    held = Pidfile(path)
    held.acquire()
    done = threading.Event()

    def rewrite() -> None:
        for _ in range(300):
            held.update()
        done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    seen = set()
    while not done.is_set():
        seen.add(path.read_text())
    writer.join()
    held.release()
    assert seen <= {f"{os.getpid()}\n"}


RACER = r"""
import os, sys, time
from porch.master.daemon import AlreadyRunning, Pidfile
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    Pidfile(sys.argv[1]).acquire()
except AlreadyRunning:
    print("lost")
else:
    print("won", flush=True)
    time.sleep(1.0)
"""


@pytest.mark.parametrize("existing", ["none", "stale"])
def test_porches_starting_together_get_exactly_one_pidfile(tmp_path: Path, existing: str) -> None:
    path, go = tmp_path / "porch.pid", tmp_path / "go"
    if existing == "stale":
        path.write_text(f"{dead_pid()}\n")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(path), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    time.sleep(0.3)  # let the interpreters start, so that they really race
    go.touch()
    outcomes = [racer.communicate(timeout=30) for racer in racers]
    assert sorted(out.strip() for out, _ in outcomes) == ["lost"] * 7 + ["won"], outcomes


def test_read_pid_does_not_disturb_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "porch.pid"
    held = Pidfile(path)
    held.acquire()
    try:
        for _ in range(50):
            assert read_pid(path) == os.getpid()
        with pytest.raises(AlreadyRunning):
            Pidfile(path).acquire()
    finally:
        held.release()


def test_a_zombie_counts_as_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_until(lambda: process_gone(proc.pid), "the child to exit")
    os.kill(proc.pid, 0)  # not reaped yet: the pid still exists, as a zombie
    proc.wait()
    assert process_gone(os.getpid()) is False


# --- detaching ------------------------------------------------------------------------------

DAEMON = r"""
import os, sys, time
from porch.master.daemon import Pidfile, daemonize
pidfile, report, mode = sys.argv[1:4]
held = Pidfile(pidfile)
held.acquire()
startup = daemonize()
held.update()
if mode == "worker":  # a worker that outlives a master dying before it reports
    worker = os.fork()
    if worker == 0:
        startup.forget()
        held.forget()
        time.sleep(30)
        os._exit(0)
    open(report, "w").write(str(worker))
    os._exit(3)
time.sleep(0.5)  # binding, starting workers...
fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)]
with open(report, "w") as out:
    out.write(f"{os.getpid()} {os.getsid(0)} {os.getppid()} {os.getcwd()} {' '.join(fds)}")
if mode == "ready":
    startup.ready()
elif mode == "failed":
    startup.failed("cannot listen on 127.0.0.1:80: Permission denied")
else:
    os._exit(3)
held.release()
"""


def start_daemon(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", DAEMON, str(tmp_path / "d.pid"), str(tmp_path / "report"), mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    return result, time.monotonic() - started


def test_daemonize_returns_once_ready_and_detaches(tmp_path: Path) -> None:
    result, elapsed = start_daemon(tmp_path, "ready")
    assert result.returncode == 0, result.stderr
    assert elapsed >= 0.5, "the command waited for ready()"
    pid, sid, ppid, cwd, *fds = (tmp_path / "report").read_text().split()  # written before ready()
    assert result.stdout == f"started (pid {pid})\n"
    assert int(pid) != int(sid), "not a session leader: it can never get a controlling terminal"
    assert int(sid) != os.getsid(0), "in a new session"
    assert int(ppid) != os.getpid()
    assert cwd == "/"
    assert fds == ["/dev/null"] * 3


def test_daemonize_reports_a_failure_and_exits_1(tmp_path: Path) -> None:
    result, _ = start_daemon(tmp_path, "failed")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "porch: cannot listen on 127.0.0.1:80: Permission denied\n"


def test_a_daemon_dying_before_ready_makes_the_command_fail(tmp_path: Path) -> None:
    result, _ = start_daemon(tmp_path, "die")
    assert result.returncode == 1
    assert "exited during start-up" in result.stderr
    # The pipe may close a moment before the pidfile as the daemon's descriptors are closed.
    wait_until(lambda: read_pid(tmp_path / "d.pid") is None, "the lock to go")


def test_workers_do_not_keep_the_command_waiting(tmp_path: Path) -> None:
    """A worker closes its copy of the pipe (forget), so a master dying is reported at once."""
    result, elapsed = start_daemon(tmp_path, "worker")
    worker = int(
        wait_until(lambda: (tmp_path / "report").exists() and (tmp_path / "report").read_text(), "the worker's pid")
    )
    try:
        assert result.returncode == 1 and "exited during start-up" in result.stderr
        assert elapsed < 10
        wait_until(lambda: read_pid(tmp_path / "d.pid") is None, "the lock to go: the worker let go too")
    finally:
        os.kill(worker, signal.SIGKILL)


# --- privileges and the root policy -----------------------------------------------------------


def config(tmp_path: Path, **settings: Any) -> Any:
    return config_from_mapping({"mounts": [], **settings}, source="test", base_dir=tmp_path)


@needs_root
def test_drop_privileges_to_nobody_cannot_go_back() -> None:
    def drop() -> dict[str, Any]:
        drop_privileges("nobody", None)
        try:
            os.setuid(0)
            regained = True
        except PermissionError:
            regained = False
        return {
            "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
            "groups": os.getgroups(),
            "regained": regained,
        }

    result = in_child(drop)["value"]
    assert result["ids"] == [NOBODY.pw_uid, NOBODY.pw_uid, NOBODY.pw_gid, NOBODY.pw_gid]
    assert 0 not in result["groups"], "root's supplementary groups are gone"
    assert result["regained"] is False


@needs_root
def test_drop_privileges_with_a_group_and_numeric_ids() -> None:
    def drop() -> list[Any]:
        drop_privileges(str(NOBODY.pw_uid), "33")
        return [os.getuid(), os.getgid(), os.getgroups()]

    uid, gid, groups = in_child(drop)["value"]
    assert (uid, gid) == (NOBODY.pw_uid, 33) and 0 not in groups


def test_drop_privileges_without_user_or_group_changes_nothing() -> None:
    before = [os.getuid(), os.getgid(), os.getgroups()]
    drop_privileges(None, None)
    assert [os.getuid(), os.getgid(), os.getgroups()] == before


def test_unknown_users_and_groups_are_refused() -> None:
    with pytest.raises(DaemonError, match="no user named 'no-such-user'"):
        drop_privileges("no-such-user", None)
    with pytest.raises(DaemonError, match="no group named 'no-such-group'"):
        drop_privileges(None, "no-such-group")
    with pytest.raises(DaemonError, match="no primary group"):
        drop_privileges("4242424", None)


@needs_root
def test_an_unprivileged_porch_cannot_switch_users(tmp_path: Path) -> None:
    def try_switch() -> list[Any]:
        drop_privileges("nobody", None)
        drop_privileges("nobody", None)  # the user it already is: nothing to do
        problem = check_privileges(config(tmp_path, user="root"))
        try:
            drop_privileges("root", None)
        except DaemonError as error:
            return [problem, str(error)]
        return [problem, "regained root"]

    expected = "switching to user root needs porch to be started as root (it runs as nobody)"
    assert in_child(try_switch)["value"] == [expected, expected]


@needs_root
@pytest.mark.parametrize("listen", [["0.0.0.0:8080"], ["127.0.0.1:8080", "[::]:8080"], ["example.org:80"], []])
def test_root_is_refused_on_network_addresses(tmp_path: Path, listen: list[str]) -> None:
    problem = check_root(config(tmp_path, listen=listen))
    assert problem is not None and problem.startswith("refusing to serve ")
    assert "set `user:`" in problem and "allow_root: true" in problem
    assert check_privileges(config(tmp_path, listen=listen)) == problem
    assert root_warning(config(tmp_path, listen=listen)) is None


LOOPBACK_ONLY = [["127.0.0.1:8080"], ["[::1]:8080", "localhost:8081"], ["127.8.9.10:80"], ["unix:/tmp/porch-test.sock"]]
# Mounts that run no code of the config's own: as root on loopback, nothing to warn about.
CODELESS_MOUNTS = [
    {"path": "/", "type": "static", "root": ".", "listing": True},
    {"path": "/old", "type": "redirect", "to": "/"},
    {"path": "/server-status", "type": "status"},
    {"path": "/metrics", "type": "metrics"},
    {"path": "/healthz", "type": "health"},
    {"path": "/readyz", "type": "ready"},
]
CODE_MOUNTS = {
    "cgi": {"path": "/cgi-bin", "type": "cgi", "root": "."},
    "wsgi": {"path": "/app", "type": "wsgi", "app": "some_app:application"},
    "xmlrpc": {"path": "/RPC2", "type": "xmlrpc", "functions": {"add": "some_module:add"}},
}


@needs_root
@pytest.mark.parametrize("listen", LOOPBACK_ONLY)
def test_root_on_loopback_serving_files_only_is_silent(tmp_path: Path, listen: list[str]) -> None:
    """``porch serve DIR`` as root: local clients could read the files themselves."""
    assert check_root(config(tmp_path, listen=listen, mounts=CODELESS_MOUNTS)) is None
    assert root_warning(config(tmp_path, listen=listen, mounts=CODELESS_MOUNTS)) is None
    assert root_warning(config(tmp_path, listen=listen)) is None, "no mounts at all"


@needs_root
@pytest.mark.parametrize("listen", LOOPBACK_ONLY)
@pytest.mark.parametrize("kind", sorted(CODE_MOUNTS))
def test_root_on_loopback_running_code_is_a_warning(tmp_path: Path, listen: list[str], kind: str) -> None:
    mounts = [*CODELESS_MOUNTS, CODE_MOUNTS[kind]]
    assert check_root(config(tmp_path, listen=listen, mounts=mounts)) is None
    warning = root_warning(config(tmp_path, listen=listen, mounts=mounts))
    assert warning is not None and "loopback" in warning and "set `user:`" in warning
    assert f"{CODE_MOUNTS[kind]['path']} {kind}" in warning


@needs_root
def test_root_beyond_loopback_warns_even_serving_files_only(tmp_path: Path) -> None:
    """``allow_root`` lets root serve the network: a worker's bug is then anyone's."""
    for listen in (["0.0.0.0:8080"], ["127.0.0.1:8080", "[::]:8080"]):
        served = config(tmp_path, listen=listen, mounts=CODELESS_MOUNTS[:1], allow_root=True)
        assert "allow_root is true" in (root_warning(served) or "")
    inherited = config(tmp_path, listen=[], mounts=CODELESS_MOUNTS[:1], allow_root=True)
    assert "allow_root is true" in (root_warning(inherited) or ""), "inherited sockets may be public"


@needs_root
def test_user_or_allow_root_lifts_the_refusal(tmp_path: Path) -> None:
    public = ["0.0.0.0:8080"]
    assert check_root(config(tmp_path, listen=public, user="nobody")) is None
    assert root_warning(config(tmp_path, listen=public, user="nobody")) is None
    assert check_root(config(tmp_path, listen=public, user="root")) is not None, "root is not a drop"
    assert check_root(config(tmp_path, listen=public, allow_root=True)) is None
    assert "allow_root is true" in (root_warning(config(tmp_path, listen=public, allow_root=True)) or "")


@needs_root
def test_the_root_policy_only_concerns_root(tmp_path: Path) -> None:
    def as_nobody() -> list[Any]:
        drop_privileges("nobody", None)
        public = config(tmp_path, listen=["0.0.0.0:8080"])
        return [check_root(public), root_warning(public), check_privileges(public)]

    assert in_child(as_nobody)["value"] == [None, None, None]


@needs_root
def test_the_log_files_are_handed_to_the_workers_user(tmp_path: Path) -> None:
    """Workers open (and on USR1 reopen) their logs after dropping root: they must own them."""
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    access.touch()
    error.touch()
    chown_logs(config(tmp_path, log={"access": str(access), "error": str(error)}))
    assert (access.stat().st_uid, error.stat().st_uid) == (0, 0), "no user: nothing to hand over"
    chown_logs(config(tmp_path, user="nobody", log={"access": str(access), "error": str(error)}))
    for path in (access, error):
        assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    chown_logs(config(tmp_path, user="nobody", log={"access": "-", "error": str(tmp_path / "not-yet.log")}))


# --- the settings ---------------------------------------------------------------------------


def test_daemon_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "porch.yaml"
    path.write_text("pidfile: run/porch.pid\nuser: nobody\ngroup: '65534'\nallow_root: false\numask: 027\nmounts: []\n")
    loaded = load_config(path)
    assert loaded.pidfile == tmp_path / "run" / "porch.pid"
    assert (loaded.user, loaded.group, loaded.allow_root, loaded.umask) == ("nobody", "65534", False, "027")
    path.write_text("mounts: []\n")
    defaults = load_config(path)
    assert (defaults.pidfile, defaults.user, defaults.group, defaults.allow_root, defaults.umask) == (
        None,
        None,
        None,
        False,
        None,
    )


def test_bad_daemon_settings_name_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "porch.yaml"
    path.write_text("mounts: []\numask: 0o27\nuser: no-such-user\ngroup: no-such-group\nallow_root: yes please\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "porch.yaml:2: umask: expected an octal mask from 000 to 777 like 027, got '0o27'" in text
    assert "porch.yaml:3: user: no user 'no-such-user'" in text
    assert "porch.yaml:4: group: no group 'no-such-group'" in text
    assert "porch.yaml:5: allow_root: expected true or false" in text
