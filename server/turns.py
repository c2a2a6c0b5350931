"""Which pool thread may take new work next: one at a time, more only when work blocks.

Under the GIL, pool threads that all take work at once do not run in parallel: they hand the
GIL to each other at every system call, and each hand-off is a futex wake-up and a context switch
(with 8 threads, 4x the CPU per request of one thread).  So the threading model lets one thread at
a time -- the *leader* -- wait for a ready connection; it serves what it took and then leads again.
A second thread is only let in when the work does not finish, which is exactly when parallelism
pays: the work is waiting (on a script, a slow client, a database), not computing.

- ``leader``: at most one thread waits on the epoll set; it gives the lead up when it takes a
  connection (``took_work``) and comes back for it when done (``next_turn``).
- ``standby``: one more thread watches a vacant lead.  If nobody finished anything and nobody
  took the lead for a whole ``STANDBY_SECONDS`` period, the work in progress is blocked and the
  standby becomes the leader.  Code that knows it is about to wait calls ``before_wait()`` and
  the standby takes over at once -- while fewer threads serve than there are CPUs: past that,
  more work in flight (CGI scripts, say) only divides the same cores, and the timer decides.  A standby that has seen nothing happen for a while dozes, and
  the next leader to take work wakes it.
- the other threads wait to become the standby.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

STANDBY_SECONDS = 0.002  # a lead vacant this long (twice at most) with no progress is taken over
DOZE_AFTER_CHECKS = 100  # quiet periods before the standby stops checking on its own

_local = threading.local()


def before_wait() -> None:
    """Say that this thread is about to wait for I/O, so another one may take new work now."""
    hand_over: Callable[[], None] | None = getattr(_local, "hand_over", None)
    if hand_over is not None:
        hand_over()


class Turns:
    """The leader/standby/follower roles of a pool's threads (see the module docstring)."""

    def __init__(self, cpus: int) -> None:
        self.cpus = cpus  # how many serving threads an announced wait may bring in at once
        lock = threading.Lock()
        self.followers = threading.Condition(lock)
        self.watch = threading.Condition(lock)
        self.leading = False
        self.standby = False
        self.dozing = False
        self.hand_over_wanted = False
        self.stopping = False
        self.serving = 0  # threads between took_work() and their next next_turn()
        self.finished = 0  # progress counters the standby compares between checks
        self.vacated = 0

    def join(self) -> None:
        """Make the calling pool thread's ``before_wait()`` reach this pool."""
        _local.hand_over = self.hand_over

    def next_turn(self, was_serving: bool) -> bool:
        """Block until this thread leads; False when the pool stops instead."""
        with self.followers:
            if was_serving:
                self.serving -= 1
                self.finished += 1
            if not self.leading and not self.stopping:
                self.leading = True
                return True
            while self.standby and not self.stopping:
                self.followers.wait()
            if self.stopping:
                return False
            self.standby = True
            take = self.keep_watch()
            self.standby = False
            self.followers.notify()  # the next standby
            if take:
                self.leading = True
            return take

    def keep_watch(self) -> bool:
        """The standby's loop (lock held): True to take the vacant lead, False to stop."""
        quiet = 0
        last: tuple[int, int] | None = None
        while not self.stopping:
            if self.hand_over_wanted:
                self.hand_over_wanted = False
                if not self.leading:
                    return True
            mark = (self.finished, self.vacated)
            if not self.leading and mark == last:
                return True  # the lead was vacant for a whole period and nothing moved
            quiet = quiet + 1 if self.leading and mark == last else 0
            last = mark
            if quiet >= DOZE_AFTER_CHECKS:
                self.dozing = True
                self.watch.wait()
                self.dozing = False
                quiet, last = 0, None
            else:
                self.watch.wait(STANDBY_SECONDS)
        return False

    def took_work(self) -> None:
        """The leader took a connection to serve: the lead is vacant until someone comes back."""
        with self.followers:
            self.leading = False
            self.vacated += 1
            self.serving += 1
            if self.dozing:
                self.watch.notify()

    def hand_over(self) -> None:
        """A serving thread is about to wait: let the standby lead now rather than later."""
        if self.leading:  # a leader is already waiting for work: nothing to hand over
            return
        with self.followers:
            if not self.leading and self.standby and self.serving < self.cpus:
                self.hand_over_wanted = True
                self.watch.notify()

    def stop(self) -> None:
        """Every waiting thread returns False from ``next_turn`` (the leader is woken apart)."""
        with self.followers:
            self.stopping = True
            self.followers.notify_all()
            self.watch.notify_all()

    def busy(self) -> int:
        """How many threads are serving a connection."""
        with self.followers:
            return self.serving
