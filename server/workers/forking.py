"""The forking model: ``ForkingServer``, a child process per request ready to be served.

The acceptor reads what each connection sends, as the threading model's pool does: a
connection still sending its head -- or a body up to ``limits.buffered_body``, received whole
before the request is served (``porch.net.connection``) -- waits parked in the acceptor's epoll
set (``Parking``) under its timeouts, at the cost of a descriptor.  Once a request is ready, a
child is forked to serve it -- at most ``max_children`` at once; a connection ready while all
are busy waits for one (``waiting``), and the acceptor never blocks on a child.  The acceptor
keeps its copy of the socket meanwhile: once the child has answered, it serves the next request
too if its whole head arrives within ``NEXT_HEAD_SECONDS`` (a client sending requests back to
back costs one fork); otherwise it hands the connection back, the head's bytes unread in the
socket, by exiting with ``KEEP_ALIVE``, and the connection is parked again until its next
request is ready.  So a kept-alive connection
holds a child only while requests are served (pipelined ones already received are the same
child's), and clients that trickle their heads or small bodies, first or later, cannot take
every child.  A TLS connection keeps its child to its end: the session's state is the child's
alone.  The TLS handshake is the acceptor's (its sessions are cached there, for every later
client).

Children report each request they start and complete on a pipe (``Reports``): the worker's
heartbeat lists what each child serves, so that the master sees a worker whose every child is
stuck, and ``max_requests`` counts the children's requests.  The acceptor sees a child exit at
once (a pidfd in its epoll set), and a child dies with the acceptor that forked it
(``PR_SET_PDEATHSIG``): a worker its master kills leaves no child behind.

A drain sends the children SIGTERM (a request in progress finishes, an idle connection gets
``DRAIN_IDLE_SECONDS`` for one more, in the child); children still running when the server
closes are killed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from porch.config.settings import Config
from porch.http.messages import Request
from porch.net.connection import DRAIN_IDLE_SECONDS, SERVE, Connection
from porch.net.listener import BoundListener
from porch.spine.clients import ClientTable
from porch.spine.pipeline import InFlight, Pipeline, in_flight
from porch.workers.selector import SelectorServer

log = logging.getLogger(__name__)

KEEP_ALIVE = 75  # a child's exit status: its connection is idle, back to the acceptor
# A child's report: its pid, what happened (STARTED, COMPLETED), when the request started, and
# the length of the text that follows: request id, client and request line, tab-separated.
REPORT = struct.Struct("=iBdH")
STARTED, COMPLETED = 1, 2
REPORT_TEXT_BYTES = 2048  # a record stays under PIPE_BUF (4096): written whole, never interleaved
SHOWN_REQUEST_ID = 64  # characters of a request id a report carries (the heartbeat shows as many)
READ_BYTES = 65536
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when the thread that forked it ends
LIBC = ctypes.CDLL(None, use_errno=True)


class Reports:
    """A pipe on which children tell their acceptor each request they start and complete.

    A record is one ``write`` of at most PIPE_BUF bytes, so the records of several children never
    interleave; a child waits for room rather than lose one (the acceptor reads the pipe whenever
    it is readable, and before it looks at a child's exit).
    """

    def __init__(self) -> None:
        self.fd, self.write_end = os.pipe()
        os.set_blocking(self.fd, False)
        self.unread = bytearray()

    def tell(self, request: Request, done: bool) -> None:
        """In a child: ``request`` has started (or completed: ``done``)."""
        flight = in_flight(request, "")
        fields = (flight.request_id[:SHOWN_REQUEST_ID], flight.client, flight.request_line)
        text = "\t".join(fields).encode("utf-8", "backslashreplace")[:REPORT_TEXT_BYTES]
        kind = COMPLETED if done else STARTED
        os.write(self.write_end, REPORT.pack(os.getpid(), kind, flight.start, len(text)) + text)

    def receive(self) -> list[tuple[int, int, InFlight]]:
        """In the acceptor: the records that have arrived whole, as (pid, kind, request)."""
        try:
            while chunk := os.read(self.fd, READ_BYTES):
                self.unread += chunk
        except BlockingIOError:
            pass
        records = []
        offset = 0
        while offset + REPORT.size <= len(self.unread):
            pid, kind, start, length = REPORT.unpack_from(self.unread, offset)
            end = offset + REPORT.size + length
            if end > len(self.unread):
                break
            text = self.unread[offset + REPORT.size : end].decode("utf-8", "replace")
            request_id, client, line = (text.split("\t", 2) + ["", ""])[:3]
            records.append((pid, kind, InFlight(start, request_id, line, f"child {pid}", client)))
            offset = end
        del self.unread[:offset]
        return records

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.write_end)


@dataclass
class Child:
    """A child serving a connection; the acceptor keeps its copy of the socket meanwhile."""

    pid: int
    conn: Connection
    pidfd: int | None  # readable once the child has exited; None if the kernel gave none
    request: InFlight | None = None  # the request it serves now, as it reported


class ForkingServer(SelectorServer):
    """``forking``: a child process per request ready (and those behind it), at most ``max_children``."""

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
        # The children serving, by pid: their connections' closes are counted here, once the
        # child is gone, however it ended (SIGKILL too), never in the child.
        self.children: dict[int, Child] = {}
        self.waiting: deque[Connection] = deque()  # ready to serve, no child free yet
        self.reports = Reports()
        self.watch(self.reports.fd, self.reports, select.EPOLLIN)
        self.changed = time.monotonic()  # when a child last started, ended or reported

    def process_request(self, request: Connection, client_address: object) -> None:  # type: ignore[override]
        """A new connection: read it at once (its head has often arrived with it)."""
        self.carry_on(request, request.advance())

    def on_readable(self, fd: int, owner: object) -> None:
        """A child has exited, or reported; or a parked connection's socket is ready."""
        if isinstance(owner, Child):
            self.collect(owner.pid)
        elif owner is self.reports:
            self.read_reports()
        elif (conn := self.parking.take(fd)) is not None:
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
        parent = os.getpid()
        try:
            pid = self.pipeline.logs.fork()  # a child's logs are whole, whatever other threads write
        except OSError as error:  # out of processes or memory: this client is not served
            log.error("cannot fork to serve %s: %s", conn.client, error)
            self.parking.release(conn)
            return
        if pid == 0:
            status = 1
            try:
                die_with_parent(parent)
                status = KEEP_ALIVE if self.serve_in_child(conn) else 0
            except Exception:
                self.handle_error(conn.sock, conn.client)
            finally:
                os._exit(status)
        self.started(pid, conn)

    def started(self, pid: int, conn: Connection) -> None:
        """Keep track of a new child, whose pidfd says when it has exited."""
        child = Child(pid, conn, exit_watch(pid))
        self.children[pid] = child
        if child.pidfd is not None:
            self.watch(child.pidfd, child, select.EPOLLIN)
        self.changed = time.monotonic()

    def children_serving(self) -> int:
        return len(self.children)

    def requests_changed(self) -> float:
        return self.changed

    def requests_in_flight(self) -> list[InFlight]:
        """The request each child reported it serves, oldest first."""
        serving = [child.request for child in self.children.copy().values() if child.request is not None]
        return sorted(serving, key=lambda request: request.start)

    def serve_in_child(self, conn: Connection) -> bool:
        """In the child: drop what belongs to the acceptor, then serve ``conn`` until it ends, or
        is idle: True then, to hand it back to the acceptor.

        SIGTERM from the parent's drain lets a request in progress finish (its response says
        ``Connection: close``) and gives an idle connection ``DRAIN_IDLE_SECONDS`` to send one
        more request before it ends.  The acceptor counts the connection's close: it closes the
        last copy of the socket.
        """
        signal.signal(signal.SIGTERM, lambda signum, frame: conn.drain())
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        self.drop_the_acceptors()
        conn.counted = False
        self.pipeline.new_id_sequence()
        self.pipeline.max_requests = 0  # the acceptor counts this child's requests, as reported
        self.pipeline.report = self.reports.tell
        return conn.run(SERVE, hand_back=True)

    def drop_the_acceptors(self) -> None:
        """In a child: close the acceptor's descriptors.  Its other connections' sockets go too,
        or the client of one the acceptor closes would not see it closed until this child exits."""
        for listener in self.listeners:
            listener.sock.close()
        for other in (*self.parking.parked.values(), *self.waiting, *(c.conn for c in self.children.values())):
            other.sock.close()
        for child in self.children.values():
            if child.pidfd is not None:
                os.close(child.pidfd)
        os.close(self.reports.fd)
        self.poller.close()

    def service_actions(self) -> None:
        """Fork for connections waiting for a child, expire parked connections (and collect any
        child no pidfd watches)."""
        self.reap()
        while self.waiting and len(self.children) < self.max_children:
            self.fork(self.waiting.popleft())
        self.parking.expire(time.monotonic())

    def reap(self, block: bool = False) -> None:
        """Collect the children no pidfd watches that have exited -- or, with ``block`` (the
        server closes), every child, waiting for each."""
        for child in list(self.children.values()):
            if block or child.pidfd is None:
                self.collect(child.pid, 0 if block else os.WNOHANG)

    def collect(self, pid: int, flags: int = os.WNOHANG) -> None:
        """Collect child ``pid`` if it has exited (by its pid: an application's own child
        processes are not ours to reap)."""
        try:
            done, status = os.waitpid(pid, flags)
            code = os.waitstatus_to_exitcode(status) if done else 0
        except ChildProcessError:  # collected elsewhere: how it ended is unknown
            done, code = pid, 1
        if done:
            self.ended(self.children[pid], code)

    def ended(self, child: Child, code: int) -> None:
        """A child has exited: its connection, handed back (``KEEP_ALIVE``), waits for its next
        request here; otherwise it is closed.  What the child reported last is read first."""
        self.read_reports()
        del self.children[child.pid]
        self.changed = time.monotonic()
        if child.pidfd is not None:
            self.unwatch(child.pidfd)
            os.close(child.pidfd)
        if code == KEEP_ALIVE:
            self.take_back(child.conn)
        else:
            self.parking.release(child.conn)

    def take_back(self, conn: Connection) -> None:
        """Park a connection a child handed back until its next request is ready; while the
        server drains, for ``DRAIN_IDLE_SECONDS`` at most (the child was not told in time)."""
        step = conn.taken_back()
        if self.draining.is_set():
            conn.deadline = min(conn.deadline, time.monotonic() + DRAIN_IDLE_SECONDS)
        self.parking.settle(conn, step)

    def read_reports(self) -> None:
        """Note what the children reported: the request each serves now, and each one completed
        (counted towards ``max_requests``)."""
        for pid, kind, request in self.reports.receive():
            self.changed = time.monotonic()
            if (child := self.children.get(pid)) is not None:
                child.request = request if kind == STARTED else None
            if kind == COMPLETED:
                self.pipeline.complete()

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
        self.unwatch(self.reports.fd)
        self.reports.close()
        super().server_close()


def exit_watch(pid: int) -> int | None:
    """A pidfd that becomes readable once child ``pid`` has exited; None if the kernel gives
    none (the acceptor then looks for its exit on every turn of its loop)."""
    try:
        return os.pidfd_open(pid)
    except OSError as error:
        log.warning("cannot watch child %d for its exit: %s", pid, error.strerror)
        return None


def die_with_parent(parent: int) -> None:
    """In a child: have the kernel kill it when the thread that forked it ends -- its worker
    killed by the master included -- so that no child outlives its worker, serving on."""
    LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent:  # gone before it was asked
        os._exit(1)
