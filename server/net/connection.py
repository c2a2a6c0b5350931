"""Socket I/O for one client connection: read heads, feed bodies, write responses, keep alive.

Two callers drive a ``Connection``:

- a pool thread of the threading model calls ``fill()`` whenever the socket is readable, until a
  complete request head is buffered, then ``serve(wait=False)``, which answers every request
  whose head is already buffered (pipelining) and returns when the connection goes idle;
- a forked child calls ``serve(wait=True)``, which waits for each next head itself, under the
  keep-alive and header timeouts.

The socket is always non-blocking.  A read or write that cannot proceed waits in ``wait_io``
(one poll, bounded by ``timeouts.body``), which first tells the thread pool that this thread is
about to wait (``before_wait``); the common case -- data there, window open -- costs no poll.

Either way each request runs through ``Pipeline.run`` with ``send_response`` as its writer: the one
place where every handler type's response is framed -- HEAD, Content-Length, chunked encoding,
``Date``/``Server`` and ``Connection``, as ``porch.http.response.frame_response`` decides -- and
written, file bodies with ``sendfile``.  A TLS handshake is ``porch.net.handshake``'s; the
connection only drives it.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable

from porch.config.settings import Config
from porch.http.body import body_reader
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
from porch.http.messages import SMALL_FILE_BYTES, Address, FileRegion, Headers, Request, Response, nothing
from porch.http.response import LAST_CHUNK, encode_chunk, frame_response, serialize_response_head
from porch.net.handshake import Handshake
from porch.spine.pipeline import Pipeline, error_response
from porch.timing import SecondCache, milliseconds

log = logging.getLogger(__name__)

RECV_BYTES = 65536
SEND_FILE_BLOCK = 262144  # TLS: file bodies are encrypted and sent in blocks of this size
DRAIN_LIMIT_BYTES = 65536  # unread request body we read and discard to keep a connection alive
DRAIN_TIMEOUT_SECONDS = 1.0
# While the server drains, an idle keep-alive connection gets this long to send one more request
# (answered with Connection: close) before it is closed; closing it at once would race a client
# that is sending right now.
DRAIN_IDLE_SECONDS = 1.0
IDLE_POLL_SECONDS = 0.25
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ResponseAborted(Exception):
    """The response could not be completed; the connection must be closed, not reused."""


DATES = SecondCache(format_http_date)  # the Date header (RFC 9110 6.6.1)


class Connection:
    """One client connection and its buffered, not yet parsed bytes."""

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
    ) -> None:
        self.sock = sock
        sock.setblocking(False)  # always: waits are ours (``wait_io``), so none costs a poll first
        self.fd = sock.fileno()  # kept after close, to stop watching the right descriptor
        self.draining = draining  # set when the server stops: answer with Connection: close
        self.before_wait = before_wait  # told before any wait, so another pool thread may take work
        self.client = client
        self.server = server
        self.scheme = scheme
        self.pipeline = pipeline
        self.limits = config.limits
        self.timeouts = config.timeouts
        self.io_timeout = config.timeouts.body  # how long one read or write may wait
        self.server_header = config.server_header
        self.buffer = bytearray()
        self.deadline = time.monotonic() + self.timeouts.header
        self.head_started = time.monotonic()
        self.keep_alive = True
        self.continue_sent = False
        self.drain_started: float | None = None
        # TLS: the handshake, until the first head's bytes arrive (they start its deadline)
        self.handshake = Handshake(sock, client) if isinstance(sock, ssl.SSLSocket) else None
        self.in_idle_set = False  # registered in a pool's epoll set (``ThreadPoolServer.arm``)

    # -- before serving: non-blocking reads until a head is complete ----------------------------

    def fill(self) -> bool | None:
        """Read what is available.  True: a head (or a protocol error) is ready to serve;
        False: wait for more; None: the peer closed or failed.

        On TLS the handshake comes first, one non-blocking step per call (``Handshake.step``);
        the handshake and the first head must together arrive within the header timeout.
        ``SSLSocket.recv`` raises SSLWantReadError where a plain socket raises BlockingIOError.
        """
        handshake = self.handshake
        if handshake is not None and not handshake.done:
            if handshake.started is None:
                self.deadline = handshake.begin() + self.timeouts.header
            step = handshake.step()
            if step is not True:
                return step
        try:
            data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError:
            return None
        if not data:
            return None
        if not self.buffer:
            self.head_started = time.monotonic()
            started = self.head_started
            if handshake is not None:  # the first head: its time began with the handshake
                started, self.handshake = handshake.started or started, None
            self.deadline = started + self.timeouts.header
        self.buffer += data
        self.buffer_pending()
        return self.head_ready()

    def head_ready(self) -> bool:
        try:
            return find_head_end(self.buffer, self.limits) >= 0
        except ProtocolError:
            return True  # a worker writes the error response

    def park(self) -> None:
        """Going idle: set the deadline of the state we are in (a head started, or none)."""
        now = time.monotonic()
        self.deadline = now + (self.timeouts.header if self.buffer else self.timeouts.keepalive)

    def expire(self) -> None:
        """The idle deadline passed: 408 if a head was started (RFC 9110 15.5.9), then close."""
        if self.buffer:
            self.reject(RequestTimeout("the request head was not received in time"))
        self.close()

    # -- TLS ------------------------------------------------------------------------------------

    def complete_handshake(self) -> bool:
        """The blocking TLS handshake of a forked child, within the header timeout.

        True when done (or not TLS); False if it failed or timed out, the connection closed.
        """
        handshake = self.handshake
        if handshake is None or handshake.done or handshake.complete(self.timeouts.header):
            return True
        self.close()
        return False

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
            if not self.buffer:
                self.head_started = time.monotonic()
            self.buffer += data
            moved += len(data)
        return moved

    # -- serving ------------------------------------------------------------------------------

    def serve(self, wait: bool) -> bool:
        """Answer requests until none is buffered (wait=False) or the connection ends.

        Returns True if the connection is alive and idle (park it), False when it is done: the
        caller closes it (after it stops watching the descriptor).
        """
        try:
            while True:
                end = self.wait_for_head() if wait else find_head_end(self.buffer, self.limits)
                if end is None:
                    return False
                if end < 0:
                    return True
                if not self.serve_one(end):
                    return False
        except ProtocolError as error:
            self.reject(error)
        except (OSError, ResponseAborted):
            pass
        except Exception:
            log.exception("unexpected error on connection from %s", self.client)
        return False

    def wait_for_head(self) -> int | None:
        """Block until a head is buffered; None on EOF or timeout (408 if a head had started)."""
        started = time.monotonic()
        deadline = started + (self.timeouts.header if self.buffer else self.timeouts.keepalive)
        while (end := find_head_end(self.buffer, self.limits)) < 0:
            now = time.monotonic()
            if self.draining.is_set() and not self.buffer:
                deadline = min(deadline, now + DRAIN_IDLE_SECONDS, self.drain_deadline(now))
            remaining = deadline - now
            if remaining <= 0:
                if self.buffer:
                    self.reject(RequestTimeout("the request head was not received in time"))
                return None
            try:
                data = self.recv(RECV_BYTES, min(remaining, IDLE_POLL_SECONDS))
            except TimeoutError:
                continue
            if not data:
                return None
            if not self.buffer:
                self.head_started = time.monotonic()
                deadline = self.head_started + self.timeouts.header
            self.buffer += data
        return end

    def drain_deadline(self, now: float) -> float:
        """When this idle connection must close, the server having started to drain."""
        if self.drain_started is None:
            self.drain_started = now
        return self.drain_started + DRAIN_IDLE_SECONDS

    def serve_one(self, end: int) -> bool:
        """Parse the head ending at ``end``, run the pipeline; True if the connection may go on."""
        head_bytes = bytes(self.buffer[:end])
        del self.buffer[:end]
        try:
            head = parse_head(head_bytes, self.limits)
        except ProtocolError as error:
            self.reject(error, head_bytes)
            return False
        self.keep_alive = head.keep_alive
        self.continue_sent = False
        request = self.build_request(head)
        if not self.pipeline.run(request, self.send_response):
            return False
        return self.keep_alive and self.finish_body(request, head)

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
        if self.buffer:
            return False  # it sent more: a pipelined request is waiting
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLRDHUP)
        return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))

    def finish_body(self, request: Request, head: RequestHead) -> bool:
        """Discard a small unread body so the connection can be reused; else it must close."""
        if request.body.done:
            return True
        if head.expect_continue and not self.continue_sent:
            return False  # the client may or may not send the body now: framing is unknown
        self.io_timeout = DRAIN_TIMEOUT_SECONDS
        try:
            request.body.limit = None
            drained = 0
            while drained <= DRAIN_LIMIT_BYTES and (chunk := request.body.read(16384)):
                drained += len(chunk)
            return request.body.done
        except (HTTPError, OSError):
            return False
        finally:
            self.io_timeout = self.timeouts.body

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
        self.continue_sent = True
        self.send_all(CONTINUE)

    # -- writing --------------------------------------------------------------------------------

    def send_response(self, request: Request, response: Response) -> int:
        """Write ``response`` to ``request``; returns the body bytes sent."""
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
                self.send_all(head)
                return 0
            if isinstance(body, (bytes, bytearray)):
                self.send_all(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    self.send_all(body)
                return len(body)
            if isinstance(body, FileRegion):
                if body.length <= SMALL_FILE_BYTES:  # one write for head and body beats sendfile
                    data = os.pread(body.file.fileno(), body.length, body.offset)
                    if len(data) != body.length:
                        raise ResponseAborted("file shorter than announced")
                    self.send_all(head + data)
                    return len(data)
                self.send_all(head)
                return self.send_file(body)
            return self.send_iterable(head, body, length, chunked)
        finally:
            close_body(body)

    def response_head(self, request: Request, response: Response) -> tuple[bytes, int | None, bool]:
        """The serialised head, the body length (None if unknown) and whether it is chunked.

        The keep-alive decision is applied before serialising: should the head prove invalid,
        the 500 that replaces it is framed under that decision.
        """
        framing = frame_response(
            request.method,
            request.version,
            response.status,
            response.headers,
            response.body,
            self.keep_alive,
            self.draining.is_set(),
            DATES.now(),
            self.server_header,
        )
        self.keep_alive = framing.keep_alive
        head = serialize_response_head(request.version, response.status, response.reason, framing.headers)
        return head, framing.length, framing.chunked

    def send_file(self, region: FileRegion) -> int:
        """``sendfile(2)`` on plain sockets; through the TLS layer in blocks otherwise."""
        offset, end = region.offset, region.offset + region.length
        source = region.file.fileno()
        while offset < end:
            if isinstance(self.sock, ssl.SSLSocket):
                block = os.pread(source, min(SEND_FILE_BLOCK, end - offset), offset)
                if block:
                    self.send_all(block)
                sent = len(block)
            else:
                try:
                    sent = os.sendfile(self.fd, source, offset, end - offset)
                except BlockingIOError:
                    self.wait_io(select.POLLOUT)
                    continue
            if not sent:
                raise ResponseAborted("file shorter than announced")
            offset += sent
        return region.length

    # -- waiting: the socket never blocks; these wait for it, each wait bounded by io_timeout ---

    def recv(self, size: int, timeout: float | None = None) -> bytes:
        """Up to ``size`` bytes, waiting for them (TimeoutError after ``io_timeout``)."""
        while True:
            try:
                return self.sock.recv(size)
            except (BlockingIOError, ssl.SSLWantReadError):
                self.wait_io(select.POLLIN, timeout)
            except ssl.SSLWantWriteError:
                self.wait_io(select.POLLOUT, timeout)

    def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``, waiting for the client to read when its window is full."""
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                self.wait_io(select.POLLOUT)
                continue
            except ssl.SSLWantReadError:
                self.wait_io(select.POLLIN)
                continue
            view = view[sent:]

    def wait_io(self, events: int, timeout: float | None = None) -> None:
        """Wait until the socket is ready for ``events``; TimeoutError if it is not in time.

        Another pool thread may take new work meanwhile (``before_wait``).
        """
        self.before_wait()
        poller = select.poll()
        poller.register(self.fd, events)
        limit = self.io_timeout if timeout is None else timeout
        if not poller.poll(milliseconds(limit)):
            raise TimeoutError("timed out")

    def send_iterable(self, head: bytes, body: Iterable[bytes], length: int | None, chunked: bool) -> int:
        """Stream an iterable body; exactly ``length`` bytes when known (PEP 3333 truncation)."""
        sent = 0
        pending = head
        try:
            for chunk in body:
                if not chunk:
                    continue
                if length is not None:
                    chunk = chunk[: length - sent]
                sent += len(chunk)
                pending += encode_chunk(chunk) if chunked else chunk
                self.send_all(pending)
                pending = b""
                if length is not None and sent >= length:
                    break
        except (OSError, ResponseAborted):
            raise
        except ClientDisconnected as error:
            raise ResponseAborted("the client went away") from error
        except Exception as error:
            log.exception("error while streaming the response body")
            raise ResponseAborted(str(error)) from error
        if chunked:
            pending += LAST_CHUNK
        if pending:
            self.send_all(pending)
        if length is not None and sent < length:
            raise ResponseAborted(f"body ended after {sent} of {length} bytes")
        return sent

    def reject(self, error: HTTPError, head_bytes: bytes | None = None) -> None:
        """Answer a request that never became a ``Request`` (bad syntax, timeout) and log it."""
        response = error_response(error)
        data = head_bytes if head_bytes is not None else bytes(self.buffer[:512])
        line = data.lstrip(b"\r\n").split(b"\r\n", 1)[0][:512].decode("latin-1")
        headers = [
            *response.headers,
            ("Content-Length", str(len(response.body))),  # type: ignore[arg-type]
            ("Date", DATES.now()),
            ("Connection", "close"),
        ]
        if self.server_header:
            headers.append(("Server", self.server_header))
        payload = serialize_response_head("HTTP/1.1", response.status, None, headers) + response.body  # type: ignore[operator]
        sent = 0
        try:
            self.io_timeout = 1.0
            self.send_all(payload)
            sent = len(response.body)  # type: ignore[arg-type]
        except OSError:
            pass
        self.keep_alive = False
        self.pipeline.log_rejected(self.client, line, response.status, sent, self.head_started)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def close_body(body: object) -> None:
    """Release a response body: files are closed, iterables get their ``close()`` (PEP 3333)."""
    target = body.file if isinstance(body, FileRegion) else body
    close = getattr(target, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("error closing the response body")
