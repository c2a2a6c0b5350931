"""The board: the master's latest snapshot as JSON in shared memory every worker can read.

The master makes it before it forks any worker, so every worker, of every generation, maps it.
Writes are consistent through a sequence number (a seqlock): the writer makes it odd, writes,
makes it even; a reader keeps a copy only when the number was even and unchanged.  Only the
master writes, a few times a second, so a reader rarely has to try twice -- but a master
descheduled in the middle of a write (a busy machine) holds the number odd for a while, so a
reader waits for it up to ``READ_WAIT_SECONDS`` and then answers the last copy it read.
"""

from __future__ import annotations

import json
import mmap
import struct
import time
from typing import Any

HEAD = struct.Struct("QQQ")  # sequence, length of the JSON text, the master's state
SEQUENCE = struct.Struct("Q")
STATE = struct.Struct("Q")
STATE_OFFSET = 16
STATES = ("starting", "ready", "reloading", "stopping")  # what the master is doing, for ``ready``
BOARD_BYTES = 8 << 20  # address space only: pages are touched as far as the text reaches
READ_WAIT_SECONDS = 0.05  # for a write in progress, before the last copy read is answered
READ_PAUSE_SECONDS = 0.0005


class Board:
    """One JSON document, written by the master, read by any worker."""

    def __init__(self, size: int = BOARD_BYTES) -> None:
        self.memory = mmap.mmap(-1, size)
        self.room = size - HEAD.size
        self.sequence = 0
        self.last: dict[str, Any] = {}  # this process's last consistent read

    def publish(self, snapshot: dict[str, Any]) -> bool:
        """Write ``snapshot``; False (and nothing written) if its text does not fit."""
        data = json.dumps(snapshot, separators=(",", ":"), allow_nan=False).encode()
        if len(data) > self.room:
            return False
        self.sequence += 1
        self.memory[:STATE_OFFSET] = HEAD.pack(self.sequence, len(data), 0)[:STATE_OFFSET]
        self.memory[HEAD.size : HEAD.size + len(data)] = data
        self.sequence += 1
        self.memory[: SEQUENCE.size] = SEQUENCE.pack(self.sequence)
        return True

    def set_state(self, state: str) -> None:
        """Say what the master is doing: one word, readable without the JSON (``ready`` probes)."""
        STATE.pack_into(self.memory, STATE_OFFSET, STATES.index(state))

    def state(self) -> str:
        return STATES[min(STATE.unpack_from(self.memory, STATE_OFFSET)[0], len(STATES) - 1)]

    def read(self) -> dict[str, Any]:
        """The latest snapshot; ``{}`` before the first one; the last one this process read when
        a write stays in progress longer than ``READ_WAIT_SECONDS``."""
        deadline = 0.0
        while True:
            sequence, length, _ = HEAD.unpack_from(self.memory)
            if not sequence % 2:
                data = self.memory[HEAD.size : HEAD.size + min(length, self.room)]
                if SEQUENCE.unpack_from(self.memory)[0] == sequence:
                    break
            now = time.monotonic()
            if not deadline:
                deadline = now + READ_WAIT_SECONDS
            elif now > deadline:
                return self.last
            time.sleep(READ_PAUSE_SECONDS)
        if not length:
            return {}
        try:
            found: dict[str, Any] = json.loads(data)
        except ValueError:  # cannot be, the sequence held; never answer less than before
            return self.last
        self.last = found
        return found

    def close(self) -> None:
        self.memory.close()
