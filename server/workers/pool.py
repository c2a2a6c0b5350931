"""The threading model: ``ThreadPoolServer``, a bounded pool of threads that wait for work themselves.

The listening sockets and every connection waiting for its socket are in one epoll set that the
``threads`` pool threads wait on themselves -- one at a time, or all at once without a GIL, as
the pool's turns decide (``porch.workers.turns``).  The thread woken for a listener accepts and
serves the first new connection at once; the thread woken for a connection moves what its
socket allows (``Connection.advance``: a head, a body read ahead, the rest of a response) and,
once a request is ready, serves it on the spot.  A slow or idle client costs a file descriptor,
never a thread.  The acceptor thread (``SelectorServer``'s loop) only acts on expired deadlines
and runs the drain.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Sequence

from porch.config.settings import Config
from porch.net.connection import DRAIN_IDLE_SECONDS, READ, SERVE, Connection
from porch.net.listener import BoundListener
from porch.spine.clients import ClientTable
from porch.spine.pipeline import Pipeline
from porch.workers.selector import Parking, SelectorServer
from porch.workers.turns import Turns, turns_for

THREAD_STOP_SECONDS = 1.0  # how long server_close waits for the pool threads to leave


class ThreadPoolServer(SelectorServer):
    """``threading``: waiting connections in an epoll set that the pool threads wait on themselves.

    Leader/followers: the pool thread whose turn it is (``porch.workers.turns``) waits in
    ``epoll_wait`` on the set of waiting connections (a ``Parking``), each watched with
    ``EPOLLONESHOT`` -- once one is ready the kernel reports it once and stops watching it.  The
    thread that took it moves what the socket allows, serves every ready request it has
    (pipelining included) and re-arms it when it waits again, so a request never changes thread
    and no thread wakes another to serve it.  A connection whose head or read-ahead body is
    incomplete, or whose client is slow to take a response, is re-armed after one non-blocking
    pass: a slow client holds a thread for a ``recv`` or a ``send``, never longer.  The listening
    sockets are in the same set: the leader accepts what is pending and serves the first at once
    (its request has usually arrived with it).  The acceptor thread only acts on connections whose
    deadline has passed, and runs the drain; the atomic ``Parking.take`` decides who owns a
    connection.
    """

    def __init__(
        self,
        listeners: Sequence[BoundListener],
        pipeline: Pipeline,
        config: Config,
        *,
        clients: ClientTable | None = None,
        closing: threading.Event | None = None,
    ) -> None:
        self.idle = select.epoll()  # listeners, parked connections (EPOLLONESHOT), the stop signal
        self.listening: dict[int, BoundListener] = {}
        super().__init__(listeners, pipeline, config, clients=clients, closing=closing)
        self.parking = Parking(self.idle)  # connections waiting for their socket: whoever takes one owns it
        self.turns: Turns = turns_for(len(os.sched_getaffinity(0)))
        self.before_wait = self.turns.hand_over
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.watch(self._wake_r.fileno(), None, select.EPOLLIN)
        self._stop_threads = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.idle.register(self._stop_threads, select.EPOLLIN)  # level-triggered: wakes them all
        self.workers = [
            threading.Thread(target=self.work, name=f"porch-worker-{n}", daemon=True) for n in range(config.threads)
        ]
        for worker in self.workers:
            worker.start()

    def listen_on(self, listener: BoundListener, events: int) -> None:
        """Listeners are in the pool's epoll set: the leader accepts and serves on one thread."""
        self.listening[listener.sock.fileno()] = listener
        self.idle.register(listener.sock.fileno(), events)

    def unlisten(self, listener: BoundListener) -> None:
        """A resting listener leaves the pool's set (``listening`` keeps it, for its return)."""
        self.unwatch_idle(listener.sock.fileno())

    def close_listeners(self, sweep: bool = False) -> None:
        for fd in list(self.listening):
            self.unwatch_idle(fd)
        self.listening.clear()
        super().close_listeners(sweep)

    def adopt(self, conn: Connection) -> None:
        """A newly accepted connection not served at once waits in the set like any other."""
        self.parking.park(conn, READ)

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
        self.serve_ready(request)

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
                elif (conn := self.parking.take(fd)) is not None:  # else expired meanwhile
                    self.serve_ready(conn)

    def serve_ready(self, conn: Connection) -> None:
        """Move what a ready connection's socket allows and answer every request it has ready."""
        try:
            step = conn.advance()
            while step == SERVE:
                step = conn.serve()
            self.parking.settle(conn, step)
        except Exception:
            self.handle_error(conn.sock, conn.client)
            self.parking.release(conn)

    def service_actions(self) -> None:
        """Act on parked connections whose deadline has passed (a timeout, a client too slow)."""
        self.parking.expire(time.monotonic())

    def on_drain(self) -> None:
        """Idle keep-alive connections get DRAIN_IDLE_SECONDS for one last request."""
        self.parking.drain(time.monotonic() + DRAIN_IDLE_SECONDS)

    def drained(self) -> bool:
        return not self.parking.parked and self.turns.busy() == 0

    def server_close(self) -> None:
        self.parking.close()
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
