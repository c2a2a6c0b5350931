"""Turn-taking in the thread pool (porch.workers.turns), with real threads and the kernel's accounting:
under the GIL a second thread is let in when the serving thread waits, not while it computes;
without it every thread leads."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import pytest

from porch.workers.turns import EveryThreadLeads, LeaderStandby, gil_enabled, turns_for


def serve_with_standby(
    cpus: int, work: Callable[[threading.Event, LeaderStandby], object]
) -> tuple[object, LeaderStandby]:
    """Two pool threads: the first leads, takes a connection and runs ``work(promoted)``; the
    second waits for its turn and sets ``promoted`` when it becomes the leader.  ``work`` gets
    the turns too, to announce a wait as a connection does.  Returns what ``work`` returned."""
    turns = LeaderStandby(cpus)
    promoted = threading.Event()
    result: list[object] = []

    def first() -> None:
        turns.join()
        assert turns.next_turn(False)
        threading.Thread(target=second, daemon=True).start()
        while not turns.standby:  # the second thread waits on the lead this one holds
            time.sleep(0.001)
        turns.took_work()  # it serves now: the lead is vacant
        result.append(work(promoted, turns))

    def second() -> None:
        turns.join()
        if turns.next_turn(False):
            promoted.set()

    leader = threading.Thread(target=first)
    leader.start()
    leader.join()
    turns.stop()
    turns.close()
    return result[0], turns


def spin(seconds: float) -> None:
    """Compute (hold the GIL) for ``seconds``."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sum(range(1000))


def test_no_second_thread_while_the_first_computes() -> None:
    def work(promoted: threading.Event, turns: LeaderStandby) -> bool:
        spin(0.4)
        return promoted.is_set()

    assert serve_with_standby(1, work)[0] is False


def test_a_second_thread_once_the_first_waits() -> None:
    def work(promoted: threading.Event, turns: LeaderStandby) -> bool:
        spin(0.1)
        # A wait porch cannot see (an application's database call, say): the standby measures
        # that the serving thread leaves the GIL idle and takes the lead within a few periods.
        return promoted.wait(0.3)

    assert serve_with_standby(1, work)[0] is True


def test_an_announced_wait_lets_the_next_thread_in_at_once() -> None:
    def work(promoted: threading.Event, turns: LeaderStandby) -> bool:
        turns.hand_over()  # one thread serves, fewer than the CPUs: hand over now
        spin(0.1)  # computing: only the announcement can have let the standby in
        return promoted.is_set()

    assert serve_with_standby(2, work)[0] is True


def test_announced_waits_bring_in_no_more_threads_than_cpus() -> None:
    def work(promoted: threading.Event, turns: LeaderStandby) -> bool:
        turns.hand_over()  # one thread already serves and there is one CPU
        spin(0.3)
        return promoted.is_set()

    assert serve_with_standby(1, work)[0] is False


@pytest.mark.skipif(not gil_enabled(), reason="a free-threaded build")
def test_under_the_gil_the_pool_gets_a_leader_and_a_standby() -> None:
    assert isinstance(turns_for(2), LeaderStandby)


def test_without_a_gil_the_pool_gets_every_thread_leading(monkeypatch: pytest.MonkeyPatch) -> None:
    # what the interpreter says (a compiled porch.workers.turns calls its own gil_enabled directly)
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert isinstance(turns_for(2), EveryThreadLeads)


def test_without_a_gil_every_thread_leads_at_once() -> None:
    """Free-threaded builds: threads compute in parallel, so none waits for a turn."""
    turns = EveryThreadLeads()
    leading = threading.Barrier(4, timeout=5)  # passes only once all four lead together
    done: list[bool] = []

    def pool_thread() -> None:
        turns.join()
        assert turns.next_turn(False)
        turns.took_work()
        leading.wait()
        done.append(turns.next_turn(True))  # and leads again after serving, until the stop

    threads = [threading.Thread(target=pool_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert done == [True] * 4 and turns.busy() == 0
    turns.stop()
    assert turns.next_turn(False) is False
    turns.close()
