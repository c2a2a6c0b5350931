"""The forking model: ``ForkingServer``, a child process per connection with a complete request.

The acceptor reads what each new connection sends, as the threading model's pool does: a
connection still sending its head -- or a body up to ``limits.buffered_body``, received whole
before the request is served (``porch.net.connection``) -- waits parked in the acceptor's epoll
set (``Parking``) under its timeouts, at the cost of a descriptor.  Once a request is ready, a
child is forked to serve it and everything after it on that connection, until the connection
ends -- at most ``max_children`` at once; a connection ready while all are busy waits for one
(``waiting``), and the acceptor never blocks on a child.  So clients that trickle their heads
or small bodies cannot take every child; the TLS handshake is the acceptor's too (its sessions
are cached there, for every later client).

A drain sends the children SIGTERM (a request in progress finishes, an idle connection gets
``DRAIN_IDLE_SECONDS`` for one more); children still running when the server closes are killed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from porch.config.settings import Config
from porch.http.messages import nothing
from porch.net.connection import DRAIN_IDLE_SECONDS, SERVE, Connection
from porch.net.listener import BoundListener
from porch.spine.clients import ClientTable
from porch.spine.pipeline import Pipeline
from porch.workers.selector import SelectorServer

log = logging.getLogger(__name__)

WAITING_POLL_SECONDS = 0.01  # how often the acceptor looks for a free child while connections wait


class ForkingServer(SelectorServer):
    """``forking``: a child process per connection with a request ready, at most ``max_children``."""

    def __init__(
        self,
        listeners: Sequence[BoundListener],
        pipeline: Pipeline,
        config: Config,
        *,
        clients: ClientTable | None = None,
        closing: threading.Event | None = None,
    ) -> None:
        super().__init__(listeners, pipeline, config, clients=clients, closing=closing)
        self.max_children = config.max_children
        # Each child serving a connection, with what takes that connection off its client's count:
        # called here when the child is gone, however it ended (SIGKILL too), never in the child.
        self.children: dict[int, Callable[[], None]] = {}
        self.waiting: deque[Connection] = deque()  # ready to serve, no child free yet

    def process_request(self, request: Connection, client_address: object) -> None:  # type: ignore[override]
        """A new connection: read it at once (its head has often arrived with it)."""
        self.carry_on(request, request.advance())

    def on_readable(self, fd: int, owner: object) -> None:
        """A parked connection's socket is ready."""
        if (conn := self.parking.take(fd)) is not None:
            try:
                self.carry_on(conn, conn.advance())
            except Exception:
                self.handle_error(conn.sock, conn.client)
                self.parking.release(conn)

    def carry_on(self, conn: Connection, step: int) -> None:
        """A child for a connection with a request ready; parked or released otherwise."""
        if step == SERVE:
            self.fork(conn)
        else:
            self.parking.settle(conn, step)

    def fork(self, conn: Connection) -> None:
        """Serve ``conn`` in a child of its own, or keep it waiting while ``max_children`` run."""
        if len(self.children) >= self.max_children:
            self.waiting.append(conn)
            return
        try:
            pid = os.fork()
        except OSError as error:  # out of processes or memory: this client is not served
            log.error("cannot fork to serve %s: %s", conn.client, error)
            self.parking.release(conn)
            return
        if pid == 0:
            status = 1
            try:
                self.serve_in_child(conn)
                status = 0
            except Exception:
                self.handle_error(conn.sock, conn.client)
            finally:
                os._exit(status)
        self.children[pid] = conn.on_close
        conn.counted = False  # the child counts its close
        self.parking.release(conn)  # our copy only: the child's stays open

    def children_serving(self) -> int:
        return len(self.children)

    def serve_in_child(self, conn: Connection) -> None:
        """In the child: drop what belongs to the acceptor, then serve ``conn`` to its end.

        The acceptor's other connections are closed here, or the client of one the acceptor
        closes would not see it closed until this child exits.  SIGTERM from the parent's drain
        lets a request in progress finish (its response says ``Connection: close``) and gives an
        idle connection ``DRAIN_IDLE_SECONDS`` to send one more request before it ends.
        """
        signal.signal(signal.SIGTERM, lambda signum, frame: conn.drain())
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        conn.on_close = nothing  # the acceptor's, when it reaps this child
        for listener in self.listeners:
            listener.sock.close()
        for other in (*self.parking.parked.values(), *self.waiting):
            other.counted = False  # the acceptor's: it counts their close
            other.close()
        self.poller.close()
        self.pipeline.new_id_sequence()
        conn.run(SERVE)

    def loop_timeout(self, longest: float) -> float:
        """Connections waiting for a child: look for a free one often."""
        return WAITING_POLL_SECONDS if self.waiting else longest

    def service_actions(self) -> None:
        """Reap children, fork for connections waiting for one, expire parked connections."""
        self.reap()
        while self.waiting and len(self.children) < self.max_children:
            self.fork(self.waiting.popleft())
        self.parking.expire(time.monotonic())

    def reap(self, block: bool = False) -> None:
        """Collect the children that have exited (each by its pid: an application's own child
        processes are not ours to reap)."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.pop(pid)()

    def signal_children(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def on_drain(self) -> None:
        self.signal_children(signal.SIGTERM)
        self.parking.drain(time.monotonic() + DRAIN_IDLE_SECONDS)

    def drained(self) -> bool:
        return not (self.children or self.parking.parked or self.waiting)

    def server_close(self) -> None:
        """End children that are still running (after a drain timeout or an immediate stop)."""
        self.signal_children(signal.SIGKILL)
        self.reap(block=True)
        self.parking.close()
        while self.waiting:
            self.waiting.popleft().close()
        super().server_close()
