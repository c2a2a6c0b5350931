"""Small files kept in memory, checked against the stat each request makes anyway.

A small static file costs more in system calls -- open, fstat, pread, close, and a stat for its
".gz" sibling -- than in bytes.  ``SmallFiles`` keeps the content of files up to
``SMALL_FILE_BYTES`` (porch.http.messages: the connection sends such a body with its head in one
write), by path, valid while the file's identity (device, inode, size and modification time in
nanoseconds) is what the request's own stat found: a file that changed is read again on its next
request, so nothing stale is ever served.  That a file has no ".gz"
sibling is remembered for ``SIBLING_SECONDS``, so a compressed copy added later is used within a
second (a sibling that exists is stat'ed on every request, like the file).  One per static mount
and worker process, bounded in entries; the oldest entry goes first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from porch.http.messages import SMALL_FILE_BYTES

MAX_ENTRIES = 1024
SIBLING_SECONDS = 1.0

Identity = tuple[int, int, int, int]
Sibling = tuple[str, os.stat_result] | None


def identity(info: os.stat_result) -> Identity:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


class SmallFiles:
    """File contents and ".gz" lookups of one static mount (see the module docstring)."""

    def __init__(self) -> None:
        self.contents: dict[str, tuple[Identity, bytes]] = {}
        self.missing: dict[str, float] = {}  # path -> when it was found to have no ".gz" sibling

    def content(self, path: str, info: os.stat_result, read: Callable[[], bytes]) -> bytes | None:
        """The bytes of the file ``info`` describes, from memory or ``read()``; None if it is too
        big to keep, or changed while it was read (the caller streams it instead)."""
        if info.st_size > SMALL_FILE_BYTES:
            return None
        key = identity(info)
        cached = self.contents.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        data = read()
        if len(data) != info.st_size:
            return None
        remember(self.contents, path, (key, data))
        return data

    def sibling(self, path: str, look: Callable[[], Sibling]) -> Sibling:
        """The ".gz" sibling of ``path`` as ``look()`` finds it; once none was found, None
        without looking again for ``SIBLING_SECONDS``."""
        now = time.monotonic()
        missing_since = self.missing.get(path)
        if missing_since is not None and now - missing_since < SIBLING_SECONDS:
            return None
        found = look()
        if found is None:
            remember(self.missing, path, now)
        return found


def remember(table: dict, key: str, value: object) -> None:
    """Store ``value``, first dropping the oldest entry when the table is full."""
    if key not in table and len(table) >= MAX_ENTRIES:
        try:
            del table[next(iter(table))]
        except (KeyError, StopIteration, RuntimeError):  # another thread changed it meanwhile
            pass
    table[key] = value
