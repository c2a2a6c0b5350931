"""The acceptor: ``SelectorServer``, the ``socketserver`` contract over several listeners.

One loop (``serve_forever``, on the worker's acceptor thread) waits on an epoll set holding
every listening socket, accepts what is pending -- up to ``ACCEPTS_PER_WAKEUP`` at a time, one
when other workers share the sockets -- asks ``verify_request`` and hands each connection to
``process_request``.  Where connections are served is the subclasses' business: the threading
model (``porch.workers.pool``, whose pool threads take the listeners into their own set) and the
forking one (``porch.workers.forking``) override the hooks they need (``listen_on``,
``unlisten``, ``adopt``, ``on_readable``, ``wake``, ``loop_timeout``, ``on_drain``, ``drained``,
``service_actions``).  Both keep the connections that wait for their socket -- a head or a small
body on its way, a keep-alive between requests, a response the client is slow to take -- in a
``Parking``: parked, they cost a descriptor and no thread or process.

Stopping gracefully is ``begin_drain()``: the acceptor closes the listeners and keeps serving
what is in flight -- every response now carries ``Connection: close`` -- and its loop ends by
itself once nothing is left.  ``shutdown()`` (from another thread) ends the loop at once.

A listener whose ``accept()`` fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
ENOMEM) rests: it is not watched for ``ACCEPT_BACKOFF_SECONDS`` -- its pending connections
would wake the loop at once and fail again, in a busy loop -- and the loop watches it again
afterwards, by itself; what is already accepted is served meanwhile (nginx does the same).
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from porch.config.settings import Config
from porch.http.messages import Address, nothing
from porch.net.connection import CLOSE, READ, Connection
from porch.net.listener import BoundListener
from porch.net.proxy_protocol import ProxyPreface
from porch.spine.clients import ClientTable, Tally
from porch.spine.pipeline import InFlight, Pipeline
from porch.spine.validate import admitted

log = logging.getLogger(__name__)

EXPIRY_SCAN_SECONDS = 0.25
ACCEPTS_PER_WAKEUP = 64
ONE_READ = select.EPOLLIN | select.EPOLLONESHOT
ONE_WRITE = select.EPOLLOUT | select.EPOLLONESHOT
SHARED_ACCEPTS_PER_WAKEUP = 1  # with other workers on the socket: take one, leave them the rest
ACCEPT_BACKOFF_SECONDS = 0.5  # how long a listener rests after accept() ran out of a resource (as nginx)
# accept() errors that retrying at once repeats: the process or the system is out of descriptors,
# or the kernel out of memory.  Others (a connection reset before it was accepted) concern one client.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
REFUSALS_LOG_SECONDS = 1.0  # connections refused per client: one error-log line at most this often


class Parking:
    """Connections waiting for their socket under a deadline, each armed in an epoll set for one
    event (``EPOLLONESHOT``: once reported, the kernel stops watching it until it is re-armed).

    Whoever pops a connection from ``parked`` owns it: the thread woken for it (``take``) or the
    expiry scan (``expire``); a connection taken is parked again or released by its owner.
    """

    def __init__(self, epoll: select.epoll) -> None:
        self.epoll = epoll
        self.parked: dict[int, Connection] = {}
        self.next_scan = 0.0

    def park(self, conn: Connection, step: int) -> None:
        """Wait until the connection's socket is ready for ``step`` (READ or WRITE), under the
        deadline the connection has set."""
        self.parked[conn.fd] = conn
        events = ONE_READ if step == READ else ONE_WRITE
        if conn.in_idle_set:  # last: from here on any thread may take it
            self.epoll.modify(conn.fd, events)
        else:
            conn.in_idle_set = True
            self.epoll.register(conn.fd, events)

    def take(self, fd: int) -> Connection | None:
        """The connection whose socket is ready, now owned by the caller; None if another owner
        (the expiry scan) has it."""
        return self.parked.pop(fd, None)

    def settle(self, conn: Connection, step: int) -> None:
        """Park a connection that waits for its socket (READ, WRITE); release one that is done."""
        if step == CLOSE:
            self.release(conn)
        else:
            self.park(conn, step)

    def release(self, conn: Connection) -> None:
        """Forget and close a connection (unwatched first: its number may be reused at once)."""
        self.parked.pop(conn.fd, None)
        if conn.in_idle_set:  # most connections that close were never idle: no syscall for them
            conn.in_idle_set = False
            try:
                self.epoll.unregister(conn.fd)
            except (OSError, ValueError):
                pass
        conn.close()

    def expire(self, now: float) -> None:
        """Let every connection whose deadline has passed act on it (a 408, a close); the
        connections are looked at every EXPIRY_SCAN_SECONDS, however often this is called."""
        if now < self.next_scan:
            return
        self.next_scan = now + EXPIRY_SCAN_SECONDS
        for fd, conn in list(self.parked.items()):
            if conn.deadline <= now and self.parked.pop(fd, None) is conn:
                self.settle(conn, conn.expire(now))

    def drain(self, closing: float) -> None:
        """The server drains: idle keep-alive connections get until ``closing`` for one last request."""
        for conn in list(self.parked.values()):
            if conn.is_idle:
                conn.deadline = min(conn.deadline, closing)

    def close(self) -> None:
        """Release every parked connection: the server is closing."""
        for conn in list(self.parked.values()):
            self.release(conn)


class SelectorServer(socketserver.BaseServer):
    """Accepts on several listening sockets; subclasses decide where connections are served."""

    def __init__(
        self,
        listeners: Sequence[BoundListener],
        pipeline: Pipeline,
        config: Config,
        *,
        clients: ClientTable | None = None,
        closing: threading.Event | None = None,
    ) -> None:
        super().__init__(listeners[0].address if listeners else None, None)  # type: ignore[arg-type]
        self.listeners = list(listeners)
        self.pipeline = pipeline
        self.config = config
        self.clients = clients  # the instance's table: connections per client (none: not limited)
        self.refusals = Tally(
            log,
            REFUSALS_LOG_SECONDS,
            "refused %d connections since the last line: their clients held limits.connections_per_client (%d); "
            "the latest from %s",
        )
        self.poller = select.epoll()
        self.watched: dict[int, object] = {}  # fd -> its listener, or None (the wake-up channel)
        # Stopping, in two steps: ``closing`` (every response says Connection: close, ``ready``
        # says 503) while the listeners still accept, then ``draining`` (the listeners close).
        self.closing = closing or threading.Event()
        self.draining = threading.Event()
        self.parking = Parking(self.poller)  # connections waiting for their socket
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
        self.listen_events = select.EPOLLIN | (select.EPOLLEXCLUSIVE if shared else 0)
        self.resting: dict[int, tuple[BoundListener, float]] = {}  # fd -> listener, when it wakes
        self.resting_lock = threading.Lock()  # pool threads accept too: one of them rests a listener
        for listener in self.listeners:
            listener.sock.setblocking(False)
            if listener.sock.family != socket.AF_UNIX:
                # Linux copies TCP_NODELAY from the listening socket to every socket accept()
                # returns: one setsockopt here instead of one per connection.
                listener.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.listen_on(listener, self.listen_events)

    def idle_connections(self) -> int:
        """Kept-alive connections waiting for their next request, for the heartbeat."""
        try:
            return sum(1 for conn in list(self.parking.parked.values()) if conn.is_idle)
        except RuntimeError:  # the set changed under the copy (free-threaded builds): next time
            return 0

    def children_serving(self) -> int:
        """Processes serving connections on this server's behalf (forking): none here."""
        return 0

    def requests_changed(self) -> float:
        """When a request last started or completed, for the heartbeat."""
        return self.pipeline.changed

    def requests_in_flight(self) -> list[InFlight]:
        """The requests being served, oldest first, for the heartbeat."""
        return self.pipeline.in_progress()

    def listen_on(self, listener: BoundListener, events: int) -> None:
        """Watch a listening socket: here the acceptor loop accepts from it."""
        self.watch(listener.sock.fileno(), listener, events)

    def unlisten(self, listener: BoundListener) -> None:
        """Stop watching a listening socket for a while (``listen_on`` watches it again)."""
        self.unwatch(listener.sock.fileno())

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
                self.last_loop = now = time.monotonic()
                if self.draining.is_set():
                    if self.listeners_open:
                        self.close_listeners(sweep=True)
                        self.on_drain()
                    if self.drained():
                        break
                timeout = self.loop_timeout(poll_interval)
                if self.resting:
                    timeout = self.wake_listeners(now, timeout)
                for fd, _ in self.poller.poll(timeout):
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

    def begin_closing(self) -> None:
        """Keep accepting, but answer every request with Connection: close (a balancer is told,
        through ``ready``, to stop sending before the listeners close); safe from any thread."""
        self.closing.set()

    def begin_drain(self) -> None:
        """Stop accepting and finish what is in flight; safe to call from any thread."""
        self.closing.set()
        self.draining.set()
        self.wake()

    def loop_timeout(self, longest: float) -> float:
        """How long the acceptor loop may wait for its sockets (subclasses may want it sooner)."""
        return longest

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
            except OSError as error:
                if error.errno in RESOURCE_ERRORS:
                    self.rest(listener, error)
                elif self.listeners_open:  # else closed under us by a drain: nothing to say
                    log.error("accept failed on %s: %s", listener.name, error)
                return
            if isinstance(address, tuple):
                address = address[:2]  # an Address is (host, port): IPv6 adds flow info and scope id
            if not self.verify_request(sock, address):
                self.shutdown_request(sock)
                continue
            try:
                conn = self.connection_for(sock, address, listener)
            except OSError as error:  # the client left before its connection was set up
                log.debug("dropped a connection from %s on %s: %s", address, listener.name, error)
                sock.close()
                continue
            if conn is not None:  # else refused: its client holds limits.connections_per_client
                yield conn

    def rest(self, listener: BoundListener, error: OSError) -> None:
        """accept() ran out of descriptors or memory: stop watching ``listener`` for
        ``ACCEPT_BACKOFF_SECONDS`` (one log line each time), so the loop does not spin on it."""
        with self.resting_lock:
            fd = listener.sock.fileno()
            if fd < 0 or fd in self.resting or not self.listeners_open:
                return
            self.unlisten(listener)
            self.resting[fd] = (listener, time.monotonic() + ACCEPT_BACKOFF_SECONDS)
        log.error(
            "accept failed on %s: %s; accepting again in %gs", listener.name, error.strerror, ACCEPT_BACKOFF_SECONDS
        )

    def wake_listeners(self, now: float, longest: float) -> float:
        """Watch again the listeners whose rest is over; how long the loop may wait (at most
        ``longest``) before the next one is."""
        wait = longest
        with self.resting_lock:
            for fd, (listener, until) in list(self.resting.items()):
                if until <= now:
                    del self.resting[fd]
                    self.listen_on(listener, self.listen_events)
                else:
                    wait = min(wait, until - now)
        return wait

    def connection_for(self, sock: socket.socket, address: Address, listener: BoundListener) -> Connection | None:
        """The Connection for an accepted socket; on a TLS listener the socket is wrapped, the
        handshake left to the connection (never done here, on the acceptor's path).  None when
        its client holds ``limits.connections_per_client`` already: the socket is closed."""
        if sock.family == socket.AF_UNIX:  # TCP sockets come with TCP_NODELAY: see __init__
            address = ""
        # proxy_protocol: the PROXY header comes first, in clear; the connection reads it as its
        # first bytes (parked while it trickles in) and wraps the socket in TLS only after it.
        preface = ProxyPreface(sock, listener.tls) if listener.config.proxy_protocol else None
        if listener.tls is not None and preface is None:
            sock = listener.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        on_close = self.count_connection(address)
        if on_close is None:
            sock.close()
            return None
        self.pipeline.metrics.add("connections_accepted")
        return Connection(
            sock,
            address,
            listener.address,
            listener.scheme,
            self.pipeline,
            self.config,
            self.draining,
            self.before_wait,
            on_close,
            preface=preface,
            close_soon=self.closing,
        )

    def count_connection(self, address: Address) -> Callable[[], None] | None:
        """Count a new connection against its client's ``limits.connections_per_client``, across
        the workers: what takes it off again when it closes, or None (counted as refused, and
        logged) when the client holds that many already.  Unix-socket clients and
        ``trusted_proxies`` (whose connections carry many clients) are not limited."""
        limit = self.config.limits.connections_per_client
        if not (limit and self.clients is not None and isinstance(address, tuple)):
            return nothing
        if admitted(self.pipeline.trusted_proxies, address):
            return nothing
        on_close = self.clients.open_connection(address[0], limit)
        if on_close is None:
            self.pipeline.metrics.add("connections_refused")
            self.refusals.note(limit, address[0])
        return on_close

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
        with self.resting_lock:
            self.resting.clear()  # resting listeners are not watched: closing them is enough
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
            self.handle_error(conn.sock, conn.client)
            self.shutdown_request(conn)

    def server_close(self) -> None:
        self.close_listeners()
        self.poller.close()
