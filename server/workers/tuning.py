"""The thread scheduling's tuning, in one place: how Python switches threads and when the pool
lets a second thread take work (``porch.workers.turns``).

Each number buys one thing with another -- latency with CPU per request, quick decisions with
sound ones -- and they act on the same threads, so they are read and changed together.
"""

from __future__ import annotations

# SWITCH_INTERVAL_SECONDS: how long a thread may hold the GIL while another wants it -- the
#   acceptor and the pool threads take turns on it (``sys.setswitchinterval``, set when a worker
#   starts).  Shorter: a just-readable connection waits less behind a busy thread -- CPython's
#   default 5 ms turn was what the latency tail was made of; longer: fewer forced switches, each
#   a futex wake-up and a context switch.
SWITCH_INTERVAL_SECONDS = 0.001

# STANDBY_SECONDS: how soon the standby checks on a vacant lead.  Shorter: a second thread comes
#   in sooner once the serving ones wait; longer: fewer wake-ups of the standby, each of which
#   reads every pool thread's clocks and takes the GIL from the serving threads.
STANDBY_SECONDS = 0.002

# WINDOW_SECONDS: the shortest span the serving threads' share of it is judged over.  Shorter:
#   a decision sooner; longer: a sounder one -- the kernel adds run-queue time in lumps, so a
#   short window can make computing threads look idle.
WINDOW_SECONDS = 0.01

# MAX_STANDBY_SECONDS: the check interval reached (by doubling) while the serving threads keep
#   the GIL busy, or a leader keeps coming back for the lead (a steady load of short requests).
#   Longer: less of the standby's overhead on computing work (each check reads every pool
#   thread's clocks: two system calls a thread); shorter: a switch from computing to waiting that
#   nobody announced is noticed sooner.
MAX_STANDBY_SECONDS = 0.016

# BUSY_SHARE: below this share of a window running (or ready to run), the serving threads are
#   taken to be waiting and the standby leads.  Higher: a second thread comes in more readily,
#   at the price of GIL hand-offs when the work computes after all; lower: threads that wait
#   now and then keep the pool to one leader longer.
BUSY_SHARE = 0.75

# DOZE_AFTER_CHECKS: consecutive checks finding the lead taken before the standby stops checking
#   until the next leader takes work.  Fewer: fewer wake-ups of a standby with nothing to do (a
#   quiet pool); more: fewer leaders that must wake a dozing standby as they take work (a futex
#   wake-up on the request's path).
DOZE_AFTER_CHECKS = 100
