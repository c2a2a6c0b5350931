"""Clock helpers every layer may use: poll timeouts, and texts made once per second.

A leaf module (it imports nothing of porch), so the connection, the logs and the CGI runner
share one rounding rule for ``poll(2)`` and one cache for per-second texts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def milliseconds(seconds: float) -> int:
    """A poll timeout: never negative, rounded up so that a wait does not end early."""
    return max(0, math.ceil(seconds * 1000))


class SecondCache:
    """A text that depends only on the current second (a ``Date`` header, a log timestamp),
    rendered at most once per second: every response and access line needs one.

    Threads may race to render the same second; they compute the same text, so no lock.
    """

    def __init__(self, render: Callable[[int], str]) -> None:
        self.render = render
        self.second = -1
        self.text = ""

    def now(self) -> str:
        return self.at(time.time())

    def at(self, moment: float) -> str:
        """The text of the second ``moment`` (unix time) falls in."""
        second = int(moment)
        if second != self.second:
            self.text = self.render(second)
            self.second = second
        return self.text
