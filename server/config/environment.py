"""What a valid config still needs from the machine: logs, the pidfile's and sockets' directories, TLS, ports.

A config can pass every rule of the schema and still stop ``porch -c`` at start-up: the log
directory is missing, the certificate does not match its key, the port is taken or below 1024.
``environment_problems`` finds these without starting anything, so that ``porch check`` reports
them with the schema's problems and the serving command says them in one line each instead of
a traceback.  Each problem names the key that set the value (``Locator``), as a schema problem
does.  Nothing here imports the server's layers: the probes use the standard library only.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import stat
from collections.abc import Callable
from pathlib import Path

from porch.config.load import COMMAND_LINE, OVERRIDABLE
from porch.config.settings import Certificate, Config, ConfigProblem, Listener, group_entry, user_entry
from porch.config.yaml_nodes import Node, read_yaml

PRIVILEGED_PORTS = 1024  # ports below this need root or CAP_NET_BIND_SERVICE
CAP_NET_BIND_SERVICE = 10  # its bit in /proc/self/status CapEff
PRIVILEGE_HINT = (
    "run as root and set `user:`, or grant CAP_NET_BIND_SERVICE "
    "(setcap 'cap_net_bind_service=+ep' on the python binary)"
)

Locator = Callable[[str], tuple[str, int | None, str]]  # dotted key -> (file, line, key as shown)


def locator(path: str | None, display: str, overrides: frozenset[str] = frozenset()) -> Locator:
    """Where a setting was written: its line in the file, or the option that replaced it."""
    node: Node | None = None
    if path is not None:
        try:
            node, _ = read_yaml(Path(path).read_text(encoding="utf-8"), display)
        except (OSError, UnicodeDecodeError):
            node = None
    lines = node.key_paths() if node is not None and node.kind == "mapping" else {}

    def where(key: str) -> tuple[str, int | None, str]:
        if key.split("[", 1)[0] in overrides:
            return COMMAND_LINE, None, OVERRIDABLE[key.split("[", 1)[0]]
        return display, lines.get(key), key

    return where


def environment_problems(
    config: Config, where: Locator, *, listen_keys: list[str] | None = None, running_pid: int | None = None
) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """(problems, warnings) of the machine for ``config``: logs, pidfile, TLS files, ports, unix sockets.

    ``listen_keys`` names each listener's key (default ``listen[i]``).  A port in use is only a
    warning while ``running_pid`` (the porch of this pidfile) runs: it is that server's own port.
    """
    problems: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []

    def add(into: list[ConfigProblem], key: str, message: str) -> None:
        file, line, shown = where(key)
        into.append(ConfigProblem(file, line, shown, message))

    user = worker_ids(config)
    for key in ("log.access", "log.error"):
        target = getattr(config.log, key.split(".")[1])
        if isinstance(target, str) and target != "-":
            for message in file_problems(Path(target), "log file"):
                add(problems, key, message)
            if user is not None and (unwritable := user_problem(Path(target), user, config.user or "")):
                add(warnings, key, unwritable)
    if config.pidfile is not None:
        directory = config.pidfile.parent
        if not directory.is_dir():
            add(problems, "pidfile", f"directory {directory} does not exist")
        elif not os.access(directory, os.W_OK | os.X_OK):
            add(problems, "pidfile", f"directory {directory} is not writable: the pidfile cannot be written there")
    keys = listen_keys or [f"listen[{index}]" for index in range(len(config.listen))]
    inherited = "LISTEN_FDS" in os.environ  # systemd holds the ports: probing them would fail
    for key, listener in zip(keys, config.listen, strict=True):
        if listener.tls is not None and (bad_tls := tls_problem(listener)):
            add(problems, f"{key}.tls", bad_tls)
        if not inherited and (bad_socket := socket_problem(listener)):
            add(problems, key, bad_socket)
        if not inherited and (bad_port := port_problem(listener)):
            if running_pid is not None and "in use" in bad_port:
                add(warnings, key, f"{bad_port} (by the running porch, pid {running_pid}, presumably)")
            else:
                add(problems, key, bad_port)
    return problems, warnings


def file_problems(path: Path, what: str) -> list[str]:
    """Why this process could not open ``path`` for appending (its directory missing, no write access)."""
    if path.exists():
        if path.is_dir():
            return [f"{what} {path} is a directory"]
        return [] if os.access(path, os.W_OK) else [f"{what} {path} is not writable (permission denied)"]
    directory = path.parent
    if not directory.is_dir():
        return [f"directory {directory} of the {what} {path.name} does not exist (create it first)"]
    if not os.access(directory, os.W_OK | os.X_OK):
        return [f"cannot create the {what} {path}: directory {directory} is not writable (permission denied)"]
    return []


def worker_ids(config: Config) -> tuple[int, set[int]] | None:
    """(uid, gids) the workers switch to, when ``user:`` names another user; None otherwise."""
    if config.user is None:
        return None
    try:
        entry = user_entry(config.user)
    except KeyError:
        return None  # an unknown user is the privilege check's problem
    if entry.pw_uid == os.geteuid():
        return None
    gids = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    if config.group is not None:
        try:
            gids.add(group_entry(config.group).gr_gid)
        except KeyError:
            pass
    return entry.pw_uid, gids


def user_problem(path: Path, ids: tuple[int, set[int]], user: str) -> str | None:
    """Why the workers' ``user`` could not reopen ``path`` after a rotation (USR1), or None.

    porch hands the file itself to that user, so what matters is its directory: a rotated log
    is created anew by the workers.
    """
    directory = path.parent
    try:
        info = directory.stat()
    except OSError:
        return None  # already a problem of its own
    if not _may_write(info, ids):
        return (
            f"the workers' user {user} cannot create files in {directory}, so reopening the log "
            "after a rotation (USR1) will fail: give the directory to that user"
        )
    return None


def _may_write(info: os.stat_result, ids: tuple[int, set[int]]) -> bool:
    uid, gids = ids
    if uid == 0:
        return True
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IWUSR and info.st_mode & stat.S_IXUSR)
    if info.st_gid in gids:
        return bool(info.st_mode & stat.S_IWGRP and info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IWOTH and info.st_mode & stat.S_IXOTH)


class CertificateProblem(Exception):
    """A certificate and key that cannot serve, saying which file is wrong."""


class _Passphrase(Exception):
    """Raised by the password callback: the key is encrypted."""


def _no_passphrase() -> str:
    """Without a callback OpenSSL would ask for the passphrase on the terminal and hang a daemon."""
    raise _Passphrase()


def load_certificate(context: ssl.SSLContext, certificate: Certificate) -> None:
    """Load ``certificate`` into ``context`` (``porch check`` and the listeners alike);
    CertificateProblem saying which file is wrong -- OpenSSL's reason alone ("PEM lib") does not."""
    try:
        cert, key = (Path(path).read_bytes() for path in (certificate.cert, certificate.key))
    except OSError as error:
        raise CertificateProblem(f"cannot read {error.filename}: {error.strerror}") from error
    try:
        context.load_cert_chain(certificate.cert, certificate.key, password=_no_passphrase)
    except _Passphrase:
        raise CertificateProblem(
            f"the key {certificate.key} is encrypted; porch needs it without a passphrase"
        ) from None
    except ssl.SSLError as error:
        if b"-----BEGIN CERTIFICATE-----" not in cert:
            message = f"{certificate.cert} holds no PEM certificate"
        elif b"PRIVATE KEY-----" not in key:
            message = f"{certificate.key} holds no PEM private key"
        elif "KEY_VALUES_MISMATCH" in (error.reason or ""):
            message = f"the key {certificate.key} does not belong to the certificate {certificate.cert}"
        else:
            message = f"cannot use {certificate.cert} with {certificate.key}: {error.reason or error}"
        raise CertificateProblem(message) from error


def tls_problem(listener: Listener) -> str | None:
    """Why the listener's certificates (each of them) or CA file cannot serve, or None."""
    assert listener.tls is not None
    pairs = listener.tls.pairs
    for number, certificate in enumerate(pairs):
        try:
            load_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), certificate)
        except CertificateProblem as problem:
            return f"certificates[{number}]: {problem}" if len(pairs) > 1 else str(problem)
    if listener.tls.ca is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=listener.tls.ca)
        except (ssl.SSLError, OSError) as error:
            return f"cannot use the CA file {listener.tls.ca}: {getattr(error, 'reason', None) or error}"
    return None


def socket_problem(listener: Listener) -> str | None:
    """Why the master could not create the listener's Unix socket file, or None.

    Only the master binds (at start and on reload), with its own rights: the workers' ``user``
    never creates the file, unlike a log file reopened after a rotation.
    """
    if listener.unix_path is None:
        return None
    directory = Path(listener.unix_path).parent
    if not directory.is_dir():
        return f"directory {directory} of the socket {listener.unix_path} does not exist (create it first)"
    if not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"cannot create the socket {listener.unix_path}: directory {directory} is not writable (permission denied)"
        )
    return None


def port_problem(listener: Listener) -> str | None:
    """Why the listener's TCP address cannot be bound now (taken, needs privilege), or None.

    The probe binds with SO_REUSEADDR, as the server does, and closes at once.
    """
    if listener.address.startswith("unix:"):
        return None
    host, port = listener.host_port
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if listener.reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind((host, port))
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM) and port < PRIVILEGED_PORTS:
            return f"port {port} is below {PRIVILEGED_PORTS} and needs privilege: {PRIVILEGE_HINT}"
        if error.errno == errno.EADDRINUSE:
            return f"{listener.address} is in use by another process"
        return f"cannot listen on {listener.address}: {error.strerror or error}"
    return None
