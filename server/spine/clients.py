"""The instance's table of client addresses in shared memory: rate-limit buckets and open connections.

The master makes it once, before it forks any worker (``Arbiter.__init__``, like the board), so
every worker of every generation, and every child a forking worker makes, maps the same table: a
client's limits hold across the workers of the instance and across reloads.

It is an open-addressing hash table of ``ENTRIES`` fixed-size entries keyed by a client's address
-- 16 bytes, IPv4 in its v4-mapped IPv6 form, so ``1.2.3.4`` and ``::ffff:1.2.3.4`` are one
client -- and a scope: ``CONNECTIONS`` for the connections it holds open, a mount's number (2 and
up) for that mount's rate limit.  A key lives within ``PROBES`` entries of its home, which a keyed
hash (BLAKE2b, with a secret of the instance) chooses, so clients cannot aim at one neighbourhood.
Entries are never emptied, so a lookup stops at the first empty one; an entry whose state is the
same as having none -- a bucket full again, no connection open -- is reused by the next key that
needs a place.  When no entry of a key's neighbourhood can be had, the request or connection is
admitted unchecked (fail open), and the error log says how many were.

A rate limit is a token bucket kept as one number, the time at which the bucket is full again (the
generic cell rate algorithm): a request moves it ``1 / rate`` later, and is refused while it lies
more than ``burst / rate`` ahead -- the bucket holds ``1 + burst`` tokens.

Open connections are counted per worker: each worker claims a column of its own (at its first
counted connection, by its pid), each entry counts the client's connections in every column and
their total.  A worker killed with SIGKILL never takes its connections off, so the master, when it
reaps a worker, zeroes that worker's column (``forget``).

One process-shared lock guards the table, held for a few microseconds at a time.  A process that
cannot get it within ``LOCK_SECONDS`` admits rather than delay a request.  The lock records its
holder's pid, so that the master can release it for a holder that died (``unlock_if_abandoned``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import mmap
import multiprocessing
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable

from porch.http.messages import nothing

log = logging.getLogger(__name__)

ENTRIES = 4096
PROBES = 32  # how far from its home a key may live
WORKER_COLUMNS = 64  # workers counting connections at once (a reload's two generations included)
EMPTY, CONNECTIONS = 0, 1  # scopes that are not a mount's number
LOCK_SECONDS = 0.02  # a request waits no longer for the table: then it is admitted unchecked
FORGET_SECONDS = 1.0  # the master may wait that long to take a dead worker's connections off
SLACK_SECONDS = 1e-6  # float rounding in bucket times is not a refusal
UNCHECKED_LOG_SECONDS = 10.0
V4_MAPPED = bytes(10) + b"\xff\xff"
PID = struct.Struct("=i")  # at 0: the pid holding the lock, 0 when nobody does
OWNERS_OFFSET = 8
OWNERS = struct.Struct(f"={WORKER_COLUMNS}i")  # at OWNERS_OFFSET: the pid owning each column, 0 when free
HEAD_BYTES = OWNERS_OFFSET + OWNERS.size
ENTRY = struct.Struct("=16sIId")  # address, scope, connections open (all columns), when the bucket is full again
COLUMNS = struct.Struct(f"={WORKER_COLUMNS}I")  # connections open in each worker's column
ENTRY_BYTES = ENTRY.size + COLUMNS.size
NO_CONNECTIONS = bytes(COLUMNS.size)


def address_key(host: str) -> bytes | None:
    """The 16 bytes naming a client: IPv6 as it is (without a zone), IPv4 as ``::ffff:a.b.c.d``;
    None for what is not an IP address."""
    try:
        return V4_MAPPED + socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return None


class Tally:
    """Events the error log reports at most once every ``seconds``, each line with how many there
    were since the last one (the count goes first into ``message``)."""

    def __init__(self, logger: logging.Logger, seconds: float, message: str) -> None:
        self.logger = logger
        self.seconds = seconds
        self.message = message
        self.count = 0
        self.said = -math.inf
        self.lock = threading.Lock()

    def note(self, *args: object) -> None:
        with self.lock:
            self.count += 1
            now = time.monotonic()
            if now - self.said < self.seconds:
                return
            count, self.count, self.said = self.count, 0, now
        self.logger.warning(self.message, count, *args)


class ClientTable:
    """Rate-limit buckets and connection counts of client addresses, shared by every process of
    the instance (see the module's docstring)."""

    def __init__(self, entries: int = ENTRIES) -> None:
        self.entries = entries
        self.probes = min(PROBES, entries)
        self.memory = mmap.mmap(-1, HEAD_BYTES + entries * ENTRY_BYTES)
        self.words = memoryview(self.memory).cast("I")  # the columns, by 4-byte word
        self.lock = multiprocessing.Lock()
        self.secret = secrets.token_bytes(16)
        self.column = -1  # this process's column, once it has counted a connection
        self.column_pid = 0  # the process that claimed ``column`` (a forked one claims its own)
        self.unreleased: list[tuple[bytes, int]] = []  # closes that met a busy lock: applied at the next hold
        self.busy = Tally(log, UNCHECKED_LOG_SECONDS, "client table busy: %d admitted unchecked since the last line")
        self.full = Tally(
            log, UNCHECKED_LOG_SECONDS, f"client table full ({entries}): %d admitted unchecked since the last line"
        )

    # -- rate limits --------------------------------------------------------------------------------

    def take_token(self, host: str, scope: int, rate: float, burst: int, now: float | None = None) -> float:
        """Take a token from the bucket of ``host`` for ``scope`` (a mount's number): 0.0 when the
        request may go on, else the seconds until a token is there."""
        address = address_key(host)
        if address is None:
            return 0.0
        now = time.monotonic() if now is None else now
        interval = 1.0 / rate
        if not self.hold():
            return 0.0
        try:
            offset = self.place(address, scope, now)
            if offset is None:
                self.full.note()
                return 0.0
            full_at: float = max(ENTRY.unpack_from(self.memory, offset)[3], now)
            wait = full_at - now - burst * interval
            if wait > SLACK_SECONDS:
                return wait
            ENTRY.pack_into(self.memory, offset, address, scope, 0, full_at + interval)
            return 0.0
        finally:
            self.let_go()

    # -- connections --------------------------------------------------------------------------------

    def open_connection(self, host: str, limit: int) -> Callable[[], None] | None:
        """Count a new connection of ``host`` unless it holds ``limit`` already: what takes it off
        again when it closes, or None (nothing counted) to refuse it."""
        address = address_key(host)
        if address is None or not self.hold():
            return nothing
        try:
            column = self.own_column()
            if column < 0:
                return nothing
            offset = self.place(address, CONNECTIONS, 0.0)
            if offset is None:
                self.full.note()
                return nothing
            total = ENTRY.unpack_from(self.memory, offset)[2]
            if total >= limit:
                return None
            ENTRY.pack_into(self.memory, offset, address, CONNECTIONS, total + 1, 0.0)
            self.words[self.word(offset, column)] += 1
        finally:
            self.let_go()
        return functools.partial(self.close_connection, address, column)

    def close_connection(self, address: bytes, column: int) -> None:
        """A connection counted in ``column`` has closed (with a busy lock: at the next hold)."""
        self.unreleased.append((address, column))
        if self.hold():
            self.let_go()

    def forget(self, pid: int) -> None:
        """The master reaped worker ``pid``: its connections are closed, whether it could say so
        or not (SIGKILL), so they come off the counts, and its column is free again."""
        self.unlock_if_abandoned()
        owners = OWNERS.unpack_from(self.memory, OWNERS_OFFSET)
        if pid not in owners:
            return
        column = owners.index(pid)
        if not self.lock.acquire(True, FORGET_SECONDS):
            log.error("client table busy: the connections of worker %d stay counted", pid)
            return
        try:
            for entry in range(self.entries):
                offset = HEAD_BYTES + entry * ENTRY_BYTES
                address, scope, total, _ = ENTRY.unpack_from(self.memory, offset)
                word = self.word(offset, column)
                if scope == CONNECTIONS and (counted := self.words[word]):
                    ENTRY.pack_into(self.memory, offset, address, scope, total - counted, 0.0)
                    self.words[word] = 0
            PID.pack_into(self.memory, OWNERS_OFFSET + PID.size * column, 0)
        finally:
            self.lock.release()

    def own_column(self) -> int:
        """This process's column, claimed the first time (under the lock); -1 when all are taken."""
        pid = os.getpid()
        if self.column_pid != pid:
            owners = OWNERS.unpack_from(self.memory, OWNERS_OFFSET)
            self.column = owners.index(0) if 0 in owners else -1
            self.column_pid = pid
            if self.column < 0:
                log.error("more than %d workers: this one does not count connections per client", WORKER_COLUMNS)
            else:
                PID.pack_into(self.memory, OWNERS_OFFSET + PID.size * self.column, pid)
        return self.column

    # -- the table and its lock ---------------------------------------------------------------------

    def hold(self) -> bool:
        """Take the lock within ``LOCK_SECONDS`` (and apply closes still pending); False, counted as
        a request admitted unchecked, when it is busy."""
        if not self.lock.acquire(True, LOCK_SECONDS):
            self.busy.note()
            return False
        PID.pack_into(self.memory, 0, os.getpid())
        while self.unreleased:
            self.release_one(*self.unreleased.pop())
        return True

    def let_go(self) -> None:
        PID.pack_into(self.memory, 0, 0)
        self.lock.release()

    def release_one(self, address: bytes, column: int) -> None:
        offset = self.find(address, CONNECTIONS)
        if offset is None or OWNERS.unpack_from(self.memory, OWNERS_OFFSET)[column] != os.getpid():
            return  # the master has forgotten this column already
        word = self.word(offset, column)
        if self.words[word]:
            self.words[word] -= 1
            total = ENTRY.unpack_from(self.memory, offset)[2]
            ENTRY.pack_into(self.memory, offset, address, CONNECTIONS, total - 1, 0.0)

    def unlock_if_abandoned(self) -> None:
        """For the master: release the lock if the process holding it has died (its pid is
        cleared first, so the next holder's is never mistaken for it)."""
        holder = PID.unpack_from(self.memory, 0)[0]
        if not holder:
            return
        try:
            os.kill(holder, 0)
        except ProcessLookupError:
            PID.pack_into(self.memory, 0, 0)
            self.lock.release()
            log.warning("process %d died holding the client table's lock: released", holder)
        except PermissionError:
            pass  # alive, as another user

    def home(self, address: bytes, scope: int) -> int:
        digest = hashlib.blake2b(address + scope.to_bytes(4, "little"), digest_size=8, key=self.secret).digest()
        return int.from_bytes(digest, "little") % self.entries

    def offsets(self, address: bytes, scope: int) -> list[int]:
        """The byte offsets of the entries where the key may live, home first."""
        home = self.home(address, scope)
        return [HEAD_BYTES + (home + probe) % self.entries * ENTRY_BYTES for probe in range(self.probes)]

    def find(self, address: bytes, scope: int) -> int | None:
        """The offset of the key's entry, None when it has none."""
        for offset in self.offsets(address, scope):
            found, found_scope, _, _ = ENTRY.unpack_from(self.memory, offset)
            if found_scope == EMPTY:
                return None
            if found_scope == scope and found == address:
                return offset
        return None

    def place(self, address: bytes, scope: int, now: float) -> int | None:
        """The offset of the key's entry, made (in an empty entry or one that is as good as none
        at ``now``) if it has none; None when its neighbourhood is full."""
        reusable = None
        for offset in self.offsets(address, scope):
            found, found_scope, total, full_at = ENTRY.unpack_from(self.memory, offset)
            if found_scope == scope and found == address:
                return offset
            if reusable is None and (found_scope == EMPTY or (total == 0 and full_at <= now)):
                reusable = offset
            if found_scope == EMPTY:
                break
        if reusable is not None:
            ENTRY.pack_into(self.memory, reusable, address, scope, 0, 0.0)
            self.memory[reusable + ENTRY.size : reusable + ENTRY_BYTES] = NO_CONNECTIONS
        return reusable

    @staticmethod
    def word(offset: int, column: int) -> int:
        return (offset + ENTRY.size) // 4 + column
