"""The forking model: ``ForkingServer``, a child process per connection.

``socketserver.ForkingMixIn`` on the acceptor: each accepted connection is served in a child of
its own, at most ``max_children`` at once, until it goes idle.  A drain sends the children
SIGTERM (a request in progress finishes, an idle connection gets ``DRAIN_IDLE_SECONDS`` for one
more); children still running when the server closes are killed.
"""

from __future__ import annotations

import os
import signal
import socketserver
from collections.abc import Sequence

from porch.config.settings import Config
from porch.net.connection import Connection
from porch.net.listener import BoundListener
from porch.spine.pipeline import Pipeline
from porch.workers.selector import SelectorServer


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
