"""Measuring one run: wrk's numbers, the server's CPU time, memory and threads from /proc.

- ``run_wrk`` runs ``wrk -t2 -cN -dDs --latency -s SCRIPT URL`` with the workload's Lua script
  followed by ``wrk/report.lua``, whose ``done()`` prints one ``BENCH-RESULT {json}`` line, so no
  human-oriented output is parsed.  The wrk process is bounded by a timeout.
- ``tree_cpu_seconds(pid)`` sums utime+stime+cutime+cstime (``/proc/PID/stat``) over the server's
  process tree: workers are counted while alive, reaped children (CGI scripts) through their
  parent's c-times.  Read before and after a wrk run, divided by wrk's request count, it gives the
  server's CPU per request.
- ``tree_memory(pid)`` sums VmRSS (``/proc/PID/status``) and counts threads (``/proc/PID/task``).
- ``IdleHolder`` runs ``idle_holder.py`` in its own process group and waits until its idle
  keep-alive connections are open.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from servers import raise_nofile

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WRK_GRACE_SECONDS = 30.0
HOLDER_TIMEOUT_SECONDS = 120.0
RESULT_PREFIX = "BENCH-RESULT "


@dataclass
class WrkResult:
    requests: int
    bytes: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mib_per_second(self) -> float:
        return self.bytes / self.seconds / 2**20 if self.seconds else 0.0


def lua_script(bench: Path, name: str, work: Path) -> Path:
    """The workload's script with the reporting ``done()`` appended, written into ``work``."""
    target = work / f"wrk-{name}"
    target.write_text((bench / "wrk" / name).read_text() + "\n" + (bench / "wrk" / "report.lua").read_text())
    return target


def run_wrk(
    url: str, script: Path, duration: float, connections: int, threads: int = 2, timeout: str = "5s"
) -> WrkResult:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        f"--timeout={timeout}",
        "-s",
        str(script),
        url,
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration + WRK_GRACE_SECONDS, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            data = json.loads(line[len(RESULT_PREFIX) :])
            errors = {key: int(data[key]) for key in ("connect", "read", "write", "status", "timeout")}
            return WrkResult(
                int(data["requests"]),
                int(data["bytes"]),
                data["duration_us"] / 1e6,
                errors,
                data["p50_us"] / 1000,
                data["p90_us"] / 1000,
                data["p99_us"] / 1000,
                data["max_us"] / 1000,
            )
    raise RuntimeError(
        f"wrk printed no result (exit {completed.returncode}): "
        f"{completed.stderr.strip()[-500:] or completed.stdout.strip()[-500:]}"
    )


# -- /proc ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    return text[text.rindex(")") + 2 :].split()  # fields from "state" (field 3) on


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    ticks = 0
    for pid in process_tree(root):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def tree_context_switches(root: int) -> int:
    """Voluntary + involuntary context switches of every thread in the tree so far."""
    total = 0
    for pid in process_tree(root):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/status") as status:
                    for line in status:
                        if "ctxt_switches:" in line:  # voluntary_... and nonvoluntary_...
                            total += int(line.split()[1])
            except (OSError, ValueError):
                continue
    return total


@dataclass
class Memory:
    rss_mib: float
    threads: int
    processes: int


def tree_memory(root: int) -> Memory:
    rss_kib = threads = processes = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        rss_kib += int(line.split()[1])
            threads += len(os.listdir(f"/proc/{pid}/task"))
            processes += 1
        except OSError:
            continue
    return Memory(rss_kib / 1024, threads, processes)


# -- idle connections -------------------------------------------------------------------------


class IdleHolder:
    """``idle_holder.py`` in its own process group, holding ``count`` idle keep-alive connections."""

    def __init__(self, bench: Path, port: int, count: int, path: str) -> None:
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, str(bench / "idle_holder.py"), "--port", str(port), "--count", str(count), "--path", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
            preexec_fn=raise_nofile,
        )
        self.opened = 0

    def wait_ready(self) -> int:
        """Block until the holder reports its connections open; how many are."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the holder bounds its own set-up time
        if not line.startswith("READY "):
            self.log.seek(0)
            raise RuntimeError(f"idle holder failed: {line.strip()} {self.log.read().decode(errors='replace')[-500:]}")
        self.opened = int(line.split()[1])
        return self.opened

    def stop(self) -> int | None:
        """Close the connections; how many were still open (None if the holder did not say)."""
        still_open = None
        try:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.close()
            self.process.wait(HOLDER_TIMEOUT_SECONDS)
            for line in self.process.stdout:
                if line.startswith("OPEN "):
                    still_open = int(line.split()[1])
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
            self.log.close()
        return still_open
