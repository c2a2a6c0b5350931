"""A bounded keep-alive load for the tests that restart, upgrade or kill servers under it.

``Load(url, clients)`` runs ``clients`` threads, each with its own ``requests.Session`` (one
kept-alive connection, reopened after a ``Connection: close``; with ``keep_alive=False`` a new
connection for every request), sending GETs one after another
until the ``with`` block ends -- or at the latest after ``MAX_SECONDS`` or ``MAX_REQUESTS``, so a
test that goes wrong cannot load the machine for ever.  Loopback only: ``url`` must name
127.0.0.1 or ::1.  Each request is numbered in its query string, so the servers' access logs can
be matched to what was sent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

import requests

MAX_SECONDS = 60.0
MAX_REQUESTS = 50_000
LOOPBACK = ("127.0.0.1", "::1", "[::1]")


@dataclass
class Outcome:
    """What one load saw: successes, failures (with what went wrong), and when each failure was."""

    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sent(self) -> int:
        return self.ok + len(self.failures)

    def failed_after(self, moment: float) -> list[str]:
        return [what for when, what in self.failures if when >= moment]


class Load:
    def __init__(self, url: str, clients: int = 4, timeout: float = 10.0, keep_alive: bool = True) -> None:
        host = urlsplit(url).hostname
        if host not in LOOPBACK and f"[{host}]" not in LOOPBACK:
            raise ValueError(f"load runs against loopback addresses only, not {host}")
        self.url = url
        self.timeout = timeout
        self.headers = {} if keep_alive else {"Connection": "close"}  # else a new connection each time
        self.outcome = Outcome()
        self.stop = threading.Event()
        self.started = 0.0
        self.threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(clients)]

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.timeout + 5)

    def client(self, number: int) -> None:
        outcome = self.outcome
        with requests.Session() as session:
            sequence = 0
            while not self.stop.is_set() and time.monotonic() - self.started < MAX_SECONDS:
                with outcome.lock:
                    if outcome.sent >= MAX_REQUESTS:
                        return
                sequence += 1
                try:
                    response = session.get(
                        f"{self.url}?load={number}-{sequence}", headers=self.headers, timeout=self.timeout
                    )
                    failure = None if response.status_code == 200 else f"status {response.status_code}"
                except requests.RequestException as error:
                    failure = f"{type(error).__name__}: {error}"
                with outcome.lock:
                    if failure is None:
                        outcome.ok += 1
                    else:
                        outcome.failures.append((time.monotonic(), failure))

    def wait_for(self, requests_done: int) -> None:
        """Until at least ``requests_done`` more requests were answered (at most 10 s)."""
        target = self.outcome.ok + requests_done
        deadline = time.monotonic() + 10
        while self.outcome.ok < target and time.monotonic() < deadline:
            time.sleep(0.01)
