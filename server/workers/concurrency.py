"""The concurrency models, as ``socketserver`` server classes chosen by name.

Both share ``SelectorServer``: an acceptor loop on a selector over every listening socket, which
accepts, asks ``verify_request`` and hands the connection to ``process_request`` -- the
``socketserver`` contract, over several listeners.

- ``ThreadPoolServer`` (``threading``): accepted connections wait in an epoll set that the
  bounded pool of ``threads`` workers waits on itself; the thread woken for a readable
  connection reads it and, once a head is complete, serves it on the spot.  A slow or idle
  client costs a file descriptor, never a thread.
- ``ForkingServer`` (``forking``): ``socketserver.ForkingMixIn``: a child process per connection,
  at most ``max_children`` at once, serving that connection's requests until it goes idle.

Stopping gracefully is ``begin_drain()``: the acceptor closes the listeners and keeps serving
what is in flight -- every response now carries ``Connection: close`` -- and its loop ends by
itself once nothing is left.  ``shutdown()`` (from another thread) ends the loop at once.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from porch.config.settings import Config
from porch.net.connection import DRAIN_IDLE_SECONDS, Connection
from porch.net.listener import BoundListener
from porch.http.messages import Address, nothing
from porch.spine.pipeline import Pipeline
from porch.workers.turns import Turns, gil_enabled

log = logging.getLogger(__name__)

EXPIRY_SCAN_SECONDS = 0.25
ONE_READ = select.EPOLLIN | select.EPOLLONESHOT
ACCEPTS_PER_WAKEUP = 64
SHARED_ACCEPTS_PER_WAKEUP = 1  # with other workers on the socket: take one, leave them the rest
THREAD_STOP_SECONDS = 1.0  # how long server_close waits for the pool threads to leave


class SelectorServer(socketserver.BaseServer):
    """Accepts on several listening sockets; subclasses decide where connections are served."""

    def __init__(self, listeners: Sequence[BoundListener], pipeline: Pipeline, config: Config) -> None:
        super().__init__(listeners[0].address if listeners else None, None)  # type: ignore[arg-type]
        self.listeners = list(listeners)
        self.pipeline = pipeline
        self.config = config
        self.poller = select.epoll()
        self.watched: dict[int, object] = {}  # fd -> its listener, or None (the wake-up channel)
        self.draining = threading.Event()
        self.before_wait: Callable[[], None] = nothing  # what a connection calls before it waits
        self.listeners_open = True
        self.last_loop = 0.0  # when the acceptor loop last ran: the worker's heartbeat
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        # With several workers on the same sockets, a new connection wakes one worker only
        # (EPOLLEXCLUSIVE) and takes one connection per wake-up, so load spreads evenly instead
        # of the first worker to wake taking a whole burst (and a connection never waits in one
        # worker's set while another worker is free).
        shared = config.workers > 1
        self.accepts_per_wakeup = SHARED_ACCEPTS_PER_WAKEUP if shared else ACCEPTS_PER_WAKEUP
        for listener in self.listeners:
            listener.sock.setblocking(False)
            if listener.sock.family != socket.AF_UNIX:
                # Linux copies TCP_NODELAY from the listening socket to every socket accept()
                # returns: one setsockopt here instead of one per connection.
                listener.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.listen_on(listener, select.EPOLLIN | (select.EPOLLEXCLUSIVE if shared else 0))

    def listen_on(self, listener: BoundListener, events: int) -> None:
        """Watch a listening socket: here the acceptor loop accepts from it."""
        self.watch(listener.sock.fileno(), listener, events)

    def watch(self, fd: int, owner: object, events: int) -> None:
        self.watched[fd] = owner
        self.poller.register(fd, events)

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd``; always before it is closed, so a reused number is never confused."""
        self.watched.pop(fd, None)
        try:
            self.poller.unregister(fd)
        except (OSError, ValueError):
            pass

    def fileno(self) -> int:
        return self.listeners[0].sock.fileno()

    def serve_forever(self, poll_interval: float = EXPIRY_SCAN_SECONDS) -> None:
        """Run the acceptor loop until ``shutdown()``, or until drained after ``begin_drain()``."""
        self._stopped.clear()
        try:
            while not self._stop.is_set():
                self.last_loop = time.monotonic()
                if self.draining.is_set():
                    if self.listeners_open:
                        self.close_listeners(sweep=True)
                        self.on_drain()
                    if self.drained():
                        break
                for fd, _ in self.poller.poll(poll_interval):
                    if self._stop.is_set():
                        break
                    owner = self.watched.get(fd)
                    if isinstance(owner, BoundListener):
                        self.accept_from(owner)
                    else:
                        self.on_readable(fd, owner)
                self.service_actions()
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop the acceptor loop and wait for it to end.  Never call from the loop's thread."""
        self._stop.set()
        self.wake()
        self._stopped.wait()

    def begin_drain(self) -> None:
        """Stop accepting and finish what is in flight; safe to call from any thread."""
        self.draining.set()
        self.wake()

    def on_drain(self) -> None:
        """Called once on the acceptor thread when draining starts."""

    def drained(self) -> bool:
        """Whether nothing is left in flight (subclasses know what they hold)."""
        return True

    def wake(self) -> None:
        """Interrupt the selector wait (subclasses with a wake-up channel override this)."""

    def accept_from(self, listener: BoundListener) -> None:
        for conn in self.accepted(listener):
            self.adopt(conn)

    def accepted(self, listener: BoundListener, limit: int | None = None) -> Iterator[Connection]:
        """Up to ``limit`` (else ``accepts_per_wakeup``) new connections ``verify_request`` admits."""
        for _ in range(self.accepts_per_wakeup if limit is None else limit):
            try:
                sock, address = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE and friends: log, keep serving the rest
                if self.listeners_open:  # else closed under us by a drain: nothing to say
                    log.error("accept failed on %s: %s", listener.name, error)
                return
            if not self.verify_request(sock, address):  # type: ignore[arg-type]
                self.shutdown_request(sock)  # type: ignore[arg-type]
                continue
            try:
                yield self.connection_for(sock, address, listener)
            except OSError as error:  # the client left before its connection was set up
                log.debug("dropped a connection from %s on %s: %s", address, listener.name, error)
                sock.close()

    def connection_for(self, sock: socket.socket, address: Address, listener: BoundListener) -> Connection:
        """The Connection for an accepted socket; on a TLS listener the socket is wrapped, the
        handshake left to the connection (never done here, on the acceptor's path)."""
        if sock.family == socket.AF_UNIX:  # TCP sockets come with TCP_NODELAY: see __init__
            address = ""
        if listener.tls is not None:
            sock = listener.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return Connection(sock, address, listener.address, listener.scheme, self.pipeline, self.config,
                          self.draining, self.before_wait)

    def on_readable(self, fd: int, owner: object) -> None:
        """A watched descriptor other than a listener became readable (the wake-up channel)."""

    def handle_error(self, request: object, client_address: object) -> None:
        """socketserver's hook, sent to the error log instead of stderr."""
        log.exception("error serving connection from %s", client_address)

    def shutdown_request(self, request: Connection | socket.socket) -> None:  # type: ignore[override]
        sock = request.sock if isinstance(request, Connection) else request
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.close_request(request)

    def close_request(self, request: Connection | socket.socket) -> None:  # type: ignore[override]
        sock = request.sock if isinstance(request, Connection) else request
        sock.close()

    def close_listeners(self, sweep: bool = False) -> None:
        """Stop accepting: new connections go to the other workers (or are refused) from now on.

        With ``sweep`` (a drain), what is already pending is accepted and served first: when
        workers share a socket, the kernel wakes one of them for a new connection
        (EPOLLEXCLUSIVE), and if that was this worker, just before it stopped watching, nobody
        else would be woken for that connection.
        """
        self.listeners_open = False
        for listener in self.listeners:
            if listener.sock.fileno() >= 0:
                self.unwatch(listener.sock.fileno())
                if sweep:
                    for conn in self.accepted(listener, ACCEPTS_PER_WAKEUP):
                        self.adopt(conn)
            listener.sock.close()  # only this process's copy: the master owns the address

    def adopt(self, conn: Connection) -> None:
        """Take on a connection accepted while the listeners close (it is answered, then closed)."""
        try:
            self.process_request(conn, conn.client)  # type: ignore[arg-type]
        except Exception:
            self.handle_error(conn.sock, conn.client)  # type: ignore[arg-type]
            self.shutdown_request(conn)

    def server_close(self) -> None:
        self.close_listeners()
        self.poller.close()


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
        self.turns = Turns(len(os.sched_getaffinity(0)), exclusive=gil_enabled())
        self.before_wait = self.turns.hand_over
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.watch(self._wake_r.fileno(), None, select.EPOLLIN)
        self._stop_threads = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.idle.register(self._stop_threads, select.EPOLLIN)  # level-triggered: wakes them all
        self.next_scan = time.monotonic() + EXPIRY_SCAN_SECONDS
        self.workers = [threading.Thread(target=self.work, name=f"porch-worker-{n}", daemon=True)
                        for n in range(config.threads)]
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


class ForkingServer(socketserver.ForkingMixIn, SelectorServer):
    """``forking``: a child process per connection, at most ``max_children`` at once."""

    block_on_close = False

    def __init__(self, listeners: Sequence[BoundListener], pipeline: Pipeline, config: Config) -> None:
        super().__init__(listeners, pipeline, config)
        self.max_children = config.max_children

    def finish_request(self, request: Connection, client_address: object) -> None:  # type: ignore[override]
        """In the child: drop the listeners, then serve this connection until it goes idle.

        SIGTERM from the parent's drain lets a request in progress finish (its response says
        ``Connection: close``) and gives an idle connection ``DRAIN_IDLE_SECONDS`` to send one
        more request before it ends.
        """

        signal.signal(signal.SIGTERM, lambda signum, frame: request.draining.set())
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        for listener in self.listeners:
            listener.sock.close()
        self.pipeline.new_id_sequence()
        if not request.complete_handshake():
            return
        request.serve(wait=True)

    def service_actions(self) -> None:
        self.collect_children()

    def signal_children(self, signum: int) -> None:
        for pid in list(self.active_children or ()):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def on_drain(self) -> None:
        self.signal_children(signal.SIGTERM)

    def drained(self) -> bool:
        return not self.active_children

    def server_close(self) -> None:
        """End children that are still running (after a drain timeout or an immediate stop)."""
        self.signal_children(signal.SIGKILL)
        if self.active_children:
            self.collect_children(blocking=True)
        super().server_close()


SERVER_CLASSES: dict[str, type[SelectorServer]] = {"threading": ThreadPoolServer, "forking": ForkingServer}
