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
- ``standby``: one more thread watches a vacant lead.  It measures how much of a window of at
  least ``WINDOW_SECONDS`` the pool's threads ran or were ready to run (each thread's CPU clock
  plus schedstat's run-queue time; a thread waiting for the GIL is neither).  Under
  ``BUSY_SHARE`` the serving threads are mostly waiting, and the standby becomes the leader;
  above it they are computing, another thread would only share the GIL, and the standby checks
  less often (every ``STANDBY_SECONDS``, doubling up to ``MAX_STANDBY_SECONDS``; finding the lead
  taken again doubles it too: under a steady load of short requests the leader is back within
  microseconds, so a window rarely completes, and checking every 2 ms read 16 clocks per check
  for nothing).  Code that
  knows it is about to wait calls ``before_wait()`` and the standby takes over at once -- while
  fewer threads serve than there are CPUs: past that, more work in flight (CGI scripts, say)
  only divides the same cores.  A standby that sees the lead taken for a while
  (``DOZE_AFTER_CHECKS``) dozes, and the next leader to take work wakes it.
- the other threads wait to become the standby.

Without a GIL (a free-threaded CPython build) threads do compute in parallel and none of this
pays: every pool thread leads at once, and the kernel's ``EPOLLONESHOT`` hands each ready
connection to one of them.

The pool sees only ``Turns``, the calls it makes; ``LeaderStandby`` is the policy above and
``EveryThreadLeads`` the free-threaded one, and ``turns_for`` picks one by ``gil_enabled()``.
The numbers the standby decides by are in ``porch.workers.tuning``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

from porch.workers.tuning import BUSY_SHARE, DOZE_AFTER_CHECKS, MAX_STANDBY_SECONDS, STANDBY_SECONDS, WINDOW_SECONDS


class Turns(Protocol):
    """What a pool thread calls to take its turns; ``ThreadPoolServer`` knows nothing else."""

    def join(self) -> None:
        """Enrol the calling pool thread, once, before its first ``next_turn``."""

    def next_turn(self, was_serving: bool) -> bool:
        """Block until this thread may wait for work; False when the pool stops instead."""

    def took_work(self) -> None:
        """This thread took a connection to serve."""

    def hand_over(self) -> None:
        """A serving thread is about to wait (a connection's ``before_wait``)."""

    def stop(self) -> None:
        """Make every ``next_turn`` return False."""

    def busy(self) -> int:
        """How many threads are serving a connection."""

    def close(self) -> None:
        """Release what the turns hold, once the pool's threads have stopped."""


def gil_enabled() -> bool:
    """Whether this interpreter runs Python code one thread at a time (CPython < 3.13: always)."""
    is_enabled: Callable[[], bool] | None = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else is_enabled()


def turns_for(cpus: int) -> Turns:
    """The policy this interpreter needs: one leader under a GIL, every thread without one."""
    return LeaderStandby(cpus) if gil_enabled() else EveryThreadLeads()


class LeaderStandby:
    """Under a GIL: the leader/standby/follower roles of a pool's threads (see the module docstring)."""

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
        self.clocks: list[tuple[int, int]] = []  # each pool thread's CPU clock and schedstat

    def join(self) -> None:
        """Enrol the calling pool thread: its run time counts."""
        try:
            stats = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            return
        with self.followers:
            self.clocks.append((time.pthread_getcpuclockid(threading.get_ident()), stats))

    def sample(self) -> tuple[float, float]:
        """(busy, now): how long the pool's threads have run or been ready to run (on a run
        queue), and the monotonic time it was read at.

        CPU time comes from each thread's CPU clock, which counts the slice running right now
        (schedstat's own figure only moves at ticks and switches), read together with the clock
        before anything can release the GIL; run-queue time comes from schedstat after.
        """
        if not self.clocks:
            return time.process_time(), time.monotonic()  # no schedstat: the process's CPU time
        now = time.monotonic()
        total = 0
        for clock, _ in self.clocks:
            try:
                total += time.clock_gettime_ns(clock)
            except OSError:  # a thread that has left (the pool is stopping)
                pass
        for _, stats in self.clocks:
            try:
                total += int(os.pread(stats, 64, 0).split()[1])
            except OSError:
                pass
        return total / 1e9, now

    def close(self) -> None:
        """Release the schedstat descriptors (the pool's threads have stopped)."""
        with self.followers:
            for _, stats in self.clocks:
                os.close(stats)
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
        """The standby's loop (lock held): True to take the vacant lead, False to stop.

        The share is judged over a window of at least ``WINDOW_SECONDS`` since the lead was found
        vacant: the kernel adds run-queue time in lumps, so shorter windows would mislead.
        """
        interval = STANDBY_SECONDS
        taken = 0  # consecutive checks that found the lead taken
        start: tuple[float, float] | None = None  # (busy, wall) when this window began
        while not self.stopping:
            if self.hand_over_wanted:
                self.hand_over_wanted = False
                if not self.leading:
                    return True
            if self.leading:  # taken again: a busy pool, so look less often (a new window then)
                start, interval, taken = None, min(interval * 2, MAX_STANDBY_SECONDS), taken + 1
            else:
                taken = 0
                now = self.sample()
                if start is None:
                    start = now
                elif now[1] - start[1] >= WINDOW_SECONDS:
                    if now[0] - start[0] < BUSY_SHARE * (now[1] - start[1]):
                        return True  # the serving threads left the GIL idle: they are waiting
                    start, interval = now, min(interval * 2, MAX_STANDBY_SECONDS)
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


class EveryThreadLeads:
    """Without a GIL: every pool thread waits for work at once and the kernel picks who takes it;
    only the count of serving threads (for the drain) is kept, under a lock as no GIL guards it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stopping = False
        self.serving = 0  # threads between took_work() and their next next_turn()

    def join(self) -> None:
        """Nothing to enrol: no thread's run time is measured."""

    def next_turn(self, was_serving: bool) -> bool:
        """Lead at once, unless the pool stops."""
        with self.lock:
            if was_serving:
                self.serving -= 1
            return not self.stopping

    def took_work(self) -> None:
        """Counted, so that a drain waits for this thread to finish."""
        with self.lock:
            self.serving += 1

    def hand_over(self) -> None:
        """Every other thread already leads: nobody to hand over to."""

    def stop(self) -> None:
        """Each thread returns False from its next ``next_turn``: none waits here to be woken."""
        with self.lock:
            self.stopping = True

    def busy(self) -> int:
        """How many threads are serving a connection."""
        with self.lock:
            return self.serving

    def close(self) -> None:
        """Nothing held: ``join`` opened nothing."""
