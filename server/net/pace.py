"""The minimum data rate of a transfer with a client, sans I/O: Apache mod_reqtimeout's MinRate.

A per-read timeout alone lets a client hold a request forever by sending (or reading) one byte
just before each timeout.  So a request body being read, or a response being written, must also
keep an average rate: for every ``window`` seconds spent *waiting for the client*, at least
``rate * window`` bytes must have moved.

Only waiting counts -- a handler computing between two reads, or producing its response, is not
the client's doing -- and so do only the bytes that moved after a wait (a transfer that never
waits is never judged).  The connection adds both (``waited``, ``moved``); ``judge`` says, at the
end of each window, whether the client kept up, and starts the next window.
"""

from __future__ import annotations


class Pace:
    """Waiting time and bytes moved in the current window of one request's transfers."""

    __slots__ = ("moved", "owner", "rate", "waited", "window")

    def __init__(self, rate: float, window: float) -> None:
        self.rate = rate  # bytes per second
        self.window = window  # seconds of waiting per judgement
        self.waited = 0.0
        self.moved = 0
        self.owner: object = None  # what the counts are about (a request), so a new one restarts them

    def start(self, owner: object) -> None:
        """Count for ``owner`` from here; counts already made for it are kept."""
        if owner is not self.owner:
            self.owner = owner
            self.waited = 0.0
            self.moved = 0

    def left(self) -> float:
        """Seconds of waiting until the current window is judged."""
        return self.window - self.waited

    def judge(self) -> bool:
        """False if a window of waiting has passed with fewer than ``rate`` bytes a second moved;
        a finished window, judged, gives way to the next."""
        if self.waited < self.window:
            return True
        kept_up = self.moved >= self.rate * self.waited
        self.waited = 0.0
        self.moved = 0
        return kept_up
