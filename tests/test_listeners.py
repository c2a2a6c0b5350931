"""Listening sockets: Unix sockets (mode, owner, stale files), IPv6, SO_REUSEPORT, the backlog,
systemd socket activation and sd_notify -- real sockets and real server processes."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from certs import make_pki
from conftest import CONCURRENCY_MODELS, need_program
from porchtest import PorchServer, free_port

from porch.config.settings import Listener, TLSSettings
from porch.master.notify import notify, notify_ready, notify_reloading, watchdog_interval
from porch.net.listener import (
    BoundListener,
    ListenError,
    bind,
    bind_all,
    dropped,
    inherited_sockets,
    matches,
    rebind,
)

TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent
ECHO = "core_handlers:EchoHandler"
ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
ARBITER = REPO / "server" / "master" / "arbiter.py"


def arbiter_calls(name: str) -> bool:
    """Whether the master process already uses ``name`` (it is written alongside these tests)."""
    return ARBITER.is_file() and f"{name}(" in ARBITER.read_text(encoding="utf-8")


def echo(listen: list[Any], **extra: Any) -> dict[str, Any]:
    return {"listen": listen, "mounts": [{"path": "/", "type": ECHO}], **extra}


def porch_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "porch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **ENV},
    )


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "porch.yaml"
    config = {**config, "log": {"error": str(directory / "error.log"), "access": False}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def curl_unix(path: Path, target: str = "/") -> dict[str, Any]:
    result = subprocess.run(
        [need_program("curl"), "-sS", "--max-time", "5", "--unix-socket", str(path), f"http://localhost{target}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")


# --- Unix sockets ----------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", CONCURRENCY_MODELS)
def test_a_unix_socket_serves_curl_with_its_mode(porch: Any, tmp_path: Path, concurrency: str) -> None:
    path = tmp_path / "porch.sock"
    server = porch(echo([{"address": f"unix:{path}", "mode": "0660"}], concurrency=concurrency), env=ENV)
    assert server.addresses == [f"unix:{path}"]
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    document = curl_unix(path, "/over/unix?x=1")
    assert (document["path"], document["query"], document["client"], document["scheme"]) == (
        "/over/unix",
        "x=1",
        "",
        "http",
    )
    assert server.stop() == 0
    assert not path.exists(), "the socket file outlived the server"


def test_a_stale_socket_file_is_replaced(porch: Any, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # closed without unlink: what a killed server leaves behind
    server = porch(echo([f"unix:{path}"]), env=ENV)
    assert curl_unix(path)["method"] == "GET"
    assert "removing the stale socket" in server.error_text()


def test_a_socket_another_process_listens_on_is_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        result = porch_run("-c", str(write_config(tmp_path, echo([f"unix:{path}"]))), cwd=tmp_path)
        assert result.returncode == 1
        assert f"cannot listen on unix:{path}: another process is listening on {path}" in result.stderr
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # still the test's socket


def test_a_regular_file_at_the_socket_path_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me\n")
    result = porch_run("-c", str(write_config(tmp_path, echo([f"unix:{path}"]))), cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on unix:{path}: {path} exists and is not a socket" in result.stderr
    assert path.read_text() == "keep me\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away takes root")
def test_owner_and_group_are_applied(porch: Any, tmp_path: Path) -> None:
    user = pwd.getpwnam("nobody")
    group = grp.getgrgid(user.pw_gid).gr_name
    path = tmp_path / "owned.sock"
    porch(echo([{"address": f"unix:{path}", "owner": "nobody", "group": group, "mode": "0600"}]), env=ENV)
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (user.pw_uid, user.pw_gid, 0o600)
    assert curl_unix(path)["method"] == "GET"


def test_the_socket_file_is_removed_only_by_the_process_that_bound_it(tmp_path: Path) -> None:
    """Workers inherit the listener and close it when they stop; the file must stay."""
    path = tmp_path / "shared.sock"
    listener = bind(Listener(f"unix:{path}"))
    pid = os.fork()
    if pid == 0:
        listener.close()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert path.exists()
    listener.close()
    assert not path.exists()


def test_a_newer_socket_file_at_the_path_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "taken-over.sock"
    old = bind(Listener(f"unix:{path}"))
    path.unlink()
    new = bind(Listener(f"unix:{path}"))  # another server took the path meanwhile
    old.close()
    assert path.exists()
    new.close()
    assert not path.exists()


@pytest.mark.parametrize(
    ("listener", "message"),
    [
        ({"address": "127.0.0.1:0", "mode": "0600"}, "listen[0].mode: applies only to unix: listeners"),
        ({"address": "unix:x.sock", "reuse_port": True}, "listen[0].reuse_port: applies only to TCP listeners"),
        ({"address": "127.0.0.1:0", "v6only": False}, "listen[0].v6only: applies only to [v6] addresses"),
        ({"address": "unix:x.sock", "mode": "660x"}, 'listen[0].mode: expected permission bits in octal like "0660"'),
        ({"address": "unix:x.sock", "owner": "no-such-user-here"}, "listen[0].owner: no user 'no-such-user-here'"),
        ({"address": "127.0.0.1:0", "backlog": 0}, "listen[0].backlog: must be greater than 0"),
        (
            {"address": "127.0.0.1:0", "tls": {"cert": "c.pem", "key": "c.pem", "verify_client": "required"}},
            "listen[0].tls.verify_client: needs 'ca'",
        ),
    ],
)
def test_listener_options_are_checked(tmp_path: Path, listener: dict[str, Any], message: str) -> None:
    (tmp_path / "c.pem").write_text("")
    result = porch_run("check", "-c", str(write_config(tmp_path, echo([listener]))), cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr


# --- TCP options -----------------------------------------------------------------------------


@needs_ipv6
def test_an_ipv6_listener(porch: Any) -> None:
    server = porch(echo(["[::1]:0"]), env=ENV)
    assert server.address.startswith("[::1]:")
    document = requests.get(f"http://{server.address}/six", timeout=5).json()
    assert (document["path"], document["client"][0]) == ("/six", "::1")


@needs_ipv6
def test_v6only_false_accepts_ipv4_on_the_ipv6_wildcard(porch: Any) -> None:
    wildcard = {"allow_root": True} if os.geteuid() == 0 else {}  # root serving every interface must say so
    dual = porch(echo([{"address": "[::]:0", "v6only": False}], **wildcard), env=ENV)
    assert requests.get(f"http://127.0.0.1:{dual.port}/", timeout=5).json()["client"][0] == "::ffff:127.0.0.1"
    only = porch(echo(["[::]:0"], **wildcard), env=ENV)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{only.port}/", timeout=5)
    assert requests.get(f"http://[::1]:{only.port}/", timeout=5).status_code == 200


def test_reuse_port_lets_two_servers_share_an_address(porch: Any) -> None:
    port = free_port()
    shared = {"address": f"127.0.0.1:{port}", "reuse_port": True}
    first, second = porch(echo([shared]), env=ENV), porch(echo([shared]), env=ENV)
    assert first.addresses == second.addresses == [f"127.0.0.1:{port}"]
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    first.stop()
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200  # the second one
    assert second.proc.poll() is None


def test_without_reuse_port_the_second_server_fails(porch: Any, tmp_path: Path) -> None:
    first = porch(echo(["127.0.0.1:0"]), env=ENV)
    assert requests.get(f"http://{first.address}/", timeout=5).status_code == 200
    result = porch_run("-c", str(write_config(tmp_path, echo([first.address]))), cwd=tmp_path)
    assert result.returncode == 1
    assert f"listen[0]: {first.address} is in use by another process" in result.stderr


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) shows the backlog of a listening socket")
def test_the_backlog_is_passed_to_listen() -> None:
    listener = bind(Listener("127.0.0.1:0", backlog=7))
    try:
        shown = subprocess.run(
            ["ss", "-Hltn", f"sport = :{listener.address[1]}"], capture_output=True, text=True, check=True
        ).stdout
        assert shown.split()[2] == "7", shown  # Send-Q of a listening socket is its backlog
    finally:
        listener.close()


# --- systemd socket activation -----------------------------------------------------------------


def start_activated(config: dict[str, Any], directory: Path, sock: socket.socket, listening: int) -> PorchServer:
    """Start porch as systemd would: ``sock`` as fd 3, LISTEN_FDS=1, LISTEN_PID its own pid."""
    directory.mkdir(parents=True, exist_ok=True)
    access_log, error_log = directory / "access.log", directory / "error.log"
    config = {**config, "log": {"access": str(access_log), "error": str(error_log), "level": "debug"}}
    config_path = directory / "porch.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    fd = sock.fileno()
    script = 'LISTEN_PID=$$ exec "$0" -m porch -c "$1"'  # exec keeps the pid the variable names
    with open(directory / "stdout.log", "wb") as stdout, open(directory / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            ["sh", "-c", script, sys.executable, str(config_path)],
            cwd=directory,
            env={**os.environ, **ENV, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
            stdout=stdout,
            stderr=stderr,
            pass_fds=(3,),
            preexec_fn=lambda: os.dup2(fd, 3),
        )
    server = PorchServer(proc, config_path, access_log, error_log)
    server.addresses = server.wait_listening(listening)
    return server


@pytest.fixture
def activation_socket() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


needs_activation = pytest.mark.skipif(
    not arbiter_calls("bind_all"), reason="the master does not bind with bind_all() yet"
)


@needs_activation
@pytest.mark.parametrize("concurrency", CONCURRENCY_MODELS)
def test_a_configured_address_is_served_on_the_inherited_socket(
    activation_socket: socket.socket, tmp_path: Path, concurrency: str
) -> None:
    address = "127.0.0.1:%d" % activation_socket.getsockname()[1]
    # The test still holds the socket, so binding the address anew would fail: serving proves adoption.
    server = start_activated(echo([address], concurrency=concurrency), tmp_path, activation_socket, 1)
    try:
        assert server.addresses == [address]
        assert f"inherited fd 3 (web): a socket bound to {address}" in server.error_text()
        activation_socket.close()
        assert requests.get(f"http://{address}/activated", timeout=5).json()["path"] == "/activated"
    finally:
        server.stop()


@needs_activation
def test_an_inherited_socket_no_listener_names_is_served_too(activation_socket: socket.socket, tmp_path: Path) -> None:
    inherited = "127.0.0.1:%d" % activation_socket.getsockname()[1]
    server = start_activated(echo(["127.0.0.1:0"]), tmp_path, activation_socket, 2)
    try:
        assert server.addresses[1] == inherited and server.addresses[0] != inherited
        assert "serving the inherited socket %s as plain HTTP" % inherited in server.error_text()
        for address in server.addresses:
            assert requests.get(f"http://{address}/", timeout=5).status_code == 200
    finally:
        server.stop()


@needs_activation
def test_tls_settings_apply_to_an_inherited_socket(activation_socket: socket.socket, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    port = activation_socket.getsockname()[1]
    listener = {"address": f"127.0.0.1:{port}", "tls": {"cert": str(pki.server_cert), "key": str(pki.server_key)}}
    server = start_activated(echo([listener]), tmp_path / "run", activation_socket, 1)
    try:
        response = requests.get(f"https://localhost:{port}/", verify=str(pki.server_cert), timeout=5)
        assert response.json()["scheme"] == "https"
    finally:
        server.stop()


def test_inherited_sockets_come_from_the_environment_which_is_then_cleared(activation_socket: socket.socket) -> None:
    """In a child process, as systemd starts one: fd 3, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES."""
    code = (
        "import json, os; from porch.net.listener import inherited_sockets, socket_address; "
        "found = inherited_sockets(); "
        "print(json.dumps([[s.fileno(), list(socket_address(s))] for s in found] + "
        "[[k for k in os.environ if k.startswith('LISTEN_')]]))"
    )
    fd = activation_socket.fileno()
    output = subprocess.run(
        ["sh", "-c", 'LISTEN_PID=$$ exec "$0" -c "$1"', sys.executable, code],
        env={**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
        pass_fds=(3,),
        preexec_fn=lambda: os.dup2(fd, 3),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(output) == [[3, ["127.0.0.1", activation_socket.getsockname()[1]]], []]


def test_activation_variables_for_another_process_are_dropped() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web", "OTHER": "x"}
    assert inherited_sockets(environ) == []
    assert environ == {"OTHER": "x"}
    assert inherited_sockets({}) == []


def test_matching_an_inherited_socket_to_a_listener(activation_socket: socket.socket, tmp_path: Path) -> None:
    port = activation_socket.getsockname()[1]
    assert matches(Listener(f"127.0.0.1:{port}"), activation_socket)
    assert matches(Listener(f"localhost:{port}"), activation_socket)  # a host name is resolved
    assert not matches(Listener(f"127.0.0.2:{port}"), activation_socket)
    assert not matches(Listener("127.0.0.1:0"), activation_socket)
    assert not matches(Listener(f"unix:{tmp_path}/x.sock"), activation_socket)
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tmp_path / "x.sock"))
        assert matches(Listener(f"unix:{tmp_path}/x.sock"), unix)
        assert not matches(Listener(f"unix:{tmp_path}/y.sock"), unix)


def test_bind_all_adopts_matching_sockets_and_serves_the_rest(tmp_path: Path) -> None:
    named, extra = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    wanted = (Listener("127.0.0.1:%d" % named.getsockname()[1]), Listener(f"unix:{tmp_path}/porch.sock"))
    bound = bind_all(wanted, inherited=[extra, named])
    try:
        assert [b.sock for b in bound[:1]] == [named] and bound[2].sock is extra
        assert [b.inherited for b in bound] == [True, False, True]
        assert [b.config for b in bound[:2]] == list(wanted)
        assert bound[2].config == Listener("127.0.0.1:%d" % extra.getsockname()[1])
    finally:
        for listener in bound:
            listener.close()


# --- reloading -----------------------------------------------------------------------------------


def test_rebind_keeps_sockets_renews_tls_binds_new_and_leaves_dropped_to_the_caller(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    kept, gone = Listener("127.0.0.1:0"), Listener(f"unix:{tmp_path}/old.sock")
    current = bind_all((kept, gone), inherited=[])
    kept_sock = current[0].sock
    with_tls = Listener("127.0.0.1:0", TLSSettings(pki.server_cert, pki.server_key))
    added = Listener(f"unix:{tmp_path}/new.sock")
    result = rebind(current, (with_tls, added))
    try:
        assert result[0].sock is kept_sock and result[0].address == current[0].address
        assert (result[0].scheme, result[0].tls is not None, result[0].config) == ("https", True, with_tls)
        assert result[1].config == added and (tmp_path / "new.sock").exists()
        # Until the reload is adopted the dropped listener still serves (an abandoned reload
        # keeps it); then the caller closes it.
        assert current[1].sock.fileno() != -1 and (tmp_path / "old.sock").exists()
        assert dropped(current, result) == [current[1]]
    finally:
        for listener in (*result, current[1]):
            listener.close()
    assert not (tmp_path / "old.sock").exists()


def test_a_failed_rebind_changes_nothing(tmp_path: Path) -> None:
    current = bind_all((Listener("127.0.0.1:0"),), inherited=[])
    (tmp_path / "file").write_text("")
    with pytest.raises(ListenError, match=f"cannot listen on unix:{tmp_path}/file: .* exists and is not a socket"):
        rebind(
            current, (Listener("127.0.0.1:0"), Listener(f"unix:{tmp_path}/new.sock"), Listener(f"unix:{tmp_path}/file"))
        )
    assert current[0].sock.fileno() != -1
    assert not (tmp_path / "new.sock").exists(), "a socket bound before the failure was left behind"
    current[0].close()


def test_bound_listener_names(tmp_path: Path) -> None:
    listeners = [bind(Listener("127.0.0.1:0")), bind(Listener(f"unix:{tmp_path}/n.sock"))]
    if ipv6_loopback():
        listeners.append(bind(Listener("[::1]:0")))
    try:
        names = [listener.name for listener in listeners]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", names[0]) and names[1] == f"unix:{tmp_path}/n.sock"
        assert names[2:] == [] or re.fullmatch(r"\[::1\]:\d+", names[2])
        assert all(isinstance(listener, BoundListener) and listener.scheme == "http" for listener in listeners)
    finally:
        for listener in listeners:
            listener.close()


# --- sd_notify -----------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    yield sock, str(tmp_path / "notify.sock")
    sock.close()


def test_notify_sends_one_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify("STATUS=warming up", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"STATUS=warming up"
    assert notify_ready(["127.0.0.1:8000", "unix:/run/p.sock"], {"NOTIFY_SOCKET": path})
    assert (
        sock.recv(4096)
        == (f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving on 127.0.0.1:8000, unix:/run/p.sock").encode()
    )
    assert notify_reloading({"NOTIFY_SOCKET": path})
    assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", sock.recv(4096))


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"porch-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": f"@{name}"})
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_without_a_socket_does_nothing(tmp_path: Path) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "relative/path"})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})


def test_watchdog_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None and watchdog_interval({"WATCHDOG_USEC": "0"}) is None


@pytest.mark.skipif(
    not (arbiter_calls("notify") or arbiter_calls("notify_ready")),
    reason="the master does not notify the service manager yet",
)
def test_a_started_server_reports_ready(porch: Any, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    porch(echo(["127.0.0.1:0"]), env={**ENV, "NOTIFY_SOCKET": path})
    messages: list[bytes] = []
    deadline = time.monotonic() + 5
    while not any(b"READY=1" in message.split(b"\n") for message in messages) and time.monotonic() < deadline:
        messages.append(sock.recv(4096))
    assert any(b"READY=1" in message.split(b"\n") for message in messages), messages
