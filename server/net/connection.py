"""Socket I/O for one client connection: read heads, feed bodies, write responses, keep alive.

A connection is a small state machine that never blocks on its own account.  Its driver waits
for the socket and calls it; each call returns what it needs next -- ``READ`` or ``WRITE`` (wait
until the socket is readable, writable), ``SERVE`` (a request is ready: serve it) or ``CLOSE``
(done: stop watching it and close it):

- ``advance()``: the socket is ready; move what it allows -- the next head, a body read ahead,
  the rest of a response, or (lingering before a close) what the client still sends;
- ``serve()``: answer the ready request and every one ready behind it (pipelining), running
  handlers;
- ``expire(now)``: ``deadline`` passed (header or keep-alive timeout, a transfer too slow, the
  end of lingering).

Two drivers share it: a pool thread of the threading model, woken by the pool's epoll set for a
parked connection (``porch.workers.pool``; the forking model's acceptor likewise until a head is
ready), and a forked child, which waits in place (``run``) until it can hand an idle connection
back to the acceptor (``can_hand_back``, ``taken_back``).  So a slow client costs a
descriptor, not a thread, for as much of the exchange as porch can manage without the handler:

- a request body up to ``limits.buffered_body`` (Content-Length, no ``Expect``) is received
  whole before the request is served -- the handler reads it from memory;
- a response the client is slow to take is finished by the driver once it is produced: bytes
  and files are left to it as soon as the socket is full; a streamed body keeps its thread
  until ``limits.response_buffer`` bytes are waiting, and then waits for the client.  The
  response's ``Exchange`` (its access line) is ended by whoever sees its end: all sent
  (``after_response``), or cut off (``close``); the body bytes the socket takes are counted as
  they go (``write``, ``push``), not as they are produced.

Waits in a handler's thread -- a larger or chunked body read as the handler asks, a streamed
response -- are ``wait_io``'s: one poll, bounded by ``timeouts.body``, which first tells the
thread pool that this thread is about to wait (``before_wait``); the common case -- data there,
window open -- costs no poll.  Every body and response transfer, waited for in a thread or by
the driver, must also keep up ``timeouts.body_min_rate`` (``porch.net.pace``).

Each request runs through ``Pipeline.run`` with ``send_response`` as its writer: the one place
where every handler type's response is framed -- HEAD, Content-Length, chunked encoding,
``Date``/``Server`` and ``Connection``, as ``porch.http.response.frame_response`` decides -- and
written, file bodies with ``sendfile``.  Before the head goes out, a request body the handler
left unread is settled (``will_drain``): read and discarded to keep the connection (up to
``limits.discard_body``), or the response says ``Connection: close`` and the connection closes
gently (``closing``, lingering up to ``timeouts.linger``).  A TLS handshake is
``porch.net.handshake``'s; the connection only drives it.  On a ``proxy_protocol``
listener a PROXY header comes first, in clear, before TLS (``porch.net.proxy_protocol``): read
from trusted proxies only, under the header timeout, it names the connection's client; without
a valid one the connection closes without a response, with one error-log line saying why.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import BinaryIO

from porch.config.settings import Config
from porch.http.body import ContentLengthBody, EmptyBody, body_reader
from porch.http.dates import format_http_date
from porch.http.errors import (
    ClientDisconnected,
    HTTPError,
    InternalServerError,
    ProtocolError,
    RequestTimeout,
)
from porch.http.grammar import BODILESS_STATUSES
from porch.http.head import RequestHead, find_head_end, parse_head
from porch.http.messages import (
    SMALL_FILE_BYTES,
    Address,
    Body,
    FileRegion,
    Headers,
    Request,
    Response,
    ResponseBody,
    host_of,
    nothing,
)
from porch.http.response import LAST_CHUNK, encode_chunk, frame_response, serialize_response_head
from porch.net.handshake import Handshake
from porch.net.listener import address_text
from porch.net.pace import Pace
from porch.net.proxy_protocol import PeerClosed, ProxyPreface, ProxyProtocolError
from porch.spine.pipeline import NO_EXCHANGE, Exchange, Pipeline, error_response
from porch.timing import SecondCache, milliseconds

log = logging.getLogger(__name__)

RECV_BYTES = 65536
SEND_FILE_BLOCK = 262144  # TLS: file bodies are encrypted and sent in blocks of this size
LINGER_READS = 16  # reads per wake-up while lingering: a client sending fast cannot hold a thread
# While the server drains, an idle keep-alive connection gets this long to send one more request
# (answered with Connection: close) before it is closed; closing it at once would race a client
# that is sending right now.
DRAIN_IDLE_SECONDS = 1.0
IDLE_POLL_SECONDS = 0.25  # a forked child's longest wait, so that it notices a drain
# A forked child keeps its connection for the next request if that request's whole head arrives
# within this long (a client sending requests back to back: no fork each); else it hands the
# connection back to the acceptor, which waits for slow heads without a child.
NEXT_HEAD_SECONDS = 0.1
PEEK_BYTES = 65536
HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NO_BODY = EmptyBody()  # the body of the request before the first (never handed out)

# What a connection needs next, as ``advance``, ``serve`` and ``expire`` return it.
CLOSE = 0  # done: stop watching it, then close it
READ = 1  # wait until the socket is readable, then ``advance``
WRITE = 2  # wait until the socket is writable, then ``advance``
SERVE = 3  # a request is ready (``head``, and its body if read ahead): ``serve``


class ResponseAborted(Exception):
    """The response could not be completed; the connection must be closed, not reused."""


DATES = SecondCache(format_http_date)  # the Date header (RFC 9110 6.6.1)


class Unsent:
    """What is left to send of a response the client is slow to take: pieces of bytes (never
    copied), then part of a file; sent by the driver, or by a thread that must wait for it.

    Each piece knows which of its bytes are body -- ``[start, stop)``, the rest head or chunk
    framing -- so that the body bytes the socket takes can be counted (``drop``).
    """

    __slots__ = ("end", "file", "offset", "pieces", "size", "wants")

    def __init__(self) -> None:
        self.pieces: deque[tuple[memoryview, int, int]] = deque()  # (bytes, body start, body stop)
        self.size = 0  # bytes in ``pieces``
        self.file: BinaryIO | None = None  # sent after the pieces, from ``offset`` to ``end``
        self.offset = 0
        self.end = 0
        self.wants = WRITE  # what the socket must be ready for next; 0 once everything is sent

    def add(self, data: bytes | bytearray | memoryview, start: int, stop: int) -> None:
        """Queue ``data``, whose body is ``data[start:stop]``."""
        view = memoryview(data)
        self.pieces.append((view, start, stop))
        self.size += view.nbytes

    def drop(self, sent: int) -> int:
        """The socket took ``sent`` bytes of the first piece: forget them; how many were body."""
        piece, start, stop = self.pieces[0]
        self.size -= sent
        if sent < piece.nbytes:
            self.pieces[0] = (piece[sent:], max(start - sent, 0), max(stop - sent, 0))
        else:
            self.pieces.popleft()
        return min(sent, stop) - start if sent > start else 0

    def close(self) -> None:
        """Close the file, if one was left to send (the response's body: the connection owns it)."""
        if self.file is not None:
            close_body(self.file)
            self.file = None


class Connection:
    """One client connection and its buffered, not yet parsed bytes."""

    # More attributes than CPython 3.11 keeps in an instance's compact dictionary (30): without
    # slots its dictionary was the general kind, 0.7 µs more to make and slower to read (3 % of
    # the instructions of a request on a new connection).
    __slots__ = (
        "before_wait",
        "body",
        "buffer",
        "client",
        "close_soon",
        "continue_due",
        "counted",
        "deadline",
        "drain_started",
        "draining",
        "exchange",
        "fd",
        "handshake",
        "head",
        "head_started",
        "in_idle_set",
        "io_timeout",
        "keep_alive",
        "limits",
        "linger_until",
        "min_rate",
        "on_close",
        "out",
        "pace",
        "parked_at",
        "pipeline",
        "preface",
        "progress_at",
        "read_ahead",
        "request_id_header",
        "scheme",
        "server",
        "server_header",
        "skip",
        "sock",
        "timeouts",
    )

    def __init__(
        self,
        sock: socket.socket,
        client: Address,
        server: Address,
        scheme: str,
        pipeline: Pipeline,
        config: Config,
        draining: threading.Event,
        before_wait: Callable[[], None] = nothing,
        on_close: Callable[[], None] = nothing,
        preface: ProxyPreface | None = None,
        close_soon: threading.Event | None = None,
    ) -> None:
        self.sock = sock
        sock.setblocking(False)  # always: waits are ours (``wait_io``), so none costs a poll first
        self.fd = sock.fileno()  # kept after close, to stop watching the right descriptor
        self.draining = draining  # set when the listeners close: an idle connection gets one last request
        self.close_soon = close_soon or draining  # set when the server stops: answer with Connection: close
        self.before_wait = before_wait  # told before any wait, so another pool thread may take work
        self.on_close = on_close  # told once when the connection closes (per-client connection counts)
        self.client = client
        self.server = server
        self.scheme = scheme
        self.pipeline = pipeline
        self.limits = config.limits
        self.timeouts = config.timeouts
        self.io_timeout = config.timeouts.body  # how long one read or write may wait
        self.min_rate = config.timeouts.body_min_rate
        self.read_ahead = min(config.limits.buffered_body, config.limits.body)
        self.server_header = config.server_header
        self.request_id_header = config.request_id_header
        self.buffer = bytearray()
        self.head_started = time.monotonic()
        self.deadline = self.head_started + self.timeouts.keepalive  # for the first byte
        self.preface = preface  # a PROXY header to read before anything else; None once read
        if preface is not None:
            self.deadline = self.head_started + self.timeouts.header
        self.head: RequestHead | None = None  # parsed, not served yet (its body may be on its way)
        self.keep_alive = True
        self.continue_due = False  # the request expects 100 Continue, not sent yet
        self.body: Body = NO_BODY  # the body of the request being served (or last served)
        self.out: Unsent | None = None  # what the socket has not taken yet of a response
        self.exchange: Exchange = NO_EXCHANGE  # the response on its way: its body bytes sent, its end
        self.skip = 0  # bytes of the last request's unread body still to arrive and be dropped
        self.linger_until = 0.0  # lingering before the close (``closing``) until then
        self.pace: Pace | None = None  # the minimum rate's counts (made at the first wait)
        self.parked_at = 0.0  # when a transfer the driver finishes last waited for the client
        self.progress_at = 0.0  # when that transfer last moved a byte
        self.drain_started: float | None = None
        # TLS: the handshake, until the first head's bytes arrive (they start its deadline)
        self.handshake = Handshake(sock, client) if isinstance(sock, ssl.SSLSocket) else None
        self.in_idle_set = False  # registered in an epoll set (``porch.workers.selector.Parking``)
        self.counted = True  # its close is still to be counted (a forked child leaves that to its acceptor)

    # -- driven from outside: the socket is ready, requests are ready, time is up --------------

    def advance(self) -> int:
        """The socket is ready (or may be): move what it allows; what the connection needs next."""
        if self.out is not None:
            return self.flush()
        if self.linger_until:
            return self.discard()
        return self.fill()

    def fill(self) -> int:
        """Read towards the next request: SERVE once it is ready (or its head proves malformed:
        then the error's step), READ for more, CLOSE if the peer closed or failed.

        A head is read one ``recv`` per wake-up; a body read ahead as long as bytes are there.
        A PROXY header comes before everything (``read_preface``).  On TLS the handshake comes
        first, one non-blocking step per call (``Handshake.step``); the handshake and the first
        head must together arrive within the header timeout.
        ``SSLSocket.recv`` raises SSLWantReadError where a plain socket raises BlockingIOError.
        """
        if self.preface is not None and (step := self.read_preface()) is not None:
            return step
        handshake = self.handshake
        if handshake is not None and not handshake.done:
            if handshake.started is None:
                self.deadline = handshake.begin() + self.timeouts.header
            shaken = handshake.step()
            if shaken is not True:
                return READ if shaken is False else CLOSE
        while True:
            try:
                data = self.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return READ if self.head is None else self.wait_for_client(READ)
            except OSError:
                return CLOSE
            if not data:  # inside a body read ahead, its reader meets the end of file: a 400
                return SERVE if self.head is not None else CLOSE
            if self.head is not None:
                self.progress(len(data))
            self.take_in(data)
            self.buffer_pending()
            step = self.next_request()
            if step != READ or self.head is None:
                return step

    def read_preface(self) -> int | None:
        """The PROXY header, from a trusted proxy only: None once read -- its source is the
        client from here on, and a TLS socket is wrapped now -- else READ, or CLOSE (logged)."""
        preface = self.preface
        assert preface is not None
        peer = address_text(self.client)
        if self.pipeline.proxies is None or not self.pipeline.proxies.trusts(self.client):
            log.warning("connection from %s closed: a PROXY header is accepted from trusted_proxies only", peer)
            return CLOSE
        try:
            header = preface.step()
        except PeerClosed as closed:  # a name of its own: mypyc types a name by its first except clause
            log.log(logging.WARNING if preface.received else logging.DEBUG, "no PROXY header from %s: %s", peer, closed)
            return CLOSE
        except ProxyProtocolError as error:
            log.warning("connection from %s closed: invalid PROXY header: %s", peer, error)
            return CLOSE
        except OSError:
            return CLOSE
        if header is None:
            return READ
        self.preface = None
        if header.source is not None:
            self.client = header.source
        log.debug("PROXY header from %s: the client is %s", peer, address_text(self.client))
        if preface.tls is not None:
            try:
                self.sock = preface.tls.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
            except OSError:
                return CLOSE
            self.handshake = Handshake(self.sock, self.client)
        self.deadline = time.monotonic() + self.timeouts.keepalive  # for the first byte, as on any connection
        return None

    def take_in(self, data: bytes) -> None:
        """Add received bytes to the buffer -- after dropping what is left of an unread body."""
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
            if not data:
                return
        if not self.buffer and self.head is None:
            self.head_started = time.monotonic()
            started = self.head_started
            if self.handshake is not None:  # the first head: its time began with the handshake
                started, self.handshake = self.handshake.started or started, None
            self.deadline = started + self.timeouts.header
        self.buffer += data

    def next_request(self) -> int:
        """What the buffered bytes allow: SERVE when a request is ready -- its head parsed, its
        body buffered if it is read ahead -- READ for more (the deadline is the caller's
        business, but for a body read ahead), or the step of a head rejected as malformed."""
        head = self.head
        if head is None:
            if not self.buffer:
                return READ
            try:
                end = find_head_end(self.buffer, self.limits)
            except ProtocolError as error:
                self.reject(error)
                return self.after_output()
            if end < 0:
                return READ
            head_bytes = bytes(self.buffer[:end])
            del self.buffer[:end]
            try:
                head = parse_head(head_bytes, self.limits)
            except ProtocolError as error:
                self.reject(error, first_line(head_bytes))
                return self.after_output()
            self.head = head
            length = head.content_length
            if (
                not length
                or length <= len(self.buffer)
                or length > self.read_ahead
                or head.expect_continue
                or length > self.pipeline.body_limit(host_of(head.headers, self.server), head.path)
            ):
                return SERVE
            self.parked_at = self.progress_at = time.monotonic()
            if self.min_rate:
                self.paced().start(head)
            return self.wait_for_client(READ)
        return SERVE if len(self.buffer) >= (head.content_length or 0) else READ

    def idle(self) -> int:
        """Going idle between requests: READ, under the deadline of the state we are in (a head
        started, or none); or what a complete request TLS held back allows."""
        if self.buffer_pending():  # plaintext OpenSSL holds is invisible to epoll
            step = self.next_request()
            if step != READ or self.head is not None or self.linger_until:
                return step
        now = time.monotonic()
        self.deadline = now + (self.timeouts.header if self.buffer else self.timeouts.keepalive)
        return READ

    @property
    def is_idle(self) -> bool:
        """Between requests, nothing of the next one received: what a drain may cut short."""
        return not self.buffer and self.head is None and self.out is None and not self.linger_until

    @property
    def can_hand_back(self) -> bool:
        """Whether another process may take this connection over now: idle, no unread body still
        to come, not draining, and no TLS session (its state is this process's alone)."""
        return (
            self.is_idle and not self.skip and not self.draining.is_set() and not isinstance(self.sock, ssl.SSLSocket)
        )

    def taken_back(self) -> int:
        """A forked child handed this connection back idle: forget the request it served (this
        copy is as it was at the fork) and wait for the next one, under the keep-alive timeout."""
        self.head = None
        self.buffer.clear()
        self.body = NO_BODY
        self.keep_alive = True
        self.continue_due = False
        self.pace = None
        return self.idle()

    def expire(self, now: float) -> int:
        """``deadline`` passed: 408 if a head was started (RFC 9110 15.5.9), then close; a
        transfer the driver finishes is judged (``wait_for_client``)."""
        if self.out is not None:
            return self.wait_for_client(self.out.wants, now)
        if self.head is not None:
            return self.wait_for_client(READ, now)
        if self.linger_until:
            return CLOSE
        if self.preface is not None:
            if not self.draining.is_set():
                log.warning(
                    "connection from %s closed: no PROXY header within %gs (timeouts.header)",
                    address_text(self.client),
                    self.timeouts.header,
                )
            return CLOSE
        if not self.buffer:
            return self.closing()
        self.reject(RequestTimeout("the request head was not received in time"))
        return self.after_output()

    def run(self, step: int, hand_back: bool = False) -> bool:
        """Drive the connection from here, waiting in place: a forked child's way.  True when it
        stopped, with ``hand_back``, to hand the connection back to the acceptor, idle and the
        next head not all there within ``NEXT_HEAD_SECONDS`` (``can_hand_back``,
        ``next_head_arrives``); else it ended, closed.

        While the server drains, an idle connection gets ``DRAIN_IDLE_SECONDS`` for one more
        request; the waits are short enough (``IDLE_POLL_SECONDS``) to notice the drain.  The
        acceptor holds a copy of the socket: the sending side is shut before the close, so the
        client sees the end now rather than when the acceptor closes its copy.
        """
        poller = select.poll()
        events = select.POLLIN
        poller.register(self.fd, events)
        while step != CLOSE:
            if step == SERVE:
                step = self.serve()
                continue
            wanted = select.POLLIN if step == READ else select.POLLOUT
            if wanted != events:
                poller.modify(self.fd, wanted)
                events = wanted
            if hand_back and step == READ and self.can_hand_back and not self.next_head_arrives(poller):
                return True
            now = time.monotonic()
            deadline = self.deadline
            if self.draining.is_set() and self.is_idle:
                deadline = min(deadline, self.drain_deadline(now))
            if now >= deadline:
                step = self.expire(now)
            elif poller.poll(milliseconds(min(deadline - now, IDLE_POLL_SECONDS))):
                step = self.advance()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.close()
        return False

    def next_head_arrives(self, poller: select.poll) -> bool:
        """Whether the next request's whole head (or the client's close) arrives within
        ``NEXT_HEAD_SECONDS``, looked at without reading it (``MSG_PEEK``): a connection whose
        head is slow can still be handed back with every byte in the socket."""
        deadline = time.monotonic() + NEXT_HEAD_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            if not poller.poll(milliseconds(left)):
                return False
            try:
                seen = self.sock.recv(PEEK_BYTES, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            except OSError:
                return True  # reading it says what went wrong
            if not seen or len(seen) == PEEK_BYTES or any(end in seen for end in HEAD_ENDS):
                return True
            time.sleep(min(left, 0.01))  # part of a head: readable at once from now on, so look again later
        return False

    def drain(self) -> None:
        """The server stops (a forked child's): the response in progress says Connection: close,
        and an idle connection gets ``DRAIN_IDLE_SECONDS`` for one more request."""
        self.close_soon.set()
        self.draining.set()

    def drain_deadline(self, now: float) -> float:
        """When this idle connection must close, the server having started to drain."""
        if self.drain_started is None:
            self.drain_started = now
        return self.drain_started + DRAIN_IDLE_SECONDS

    # -- transfers the driver finishes: a body read ahead, the rest of a response -------------

    def paced(self) -> Pace:
        """The minimum rate's counts, made when first needed."""
        if self.pace is None:
            self.pace = Pace(self.min_rate, self.timeouts.body)
        return self.pace

    def progress(self, moved: int) -> None:
        """A transfer the driver finishes moved ``moved`` bytes."""
        self.progress_at = time.monotonic()
        if self.min_rate:
            self.paced().moved += moved

    def wait_for_client(self, step: int, now: float | None = None) -> int:
        """Such a transfer waits for the client: ``step``, under a deadline -- the silence
        allowed (``timeouts.body`` since the last byte) or the end of the minimum rate's window,
        whichever comes first -- or, when the client is too slow, what follows that."""
        if now is None:
            now = time.monotonic()
        deadline = self.progress_at + self.io_timeout
        if self.min_rate:
            pace = self.paced()
            pace.waited += now - self.parked_at
            if not pace.judge():
                return self.too_slow()
            deadline = min(deadline, now + pace.left())
        if now >= deadline:
            return self.too_slow()
        self.parked_at = now
        self.deadline = deadline
        return step

    def too_slow(self) -> int:
        """The client stalled or fell below the minimum rate: a body read ahead gets 408
        (RFC 9110 15.5.9), a response is cut off."""
        if self.out is not None:
            self.out.close()
            self.out = None
            return CLOSE
        head = self.head  # kept until ``closing``: the rest of its body may still be coming
        line = f"{head.method} {head.target} {head.version}" if head is not None else None
        self.reject(RequestTimeout("the request body was not received in time"), line)
        return self.after_output()

    def flush(self) -> int:
        """Send what the socket takes of the rest of a response; once all is sent, carry on."""
        out = self.out
        assert out is not None
        try:
            moved = self.push(out)
        except (OSError, ResponseAborted):
            out.close()
            self.out = None
            return CLOSE
        if moved:
            self.progress(moved)
        if out.wants:
            return self.wait_for_client(out.wants)
        out.close()
        return self.after_response()

    # -- TLS ------------------------------------------------------------------------------------

    def buffer_pending(self) -> int:
        """Move plaintext the TLS layer has decrypted but not handed out into the buffer.

        A selector watches the socket, not OpenSSL's buffer: bytes left there when a small body
        read took only part of a record would never wake a pool thread.  Call it before parking a
        TLS connection; returns the number of bytes moved.
        """
        moved = 0
        while isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            try:
                data = self.sock.recv(self.sock.pending())
            except OSError:
                break
            if not data:
                break
            self.take_in(data)
            moved += len(data)
        return moved

    # -- serving ------------------------------------------------------------------------------

    def serve(self) -> int:
        """Answer the ready request and every one ready behind it; what the connection needs next."""
        try:
            step = SERVE
            while step == SERVE:
                step = self.serve_one()
            return step
        except (OSError, ResponseAborted):
            pass
        except Exception:
            log.exception("unexpected error on connection from %s", self.client)
        return CLOSE

    def serve_one(self) -> int:
        """Run the pipeline for the ready request; what the connection needs after it."""
        head, self.head = self.head, None
        assert head is not None
        self.keep_alive = head.keep_alive
        self.continue_due = head.expect_continue
        request = self.build_request(head)
        self.body = request.body
        if not self.pipeline.run(request, self.send_response):
            return CLOSE
        if self.out is not None:  # the client is slow to take it: the driver finishes it
            self.parked_at = self.progress_at = time.monotonic()
            if self.min_rate:
                self.paced().start(self.body)
            return self.wait_for_client(self.out.wants)
        return self.after_response()

    def build_request(self, head: RequestHead) -> Request:
        send_continue = self.send_continue if head.expect_continue else None
        body = body_reader(head, self, self.limits.body, send_continue, limits=self.limits)
        return Request(
            method=head.method,
            target=head.target,
            raw_path=head.raw_path,
            path=head.path,
            query=head.query,
            version=head.version,
            headers=head.headers,
            body=body,
            client=self.client,
            server=self.server,
            scheme=self.scheme,
            request_id=self.pipeline.request_id(head.headers, self.client),
            start=self.head_started,
            client_gone=self.client_gone,
            before_wait=self.before_wait,
        )

    def client_gone(self) -> bool:
        """Whether the client closed or reset the connection (nginx counts a half-close too)."""
        body = self.body
        if len(self.buffer) > (body.remaining if isinstance(body, ContentLengthBody) else 0):
            return False  # it sent more than the body: a pipelined request is waiting
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLRDHUP)
        return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))

    def will_drain(self, produced: ResponseBody) -> bool:
        """Before the head goes out: whether the rest of a body the handler left unread will be
        read and discarded, so that the connection stays open -- else the response says
        ``Connection: close`` (RFC 9112 9.3, 9.6) and the connection closes gently after it.

        A Content-Length body is drained after the response when at most ``limits.discard_body``
        bytes of it are still to arrive.  A chunked body's length is unknown: once the handler is
        done with it (a response not streamed), what has already arrived is drained now, without
        waiting, and the connection stays open if the body ends within the limit.  A client
        expecting ``100 Continue`` that was never sent may or may not send its body (RFC 9110
        10.1.1).
        """
        body = self.body
        if self.continue_due:
            return False
        if isinstance(body, ContentLengthBody):
            return body.remaining - len(self.buffer) <= self.limits.discard_body
        if not isinstance(produced, (bytes, bytearray, FileRegion)):
            return False  # a streamed response may still read the body as it goes
        self.io_timeout = 0.0  # what has arrived only: a read that would wait fails instead
        try:
            body.limit = None
            drained = 0
            while drained <= self.limits.discard_body and (chunk := body.read(RECV_BYTES)):
                drained += len(chunk)
            return body.done
        except (HTTPError, OSError):
            return False
        finally:
            self.io_timeout = self.timeouts.body

    def after_output(self) -> int:
        """After a response or an error: WRITE while some of it is unsent, then what follows."""
        if self.out is not None:
            self.parked_at = self.progress_at = time.monotonic()
            return self.wait_for_client(self.out.wants)
        return self.after_response()

    def after_response(self) -> int:
        """The response is out: record it, then on to the next request, or close (gently).

        What is left of a Content-Length body ``will_drain`` kept the connection for is dropped:
        from the buffer now, the rest as it arrives (``skip``).
        """
        self.end_exchange()
        if not self.keep_alive:
            return self.closing()
        body = self.body
        if not body.done:
            if not isinstance(body, ContentLengthBody):
                return self.closing()
            left = body.remaining
            dropped = min(left, len(self.buffer))
            del self.buffer[:dropped]
            self.skip = left - dropped
            self.body = NO_BODY  # accounted for by ``skip``
        step = self.next_request()
        if step == READ and self.head is None and not self.linger_until:
            return self.idle()
        return step

    def closing(self) -> int:
        """The connection ends: CLOSE at once if the client has nothing more to send, else
        linger -- shut our sending side (the client reads the response, then end of file) and
        read and discard what still comes for up to ``timeouts.linger`` (RFC 9112 9.6): closing
        a socket with unread data makes the kernel send a reset, which can destroy the response
        before the client reads it (nginx's lingering close)."""
        linger = self.timeouts.linger
        if not linger or not (self.buffer or self.skip or not self.body.done or self.head is not None):
            return CLOSE
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return CLOSE
        self.buffer.clear()
        self.head = None
        self.linger_until = self.deadline = time.monotonic() + linger
        return READ

    def discard(self) -> int:
        """Lingering: read and drop what the client sends; CLOSE at its end of file."""
        try:
            for _ in range(LINGER_READS):
                if not self.sock.recv(RECV_BYTES):
                    return CLOSE
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError:
            return CLOSE
        return READ

    # -- the Source interface the body readers pull from -------------------------------------

    def read1(self, size: int) -> bytes:
        if self.buffer:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
            return data
        try:
            return self.recv(min(size, RECV_BYTES))
        except TimeoutError:
            raise RequestTimeout("the request body was not received in time") from None

    def readline(self, size: int) -> bytes:
        while True:
            newline = self.buffer.find(b"\n", 0, size)
            if newline >= 0 or len(self.buffer) >= size:
                cut = newline + 1 if newline >= 0 else size
                data = bytes(self.buffer[:cut])
                del self.buffer[:cut]
                return data
            try:
                more = self.recv(RECV_BYTES)
            except TimeoutError:
                raise RequestTimeout("the request body was not received in time") from None
            if not more:
                data = bytes(self.buffer)
                self.buffer.clear()
                return data
            self.buffer += more

    def send_continue(self) -> None:
        """RFC 9110 10.1.1: the interim 100 response, sent when the handler first reads the body."""
        self.continue_due = False
        self.write(CONTINUE, len(CONTINUE))
        self.flush_here()

    # -- writing --------------------------------------------------------------------------------

    def send_response(self, request: Request, response: Response, exchange: Exchange) -> None:
        """Write ``response`` to ``request``, counting the body bytes sent in ``exchange``,
        whose end is the connection's from here (``end_exchange``)."""
        self.exchange = exchange
        body = response.body
        try:
            try:
                head, length, chunked = self.response_head(request, response)
            except ValueError as problem:
                log.error("invalid response from handler for %s: %s", request.target, problem)
                close_body(body)
                response.status = 500
                # Only the handler's Connection fields stay: a close it asked for holds even when
                # its framing failed (an invalid Content-Length) before deciding anything.
                asked = response.headers.get_all("connection")
                response.headers = Headers([("Connection", value) for value in asked])
                response.body = body = error_response(InternalServerError()).body
                head, length, chunked = self.response_head(request, response)
            if request.method == "HEAD" or response.status in BODILESS_STATUSES:
                self.write(head, len(head))
            elif isinstance(body, (bytes, bytearray)):
                if len(body) < 65536:
                    self.write(head + body, len(head))
                else:
                    self.write(head, len(head))
                    self.write(body, 0)
            elif isinstance(body, FileRegion):
                if body.length <= SMALL_FILE_BYTES:  # one write for head and body beats sendfile
                    data = os.pread(body.file.fileno(), body.length, body.offset)
                    if len(data) != body.length:
                        raise ResponseAborted("file shorter than announced")
                    self.write(head + data, len(head))
                else:
                    self.write(head, len(head))
                    self.write_file(body)
            else:
                self.send_iterable(head, body, length, chunked)
        finally:
            out = self.out
            if out is None or not isinstance(body, FileRegion) or out.file is not body.file:
                close_body(body)

    def response_head(self, request: Request, response: Response) -> tuple[bytes, int | None, bool]:
        """The serialised head, the body length (None if unknown) and whether it is chunked.

        The keep-alive decision is applied before serialising: should the head prove invalid,
        the 500 that replaces it is framed under that decision.  It includes what becomes of a
        request body left unread (``will_drain``).
        """
        if self.keep_alive and not self.body.done:
            self.keep_alive = self.will_drain(response.body)
        framing = frame_response(
            request.method,
            request.version,
            response.status,
            response.headers,
            response.body,
            self.keep_alive,
            self.close_soon.is_set(),
            DATES.now(),
            self.server_header,
        )
        self.keep_alive = framing.keep_alive
        if self.request_id_header and "x-request-id" not in response.headers:  # the framing's list: ours
            framing.headers.append(("X-Request-ID", request.request_id))
        head = serialize_response_head(request.version, response.status, response.reason, framing.headers)
        return head, framing.length, framing.chunked

    def write(self, data: bytes | bytearray | memoryview, start: int, stop: int | None = None) -> None:
        """Send ``data`` as far as the socket takes it now; the rest waits in ``out``, behind
        whatever waits there already.  Its body is ``data[start:stop]`` (the rest is head or
        chunk framing): the exchange counts what of that the socket takes."""
        if stop is None:
            stop = len(data)
        out = self.out
        if out is not None:
            out.add(data, start, stop)
            self.push(out)
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        if sent == len(data):
            self.exchange.sent += stop - start
            return
        out = self.out = Unsent()
        out.add(data, start, stop)
        self.exchange.sent += out.drop(sent)

    def write_file(self, region: FileRegion) -> None:
        """Send a file region as far as the socket takes it now (``sendfile(2)`` on plain
        sockets, blocks through the TLS layer); the rest waits in ``out``, which then owns the
        file -- else its owner is the response, as before."""
        out = self.out
        if out is None:
            out = self.out = Unsent()
        out.file, out.offset, out.end = region.file, region.offset, region.offset + region.length
        self.push(out)
        if not out.wants:
            out.file = None

    def push(self, out: Unsent) -> int:
        """Send what the socket takes now of ``out``; the bytes moved.  ``out.wants`` says what
        the socket must be ready for next; once everything is sent it is 0 and ``self.out`` is
        cleared (the caller holding ``out`` closes it, or takes its file back)."""
        moved = 0
        pieces = out.pieces
        try:
            while True:
                while pieces:
                    sent = self.sock.send(pieces[0][0])
                    moved += sent
                    self.exchange.sent += out.drop(sent)
                if out.file is None or out.offset >= out.end:
                    break
                source = out.file.fileno()
                if isinstance(self.sock, ssl.SSLSocket):
                    block = os.pread(source, min(SEND_FILE_BLOCK, out.end - out.offset), out.offset)
                    sent = len(block)
                    if sent:
                        out.add(block, 0, sent)
                else:
                    sent = os.sendfile(self.fd, source, out.offset, out.end - out.offset)
                    moved += sent
                    self.exchange.sent += sent
                if not sent:
                    raise ResponseAborted("file shorter than announced")
                out.offset += sent
        except (BlockingIOError, ssl.SSLWantWriteError):
            out.wants = WRITE
            return moved
        except ssl.SSLWantReadError:
            out.wants = READ
            return moved
        out.wants = 0
        self.out = None
        return moved

    def flush_here(self) -> None:
        """Send everything unsent, waiting in this thread (``wait_io``: the silence allowed, the
        minimum rate)."""
        out = self.out
        if out is None:
            return
        while out.wants:
            self.wait_io(select.POLLIN if out.wants == READ else select.POLLOUT)
            moved = self.push(out)
            if self.min_rate:
                self.paced().moved += moved
        out.close()

    # -- waiting in a thread: the socket never blocks; these wait for it ----------------------

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes, waiting for them (TimeoutError after ``io_timeout`` of silence,
        or when the client falls below the minimum rate)."""
        waited = False
        while True:
            try:
                data = self.sock.recv(size)
            except (BlockingIOError, ssl.SSLWantReadError):
                self.wait_io(select.POLLIN)
                waited = True
                continue
            except ssl.SSLWantWriteError:
                self.wait_io(select.POLLOUT)
                waited = True
                continue
            if waited and self.min_rate:
                self.paced().moved += len(data)
            return data

    def wait_io(self, events: int) -> None:
        """Wait until the socket is ready for ``events``; TimeoutError after ``io_timeout`` of
        silence, or at the end of a window of waiting in which the client fell below the
        minimum rate (``porch.net.pace``; the bytes moved after each wait are its caller's to
        count).  Another pool thread may take new work meanwhile (``before_wait``)."""
        self.before_wait()
        poller = select.poll()
        poller.register(self.fd, events)
        if not self.min_rate:
            if not poller.poll(milliseconds(self.io_timeout)):
                raise TimeoutError("timed out")
            return
        pace = self.paced()
        pace.start(self.body)
        silent_until = time.monotonic() + self.io_timeout
        while True:
            now = time.monotonic()
            if not pace.judge():
                raise TimeoutError("the client is slower than the minimum rate")
            limit = min(silent_until - now, pace.left())
            if limit <= 0:
                raise TimeoutError("timed out")
            ready = poller.poll(milliseconds(limit))
            pace.waited += time.monotonic() - now
            if ready:
                return

    def send_iterable(self, head: bytes, body: Iterable[bytes], length: int | None, chunked: bool) -> None:
        """Stream an iterable body; exactly ``length`` bytes when known (PEP 3333 truncation).

        What the client has not taken yet waits in ``out`` while the body is produced; past
        ``limits.response_buffer`` bytes this thread waits for the client (``flush_here``).
        """
        produced = 0
        pending = head
        buffer = self.limits.response_buffer
        try:
            for chunk in body:
                if not chunk:
                    continue
                if length is not None:
                    chunk = chunk[: length - produced]
                produced += len(chunk)
                pending += encode_chunk(chunk) if chunked else chunk
                stop = len(pending) - 2 if chunked else len(pending)  # a chunk's data is followed by CRLF
                self.write(pending, stop - len(chunk), stop)
                pending = b""
                if self.out is not None and self.out.size > buffer:
                    self.flush_here()
                if length is not None and produced >= length:
                    break
        except (OSError, ResponseAborted):
            raise
        except ClientDisconnected as gone:  # a name of its own: mypyc types a name by its first except clause
            raise ResponseAborted("the client went away") from gone
        except Exception as error:
            log.exception("error while streaming the response body")
            raise ResponseAborted(str(error)) from error
        if chunked:
            pending += LAST_CHUNK
        if pending:
            self.write(pending, len(pending))
        if length is not None and produced < length:
            raise ResponseAborted(f"body ended after {produced} of {length} bytes")

    def reject(self, error: HTTPError, line: str | None = None) -> None:
        """Answer a request that never became a ``Request`` (bad syntax, timeout); the response
        may be left in ``out`` (see ``after_output``), and is recorded when it has ended.
        ``line`` is the request line for the log, when known; else the start of the buffer."""
        response = error_response(error)
        if line is None:
            line = first_line(bytes(self.buffer[:512]))
        self.exchange = Exchange(self.pipeline, self.client, self.head_started, None, line)
        self.exchange.response = response
        headers = [
            *response.headers,
            ("Content-Length", str(len(response.body))),  # type: ignore[arg-type]
            ("Date", DATES.now()),
            ("Connection", "close"),
        ]
        if self.server_header:
            headers.append(("Server", self.server_header))
        head = serialize_response_head("HTTP/1.1", response.status, None, headers)
        try:
            self.write(head + response.body, len(head))  # type: ignore[operator]
        except OSError:
            pass
        self.keep_alive = False

    def end_exchange(self) -> None:
        """The response has ended, all sent or cut off: record it, with the body bytes sent."""
        exchange, self.exchange = self.exchange, NO_EXCHANGE
        exchange.end()

    def close(self) -> None:
        """Close the socket; a response still on its way is cut off, and recorded so."""
        if self.counted:
            self.counted = False
            self.pipeline.metrics.add("connections_closed")
            self.on_close()
        self.end_exchange()
        if self.out is not None:
            self.out.close()
            self.out = None
        try:
            self.sock.close()
        except OSError:
            pass


def first_line(data: bytes) -> str:
    """The request line a malformed head starts with, as far as it goes, for the access log."""
    return data.lstrip(b"\r\n").split(b"\r\n", 1)[0][:512].decode("latin-1")


def close_body(body: object) -> None:
    """Release a response body: files are closed, iterables get their ``close()`` (PEP 3333)."""
    target = body.file if isinstance(body, FileRegion) else body
    close = getattr(target, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("error closing the response body")
