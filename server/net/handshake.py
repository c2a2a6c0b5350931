"""The server side of one TLS handshake, done before the connection's first request.

How this works::

    accepted socket, wrapped with do_handshake_on_connect=False (see porch.net.tls)
      └─ Connection.fill() ──► begin() once, then step() each time the socket is readable:
                               True done, False wait, None failed

The connection owns the deadline: it starts the header timeout when the handshake begins, so
the handshake and the first request head must together arrive within it.  A failure is logged
here (``failed``) and the connection closes.
"""

from __future__ import annotations

import logging
import ssl
import time

from porch.http.messages import Address
from porch.net.tls import failure_reason

# A failed handshake is reported as the connection's, under the logger operators filter on.
log = logging.getLogger("porch.net.connection")


class Handshake:
    """The TLS handshake of one accepted socket, stepped or completed by its connection."""

    __slots__ = ("client", "done", "sock", "started")

    def __init__(self, sock: ssl.SSLSocket, client: Address) -> None:
        self.sock = sock
        self.client = client
        self.started: float | None = None  # when the handshake began; None until then
        self.done = False

    def begin(self) -> float:
        """Note the start of the handshake; returns it, for the connection's deadline."""
        self.started = time.monotonic()
        return self.started

    def step(self) -> bool | None:
        """One non-blocking step: True once done, False to wait for the socket to be readable
        again, None if it failed (the caller closes the connection).

        SSLWantWriteError (the kernel send buffer is full, which a handshake's few kilobytes do
        not do unless the client stops reading) also waits for readability: such a client gets
        no further, and the header deadline closes the connection.
        """
        try:
            self.sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError as error:
            self.failed(error)
            return None
        self.done = True
        return True

    def failed(self, error: OSError) -> None:
        """Log a failed handshake: info for TLS errors (a plain-HTTP client, no certificate),
        debug for a peer that just went away.  Scanners make these common; they are not errors."""
        peer = f"{self.client[0]}:{self.client[1]}" if isinstance(self.client, tuple) else "a unix socket client"
        quiet = isinstance(error, ssl.SSLEOFError) or not isinstance(error, (ssl.SSLError, TimeoutError))
        log.log(
            logging.DEBUG if quiet else logging.INFO, "TLS handshake with %s failed: %s", peer, failure_reason(error)
        )
