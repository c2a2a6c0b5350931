"""Binding the listening sockets: TCP over IPv4 and IPv6, and Unix sockets.

Listeners are bound once, before handlers run and before any worker starts, so a port that is
taken is reported at start-up.  The bound address (with the real port when the config says 0)
is logged as "listening on ..." for operators and tests alike.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from dataclasses import dataclass

from server.config import Listener

log = logging.getLogger(__name__)

BACKLOG = 1024


@dataclass
class BoundListener:
    """A bound, listening socket and what the connections accepted on it need to know."""

    config: Listener
    sock: socket.socket
    scheme: str = "http"

    @property
    def address(self) -> tuple[str, int] | str:
        """(host, port) of a TCP socket, the path of a Unix socket."""
        name = self.sock.getsockname()
        return name if isinstance(name, str) else (name[0], name[1])

    @property
    def name(self) -> str:
        """The address as written in configs: host:port, [v6]:port or unix:/path."""
        address = self.address
        if isinstance(address, str):
            return f"unix:{address}"
        host, port = address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        path = self.config.unix_path
        self.sock.close()
        if path and os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


def bind(listener: Listener) -> BoundListener:
    """Bind and listen on one configured address; OSError says why not."""
    path = listener.unix_path
    if path is not None:
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from a previous run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        host, port = listener.host_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
    sock.listen(BACKLOG)
    return BoundListener(listener, sock, "https" if listener.tls else "http")


def bind_all(listeners: tuple[Listener, ...]) -> list[BoundListener]:
    """Bind every listener, or none: on failure the ones already bound are closed."""
    bound: list[BoundListener] = []
    try:
        for listener in listeners:
            bound.append(bind(listener))
    except OSError as error:
        for done in bound:
            done.close()
        raise OSError(error.errno, f"cannot listen on {listener.address}: {error.strerror}") from error
    return bound
