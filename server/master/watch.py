"""``porch --reload``: the master restarts the workers when the code they run changes on disk.

For development only.  The master polls (``os.stat``; no dependency, no inotify limits to hit)
the config file and the Python files under the ``pythonpath`` of every mount, at most once a
second, and starts a reload -- the same one HUP starts -- when one of them changed, appeared or
went away.  A reload whose new workers cannot import the changed code is refused as any reload
is: the old workers keep serving and the error log shows the application's error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from porch.config.settings import Config

POLL_SECONDS = 1.0
MAX_FILES = 5000  # a pythonpath pointing at a huge tree must not make each poll slow
SKIPPED_DIRECTORIES = frozenset({"__pycache__", ".git", ".venv", "venv", "node_modules"})

Stamp = tuple[int, int]  # modification time (ns), size


def watched_files(config: Config) -> Iterator[Path]:
    """The config file and the Python files of every mount's ``pythonpath``, at most MAX_FILES."""
    if config.source is not None:
        yield config.source
    count = 0
    for mount in config.mounts:
        for directory in getattr(mount.options, "pythonpath", ()):
            for root, directories, files in os.walk(directory):
                directories[:] = [d for d in directories if d not in SKIPPED_DIRECTORIES and not d.startswith(".")]
                for name in files:
                    if name.endswith(".py"):
                        count += 1
                        if count > MAX_FILES:
                            return
                        yield Path(root) / name


def stamps(config: Config) -> dict[Path, Stamp]:
    found: dict[Path, Stamp] = {}
    for path in watched_files(config):
        try:
            status = path.stat()
        except OSError:
            continue
        found[path] = (status.st_mtime_ns, status.st_size)
    return found


class CodeWatcher:
    """What changed since the last look, for the master loop to call every tick."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.seen = stamps(config)
        self.next_poll = time.monotonic() + POLL_SECONDS

    def changed(self) -> list[Path]:
        """The files changed, added or removed since the last poll (none between polls)."""
        now = time.monotonic()
        if now < self.next_poll:
            return []
        self.next_poll = now + POLL_SECONDS
        current = stamps(self.config)
        different = sorted(
            path for path in current.keys() | self.seen.keys() if current.get(path) != self.seen.get(path)
        )
        self.seen = current
        return different

    def follow(self, config: Config) -> None:
        """A reload brought a new config: watch its files from now on.  A file watched before
        keeps the state last seen, so an edit made while the reload ran is still noticed."""
        self.config = config
        self.seen = {path: self.seen.get(path, stamp) for path, stamp in stamps(config).items()}
