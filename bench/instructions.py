"""Instructions a request costs porch, counted by callgrind: an A/B the machine's noise cannot move.

    python bench/instructions.py static-1k --servers porch-static,porch-static-nometrics
    python bench/instructions.py wsgi-hello --servers porch-2x8,porch-compiled-2x8 --requests 4000

Two processes of the same server measured with wrk differ by several % on a shared machine
(bench/results/2026-12-02-metrics-cost.md), so a change worth 1-3 % cannot be read from
wall-clock runs alone. valgrind's callgrind counts the instructions a process executes,
whatever else the machine is doing. Each server runs twice under callgrind, with one worker of
one thread and a fixed PYTHONHASHSEED (hash seeds change dict collisions, and so instruction
counts, from one process to the next): once answering ``--warmup`` requests, once answering
``--requests`` more, one client on one keep-alive connection. The difference between the two
runs, divided by the extra requests, is what a request costs -- start-up and warm-up cancel out.

Instructions are not time: a cache miss costs more than an addition, and the kernel's share
(recv, send, the loopback delivery: a third of a static request's CPU) is not counted, since
callgrind sees user space only. Timers (heartbeat, the pool's standby) tick with wall time, which
valgrind stretches about fifty-fold, so they weigh more here than in production. Use this to
compare two builds or settings of porch, and ``run.py`` for what a client sees.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from run import ensure_compiled, publish, run_paths, say
from servers import SPECS, Command, Paths, RunningServer, ServerSpec, with_counts
from workloads import REQUEST_WORKLOADS, WORKLOADS, Workload

READY_TIMEOUT_SECONDS = 180.0  # Python starts about fifty times slower under valgrind
STOP_TIMEOUT_SECONDS = 120.0  # callgrind writes its counts at exit: never cut it short
CLIENT_TIMEOUT_SECONDS = 120.0
EVENTS = re.compile(r"^events: (.+)$", re.MULTILINE)
TOTALS = re.compile(r"^totals: (.+)$", re.MULTILINE)
# callgrind's cache simulation (--cache-sim=yes): first-level misses (instructions, data reads,
# data writes) and last-level misses, the ones that go to memory.
FIRST_LEVEL_MISSES = ("I1mr", "D1mr", "D1mw")
LAST_LEVEL_MISSES = ("ILmr", "DLmr", "DLmw")
# and of the branch predictors (--branch-sim=yes): mispredicted conditional and indirect branches.
MISPREDICTED = ("Bcm", "Bim")


@dataclass(frozen=True)
class Count:
    """Events of one run under callgrind: the master's instructions, and every event counted in
    its children (the worker), by callgrind's name ("Ir": instructions, and the cache misses)."""

    master: int
    workers: dict[str, int]


def under_callgrind(spec: ServerSpec, out: Path, simulate: list[str]) -> ServerSpec:
    """``spec`` (one worker, one thread) started by callgrind, one count file per process."""
    single = with_counts(spec, 1, 1)

    def build(paths: Paths, port: int) -> Command:
        command = single.build(paths, port)
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no"]
        argv += [f"--{what}-sim=yes" for what in simulate]
        argv += command.argv
        return Command(argv, {**command.env, "PYTHONHASHSEED": "0"}, command.cwd, command.stop_signal)

    return replace(single, build=build)


def serve(port: int, workload: Workload, count: int) -> None:
    """Send ``count`` requests of ``workload``, keeping the connection alive where the server does."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_SECONDS)
    try:
        for _ in range(count):
            connection.request(workload.method, workload.path, workload.body or None, workload.headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or not workload.check(body):
                raise SystemExit(f"{workload.path}: {response.status} {body[:200]!r}")
            if response.will_close:
                connection.close()
    finally:
        connection.close()


def events(path: Path) -> dict[str, int]:
    """The totals of one callgrind output file, by event name."""
    text = path.read_text(errors="replace")
    names, totals = EVENTS.search(text), TOTALS.search(text)
    if names is None or totals is None:
        return {}
    return dict(zip(names.group(1).split(), map(int, totals.group(1).split()), strict=False))


def measure(spec: ServerSpec, paths: Paths, workload: Workload, count: int, label: str, simulate: list[str]) -> Count:
    """One run under callgrind answering ``count`` requests; the events it counted."""
    out = paths.work / f"callgrind-{label}"
    server = RunningServer(under_callgrind(spec, out, simulate), paths)
    try:
        problem = server.wait_ready(READY_TIMEOUT_SECONDS)
        if problem:
            raise SystemExit(f"{spec.key}: {problem}")
        serve(server.port, workload, count)
        os.killpg(server.pid, server.command.stop_signal)
        server.process.wait(STOP_TIMEOUT_SECONDS)
    finally:
        server.stop()
    master = 0
    workers: dict[str, int] = {}
    for path in paths.work.glob(f"{out.name}.*"):
        found = events(path)
        if path.name == f"{out.name}.{server.pid}":
            master += found.get("Ir", 0)
        else:
            for name, value in found.items():
                workers[name] = workers.get(name, 0) + value
        path.unlink()
    return Count(master, workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Instructions per request of porch variants, under callgrind.")
    parser.add_argument("workload", choices=REQUEST_WORKLOADS)
    parser.add_argument("--servers", help="porch variants, comma-separated (default: the workload's porch servers)")
    parser.add_argument("--requests", type=int, default=2000, help="requests measured (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="requests of the baseline run (default 200)")
    parser.add_argument(
        "--cache-sim", action="store_true", help="also simulate the caches: misses per request (slower)"
    )
    parser.add_argument(
        "--branch-sim", action="store_true", help="also simulate branch prediction: mispredictions per request"
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    workload = WORKLOADS[args.workload]
    keys = args.servers.split(",") if args.servers else [key for key in workload.servers if SPECS[key].is_porch]
    unknown = [key for key in keys if key not in SPECS or not SPECS[key].is_porch]
    if unknown:
        raise SystemExit(f"not porch servers of the bench: {', '.join(unknown)}")
    if any(SPECS[key].compiled for key in keys):
        for problem in ensure_compiled(reinstall=False):
            raise SystemExit(problem)
    simulate = simulated(args)
    rows: list[tuple[ServerSpec, dict[str, float], float]] = []
    with tempfile.TemporaryDirectory(prefix="porch-instructions-") as work:
        paths = run_paths(Path(work))
        for key in keys:
            spec = SPECS[key]
            say(f"{key}: {args.warmup} and then {args.warmup + args.requests} requests under callgrind")
            base = measure(spec, paths, workload, args.warmup, f"{key}-base", simulate)
            full = measure(spec, paths, workload, args.warmup + args.requests, f"{key}-full", simulate)
            worker = {name: (full.workers[name] - base.workers.get(name, 0)) / args.requests for name in full.workers}
            master = (full.master - base.master) / args.requests
            say(f"{key}: {worker.get('Ir', 0):,.0f} instructions a request in the worker, {master:,.0f} in the master")
            rows.append((spec, worker, master))
    publish(report(args, keys, rows), f"instructions-{args.workload}-{'+'.join(keys)}.md", not args.no_save)
    return 0


def simulated(args: argparse.Namespace) -> list[str]:
    """What callgrind is asked to simulate besides counting: "cache", "branch"."""
    return [what for what, wanted in (("cache", args.cache_sim), ("branch", args.branch_sim)) if wanted]


def report(args: argparse.Namespace, keys: list[str], rows: list[tuple[ServerSpec, dict[str, float], float]]) -> str:
    """The markdown table: instructions a request in the worker, and what was simulated."""
    columns: list[tuple[str, tuple[str, ...], int]] = [("worker instructions/req", ("Ir",), 0)]
    if args.cache_sim:
        columns += [
            ("first-level cache misses/req", FIRST_LEVEL_MISSES, 0),
            ("last-level misses/req", LAST_LEVEL_MISSES, 1),
        ]
    if args.branch_sim:
        columns += [("mispredicted branches/req", MISPREDICTED, 0)]
    options = "".join(
        f" --{what}" for what, wanted in (("cache-sim", args.cache_sim), ("branch-sim", args.branch_sim)) if wanted
    )
    first = rows[0][1].get("Ir", 0.0)
    lines = [
        f"### Instructions per request: {args.workload}",
        "",
        f"{datetime.date.today().isoformat()}; `python bench/instructions.py {args.workload} --servers "
        f"{','.join(keys)} --requests {args.requests}{options}` -- callgrind, one worker of one thread, "
        f"PYTHONHASHSEED=0, {args.requests:,} requests on one connection after {args.warmup:,}.",
        "",
        "| server | " + " | ".join(title for title, _, _ in columns) + f" | instructions vs {rows[0][0].label} "
        "| master instructions/req |",
        "|---|" + "---:|" * (len(columns) + 2),
    ]
    for spec, worker, master in rows:
        cells = [f"{sum(worker.get(name, 0.0) for name in names):,.{digits}f}" for _, names, digits in columns]
        change = (worker.get("Ir", 0.0) / first - 1) * 100 if first else 0.0
        lines.append(f"| {spec.label} (`{spec.key}`) | " + " | ".join(cells) + f" | {change:+.1f} % | {master:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
