"""The threading model: ``ThreadPoolServer``, a bounded pool of threads that wait for work themselves.

The listening sockets and every idle connection are in one epoll set that the ``threads`` pool
threads wait on themselves -- one at a time, or all at once without a GIL, as the pool's turns
decide (``porch.workers.turns``).  The thread woken for a listener accepts and serves the first
new connection at once; the thread woken for a readable connection reads it and, once a head is
complete, serves it on the spot.  A slow or idle client costs a file descriptor, never a thread.
The acceptor thread (``SelectorServer``'s loop) only closes expired idle connections and runs
the drain.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Sequence

from porch.config.settings import Config
from porch.net.connection import DRAIN_IDLE_SECONDS, Connection
from porch.net.listener import BoundListener
from porch.spine.pipeline import Pipeline
from porch.workers.selector import EXPIRY_SCAN_SECONDS, SelectorServer
from porch.workers.turns import Turns, turns_for

ONE_READ = select.EPOLLIN | select.EPOLLONESHOT
THREAD_STOP_SECONDS = 1.0  # how long server_close waits for the pool threads to leave


class ThreadPoolServer(SelectorServer):
    """``threading``: idle connections in an epoll set that the pool threads wait on themselves.

    Leader/followers: the pool thread whose turn it is (``porch.workers.turns``) waits in ``epoll_wait``
    on the set of idle connections, which are watched with ``EPOLLONESHOT`` -- once one is
    readable the kernel reports it once and stops watching it.  The thread that took it reads it,
    serves every complete request it has (pipelining included) and re-arms it when it goes idle,
    so a request never changes thread and no thread wakes another to serve it.  A connection
    whose head is incomplete is re-armed after one non-blocking read: a slow client holds a thread
    for one ``recv``, never longer.  The listening sockets are in the same set: the leader accepts
    what is pending and serves the first at once (its request has usually arrived with it).  The
    acceptor thread only closes connections whose idle or header deadline has passed, and runs the
    drain; the atomic ``parked.pop`` decides who owns a connection.
    """

    def __init__(self, listeners: Sequence[BoundListener], pipeline: Pipeline, config: Config) -> None:
        self.idle = select.epoll()  # listeners, parked connections (EPOLLONESHOT), the stop signal
        self.listening: dict[int, BoundListener] = {}
        super().__init__(listeners, pipeline, config)
        self.parked: dict[int, Connection] = {}  # idle connections: whoever pops one owns it
        self.turns: Turns = turns_for(len(os.sched_getaffinity(0)))
        self.before_wait = self.turns.hand_over
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.watch(self._wake_r.fileno(), None, select.EPOLLIN)
        self._stop_threads = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.idle.register(self._stop_threads, select.EPOLLIN)  # level-triggered: wakes them all
        self.next_scan = time.monotonic() + EXPIRY_SCAN_SECONDS
        self.workers = [
            threading.Thread(target=self.work, name=f"porch-worker-{n}", daemon=True) for n in range(config.threads)
        ]
        for worker in self.workers:
            worker.start()

    def listen_on(self, listener: BoundListener, events: int) -> None:
        """Listeners are in the pool's epoll set: the leader accepts and serves on one thread."""
        self.listening[listener.sock.fileno()] = listener
        self.idle.register(listener.sock.fileno(), events)

    def close_listeners(self, sweep: bool = False) -> None:
        for fd in list(self.listening):
            self.unwatch_idle(fd)
        self.listening.clear()
        super().close_listeners(sweep)

    def adopt(self, conn: Connection) -> None:
        """A newly accepted connection not served at once waits in the set like any other."""
        self.park(conn)

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def accept_from(self, listener: BoundListener) -> None:
        """Accept what is pending (one at a time when workers share the socket): the first
        is served at once -- its request is often there already -- the others join the set,
        so a burst of new clients is not let in one per turn of the leader."""
        first: Connection | None = None
        for conn in self.accepted(listener):
            if first is None:
                first = conn
            else:
                self.adopt(conn)
        if first is not None:
            self.process_request(first, first.client)

    def process_request(self, request: Connection, client_address: object) -> None:  # type: ignore[override]
        """Serve a connection the leader just accepted, at once."""
        self.serve_ready(request, new=True)

    def park(self, conn: Connection, deadline_set: bool = False) -> None:
        """Make an idle connection wait in the epoll set (again); ``deadline_set`` keeps the
        deadline of a head already started."""
        if not deadline_set:
            conn.park()
        self.parked[conn.fd] = conn
        self.arm(conn)  # last: from here on any thread may take it

    def arm(self, conn: Connection) -> None:
        """Watch a connection for its next readable moment (the first time, add it to the set)."""
        if conn.in_idle_set:
            self.idle.modify(conn.fd, ONE_READ)
        else:
            conn.in_idle_set = True
            self.idle.register(conn.fd, ONE_READ)

    def release(self, conn: Connection) -> None:
        """Forget and close a connection (unwatched first: its number may be reused at once)."""
        self.parked.pop(conn.fd, None)
        if conn.in_idle_set:  # most connections that close were never idle: no syscall for them
            self.unwatch_idle(conn.fd)
        conn.close()

    def unwatch_idle(self, fd: int) -> None:
        try:
            self.idle.unregister(fd)
        except (OSError, ValueError):
            pass

    def on_readable(self, fd: int, owner: object) -> None:
        """The acceptor's wake-up channel (shutdown, drain): empty it."""
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def work(self) -> None:
        """A pool thread: lead when its turn comes, serve what it takes, re-arm what goes idle."""
        self.turns.join()
        was_serving = False
        while self.turns.next_turn(was_serving):
            was_serving = False
            try:
                while not (events := self.idle.poll(-1, 1)):
                    pass
            except (OSError, ValueError):  # the set was closed: the server is going away
                self.turns.stop()
                return
            for fd, _ in events:
                if fd == self._stop_threads:
                    self.turns.stop()
                    return
                self.turns.took_work()
                was_serving = True
                if (listener := self.listening.get(fd)) is not None:
                    self.accept_from(listener)
                elif (conn := self.parked.pop(fd, None)) is not None:  # else expired meanwhile
                    self.serve_ready(conn)

    def serve_ready(self, conn: Connection, new: bool = False) -> None:
        """Read what a readable connection sent and answer every complete request in it."""
        try:
            state = conn.fill()
            if state is None:
                self.release(conn)
                return
            if not state:  # more of the head to come: watch it (again, keeping its deadline)
                self.park(conn, deadline_set=not new)
                return
            while conn.serve(wait=False):
                conn.buffer_pending()  # TLS: plaintext OpenSSL holds is invisible to epoll
                if not conn.head_ready():
                    self.park(conn)
                    return
            self.release(conn)
        except Exception:
            self.handle_error(conn.sock, conn.client)
            self.release(conn)

    def service_actions(self) -> None:
        """Close parked connections whose header or keep-alive deadline has passed."""
        now = time.monotonic()
        if now < self.next_scan:
            return
        self.next_scan = now + EXPIRY_SCAN_SECONDS
        for fd, conn in list(self.parked.items()):
            if conn.deadline <= now and self.parked.pop(fd, None) is conn:
                self.unwatch_idle(fd)
                conn.expire()

    def on_drain(self) -> None:
        """Idle keep-alive connections get DRAIN_IDLE_SECONDS for one last request."""
        closing = time.monotonic() + DRAIN_IDLE_SECONDS
        for conn in list(self.parked.values()):
            if not conn.buffer:
                conn.deadline = min(conn.deadline, closing)

    def drained(self) -> bool:
        return not self.parked and self.turns.busy() == 0

    def server_close(self) -> None:
        for conn in list(self.parked.values()):
            self.release(conn)
        os.eventfd_write(self._stop_threads, 1)
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()
        deadline = time.monotonic() + THREAD_STOP_SECONDS
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if not any(worker.is_alive() for worker in self.workers):  # else one is stuck in a request
            self.idle.close()
            os.close(self._stop_threads)
            self.turns.close()
