"""Which pool thread may take new work next: one at a time, more only when work waits.

Under the GIL, pool threads that all take work at once do not run in parallel: they hand the
GIL to each other at every system call, and each hand-off is a futex wake-up and a context switch
(with 8 threads, 4x the CPU per request of one thread).  So the threading model lets one thread at
a time -- the *leader* -- wait for a ready connection; it serves what it took and then leads again.
A second thread is only let in when the threads serving leave the GIL idle, which is exactly
when another thread pays: the work is waiting (on a script, a slow client, a database), not
computing.

- ``leader``: at most one thread waits on the epoll set; it gives the lead up when it takes a
  connection (``took_work``) and comes back for it when done (``next_turn``).
- ``standby``: one more thread watches a vacant lead.  Every ``STANDBY_SECONDS`` it measures how
  much of the period the pool's threads ran or were ready to run (the kernel's per-thread
  schedstat: on-CPU plus run-queue time; a thread waiting for the GIL is neither).  Under
  ``BUSY_SHARE`` the serving threads are mostly waiting, and the standby becomes the leader;
  above it they are computing, another thread would only share the GIL, and the standby checks
  less often (up to ``MAX_STANDBY_SECONDS``).  Code that knows it is about to wait calls
  ``before_wait()`` and the standby takes over at once -- while fewer threads serve than there
  are CPUs: past that, more work in flight (CGI scripts, say) only divides the same cores.  A
  standby that sees the lead taken for a while dozes, and the next leader to take work wakes it.
- the other threads wait to become the standby.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

STANDBY_SECONDS = 0.002  # how soon a vacant lead is checked on
MAX_STANDBY_SECONDS = 0.016  # the check interval while the serving threads keep the GIL busy
BUSY_SHARE = 0.75  # below this share of a period running, the serving threads are waiting
DOZE_AFTER_CHECKS = 100  # checks seeing the lead taken before the standby stops checking

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
        self.clocks: list[int] = []  # each pool thread's schedstat, or [] where there is none

    def join(self) -> None:
        """Enrol the calling pool thread: its run time counts, its ``before_wait()`` reaches us."""
        _local.hand_over = self.hand_over
        try:
            clock = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            return
        with self.followers:
            self.clocks.append(clock)

    def busy_seconds(self) -> float:
        """How long the pool's threads have run or been ready to run (on a run queue)."""
        if not self.clocks:
            return time.process_time()  # no schedstat: the process's CPU time will do
        total = 0
        for clock in self.clocks:
            on_cpu, queued = os.pread(clock, 64, 0).split()[:2]
            total += int(on_cpu) + int(queued)
        return total / 1e9

    def close(self) -> None:
        """Release the schedstat descriptors (the pool's threads have stopped)."""
        with self.followers:
            for clock in self.clocks:
                os.close(clock)
            self.clocks.clear()

    def next_turn(self, was_serving: bool) -> bool:
        """Block until this thread leads; False when the pool stops instead."""
        with self.followers:
            if was_serving:
                self.serving -= 1
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
        interval = STANDBY_SECONDS
        taken = 0  # consecutive checks that found the lead taken
        last: tuple[float, float] | None = None  # (busy, wall) at the last check with it vacant
        while not self.stopping:
            if self.hand_over_wanted:
                self.hand_over_wanted = False
                if not self.leading:
                    return True
            if self.leading:
                last, interval, taken = None, STANDBY_SECONDS, taken + 1
            else:
                taken = 0
                now = (self.busy_seconds(), time.monotonic())
                if last is not None:
                    if now[0] - last[0] < BUSY_SHARE * (now[1] - last[1]):
                        return True  # the serving threads left the GIL idle: they are waiting
                    interval = min(interval * 2, MAX_STANDBY_SECONDS)
                last = now
            if taken >= DOZE_AFTER_CHECKS:
                self.dozing = True
                self.watch.wait()
                self.dozing = False
                taken = 0
            else:
                self.watch.wait(interval)
        return False

    def took_work(self) -> None:
        """The leader took a connection to serve: the lead is vacant until someone comes back."""
        with self.followers:
            self.leading = False
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
