"""Binding the listening sockets: TCP over IPv4 and IPv6, Unix sockets, TLS, inherited descriptors.

Listeners are bound once, by the process that starts first, before any worker exists: a port
that is taken or a certificate that does not fit its key is reported at start-up, and workers
inherit the bound sockets (and their TLS contexts) when they fork.  The caller logs each bound
address ("listening on 127.0.0.1:8000", with the real port when the config says 0).

    bind_all(config.listen)
      ├─ inherited_sockets()   systemd socket activation (sd_listen_fds(3)): LISTEN_PID is our
      │                        pid, LISTEN_FDS=N sockets start at fd 3; the variables are then
      │                        removed so that no child takes them for its own
      ├─ a configured listener whose address an inherited socket has: that socket (adopt)
      ├─ any other configured listener: a new socket (bind)
      └─ inherited sockets no listener names: served as plain HTTP too (systemd knows best)

``rebind(current, config.listen)`` does the same for a reloaded config: sockets whose address
stays are kept (nothing is refused while workers are replaced) with the new TLS settings, new
addresses are bound, dropped ones closed.

A Unix socket file left by a process that died is removed before binding; a path that is not
a socket, or a socket some process still answers on, is an error instead.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import ssl
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass, field, replace

from porch.config.settings import Listener, group_entry, user_entry
from porch.net.tls import TLSSetupError, server_context

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first inherited descriptor
ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
STALE_PROBE_SECONDS = 1.0
SOCKET_OPTIONS = ("backlog", "reuse_port", "v6only", "mode", "owner", "group")


class ListenError(OSError):
    """A listener cannot be used: ``strerror`` says why (``bind_all`` and ``rebind`` put
    "cannot listen on ADDRESS:" in front)."""


@dataclass
class BoundListener:
    """A listening socket and what the connections accepted on it need to know.

    ``tls`` is the listener's context (None for plain HTTP).  ``inherited`` sockets belong to
    the service manager: porch never removes their socket file.  A Unix socket file is removed
    on ``close()`` only by the process that created it, and only if it is still that file, so a
    worker that stops, or an old server that stops after a new one took the path, leaves it be.
    """

    config: Listener
    sock: socket.socket
    scheme: str = "http"
    tls: ssl.SSLContext | None = None
    inherited: bool = False
    owner_pid: int = field(default_factory=os.getpid)
    inode: int | None = None
    _address: tuple[str, int] | str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._address = socket_address(self.sock)

    @property
    def address(self) -> tuple[str, int] | str:
        """(host, port) of a TCP socket, the path of a Unix socket ("@name" if abstract)."""
        return self._address

    @property
    def name(self) -> str:
        """The address as written in configs: host:port, [v6]:port or unix:/path."""
        return address_text(self._address)

    def hand_over(self) -> None:
        """Another process serves this socket from now on (an upgrade's new master): closing our
        copy must leave its socket file in place."""
        self.inode = None

    def close(self) -> None:
        self.sock.close()
        path = self.config.unix_path
        if path is None or self.inherited or self.inode is None or os.getpid() != self.owner_pid:
            return
        try:
            if os.lstat(path).st_ino == self.inode:
                os.unlink(path)
        except OSError:
            pass


def socket_address(sock: socket.socket) -> tuple[str, int] | str:
    """The local address of a socket: (host, port), or a path for a Unix socket."""
    name = sock.getsockname()
    if isinstance(name, bytes):  # an abstract Unix socket: a leading NUL, shown as "@"
        return "@" + name[1:].decode("utf-8", "backslashreplace")
    return name if isinstance(name, str) else (name[0], name[1])


def address_text(address: tuple[str, int] | str) -> str:
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(listener: Listener) -> BoundListener:
    """Bind and listen on one configured address; OSError says why not (``bind_all`` adds the
    address to the message)."""
    context = bind_context(listener)
    if listener.unix_path is not None:
        sock, inode = _bind_unix(listener, listener.unix_path)
    else:
        sock, inode = _bind_tcp(listener), None
    return BoundListener(listener, sock, "https" if context else "http", context, inode=inode)


def bind_context(listener: Listener) -> ssl.SSLContext | None:
    """The TLS context for ``listener`` (None without TLS); ListenError says what is wrong."""
    try:
        return server_context(listener.tls) if listener.tls else None
    except TLSSetupError as error:
        raise ListenError(errno.EINVAL, str(error)) from error


def naming(error: OSError, listener: Listener) -> ListenError:
    """``error`` with the listener's address in front: "cannot listen on ADDRESS: reason"."""
    return ListenError(error.errno, f"cannot listen on {listener.address}: {error.strerror or error}")


def _bind_tcp(listener: Listener) -> socket.socket:
    host, port = listener.host_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if listener.reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise OSError(errno.ENOPROTOOPT, "reuse_port (SO_REUSEPORT) is not supported here")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(listener.v6only))
        sock.bind((host, port))
        sock.listen(listener.backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(listener: Listener, path: str) -> tuple[socket.socket, int]:
    """Bind a Unix socket; its mode and owner are set before listen(), so nobody connects first."""
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    inode = os.lstat(path).st_ino
    try:
        if listener.mode is not None:
            os.chmod(path, int(listener.mode, 8))
        if listener.owner is not None or listener.group is not None:
            try:
                os.chown(path, _account_id(listener.owner, "user"), _account_id(listener.group, "group"))
            except PermissionError as error:
                raise OSError(
                    error.errno,
                    f"cannot give {path} to owner {listener.owner or '-'} group "
                    f"{listener.group or '-'}: {error.strerror} (it takes root)",
                ) from error
        sock.listen(listener.backlog)
    except OSError:
        sock.close()
        os.unlink(path)
        raise
    return sock, inode


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file no process listens on any more; refuse anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket (porch removes only stale sockets)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(STALE_PROBE_SECONDS)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            log.info("removing the stale socket %s", path)
            os.unlink(path)
            return
        except FileNotFoundError:
            return
    raise OSError(errno.EADDRINUSE, f"another process is listening on {path}")


def _account_id(name: str | None, kind: str) -> int:
    """uid or gid for chown; -1 leaves it unchanged."""
    if name is None:
        return -1
    if name.isdigit():
        return int(name)
    try:
        return user_entry(name).pw_uid if kind == "user" else group_entry(name).gr_gid
    except KeyError:
        raise OSError(errno.EINVAL, f"no {kind} '{name}'") from None


def adopt(listener: Listener, sock: socket.socket) -> BoundListener:
    """Serve ``listener`` on a socket someone else bound (systemd): only TLS is ours to add."""
    context = bind_context(listener)
    return BoundListener(listener, sock, "https" if context else "http", context, inherited=True)


def served_as_is(sock: socket.socket) -> BoundListener:
    """An inherited socket no listener names, served as plain HTTP."""
    return BoundListener(Listener(address_text(socket_address(sock))), sock, inherited=True)


def inherited_sockets(environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (sd_listen_fds(3)), once.

    The variables are removed whatever they say, as ``sd_listen_fds(1)`` does: they describe
    this process only, and a CGI script or worker must never take the descriptors for its own.
    """
    pid, count, names_text = (environ.pop(name, None) for name in ACTIVATION_VARIABLES)
    if pid is None or count is None:
        return []
    if pid != str(os.getpid()):
        log.debug("LISTEN_PID=%s is not this process (%d): no inherited sockets", pid, os.getpid())
        return []
    if not count.isdigit():
        log.warning("ignoring LISTEN_FDS=%r: not a number", count)
        return []
    names = names_text.split(":") if names_text else []
    sockets = []
    for index in range(int(count)):
        fd = SD_LISTEN_FDS_START + index
        label = f"fd {fd}" + (f" ({names[index]})" if index < len(names) else "")
        try:
            sock = socket.socket(fileno=fd)
        except OSError as error:
            log.warning("ignoring inherited %s: not a socket (%s)", label, error.strerror)
            continue
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            log.warning("ignoring inherited %s: not a listening stream socket (Accept=yes is not supported)", label)
            sock.detach()
            continue
        os.set_inheritable(fd, False)
        log.info("inherited %s: a socket bound to %s", label, address_text(socket_address(sock)))
        sockets.append(sock)
    return sockets


def matches(listener: Listener, sock: socket.socket, any_port: bool = False) -> bool:
    """Whether ``sock`` is bound to the address ``listener`` names.  Port 0 matches nothing, or,
    with ``any_port`` (an upgrade: the sockets are the old master's, which chose the port),
    whatever port the socket has."""
    address = socket_address(sock)
    if isinstance(address, str):
        return listener.unix_path is not None and os.path.abspath(address) == listener.unix_path
    if listener.unix_path is not None:
        return False
    host, port = listener.host_port
    if port != address[1] and not (port == 0 and any_port):
        return False
    try:
        wanted = {ipaddress.ip_address(host)}
    except ValueError:  # a host name: whatever it resolves to for this socket's family
        try:
            infos = socket.getaddrinfo(host, port, sock.family, socket.SOCK_STREAM)
        except OSError:
            return False
        wanted = {ipaddress.ip_address(info[4][0]) for info in infos}
    return ipaddress.ip_address(address[0]) in wanted


def bind_all(
    listeners: tuple[Listener, ...], *, inherited: list[socket.socket] | None = None, any_port: bool = False
) -> list[BoundListener]:
    """Every configured listener (on an inherited socket where one has its address), then the
    inherited sockets no listener names; all or none: on failure, what was bound is closed.

    ``inherited`` defaults to ``inherited_sockets()`` from the environment; ``any_port``: a
    listener on port 0 takes an inherited socket of its host (see ``matches``).
    """
    available = inherited_sockets() if inherited is None else list(inherited)
    bound: list[BoundListener] = []
    for listener in listeners:
        sock = next((candidate for candidate in available if matches(listener, candidate, any_port)), None)
        try:
            bound.append(bind(listener) if sock is None else adopt(listener, sock))
        except OSError as error:
            for done in bound:
                done.close()
            raise naming(error, listener) from error
        if sock is not None:
            available.remove(sock)
    for sock in available:
        extra = served_as_is(sock)
        log.info("serving the inherited socket %s as plain HTTP: no configured listener names it", extra.name)
        bound.append(extra)
    return bound


def rebind(current: list[BoundListener], listeners: tuple[Listener, ...]) -> list[BoundListener]:
    """The listeners for a reloaded config, all or nothing; ``current`` is left as it was on error.

    A listener whose address (as configured, "127.0.0.1:0" included, or as bound) is already bound keeps its
    socket with the new TLS settings (renewed certificates); its socket options (backlog,
    reuse_port, v6only, mode, owner, group) need a restart to change.  Inherited sockets stay
    served (as plain HTTP when no listener names them any more).  Nothing is closed here: the
    old listeners keep serving until the caller adopts the result (a reload whose workers boot),
    and then it closes those of ``current`` the result no longer holds (``dropped``); kept
    sockets are shared.
    """
    remaining = list(current)
    result: list[BoundListener] = []
    fresh: list[BoundListener] = []
    for listener in listeners:
        old = next((b for b in remaining if listener.address in (b.config.address, b.name)), None)
        if old is None:
            old = next((b for b in remaining if b.inherited and matches(listener, b.sock)), None)
        try:
            if old is None:
                fresh.append(bind(listener))
                result.append(fresh[-1])
                continue
            context = bind_context(listener)
        except OSError as error:
            for done in fresh:
                done.close()
            raise naming(error, listener) from error
        remaining.remove(old)
        changed = [name for name in SOCKET_OPTIONS if getattr(old.config, name) != getattr(listener, name)]
        if changed and not old.inherited:
            log.warning("%s: changing %s takes a restart", old.name, ", ".join(changed))
        result.append(replace(old, config=listener, tls=context, scheme="https" if context else "http"))
    result.extend(served_as_is(old.sock) for old in remaining if old.inherited)
    return result


def dropped(current: list[BoundListener], adopted: list[BoundListener]) -> list[BoundListener]:
    """The listeners of ``current`` whose socket ``adopted`` (from ``rebind``) no longer holds."""
    kept = {listener.sock for listener in adopted}
    return [listener for listener in current if listener.sock not in kept]
