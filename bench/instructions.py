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

from run import BENCH, REPO, VENV, ensure_compiled, prepare_root, say
from servers import SPECS, Command, Paths, RunningServer, ServerSpec, with_counts
from workloads import WORKLOADS, Workload

READY_TIMEOUT_SECONDS = 180.0  # Python starts about fifty times slower under valgrind
STOP_TIMEOUT_SECONDS = 120.0  # callgrind writes its counts at exit: never cut it short
CLIENT_TIMEOUT_SECONDS = 120.0
TOTALS = re.compile(r"^totals: (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Count:
    """Instructions of one run under callgrind: the master's and its children's (the worker)."""

    master: int
    workers: int


def under_callgrind(spec: ServerSpec, out: Path) -> ServerSpec:
    """``spec`` (one worker, one thread) started by callgrind, one count file per process."""
    single = with_counts(spec, 1, 1)

    def build(paths: Paths, port: int) -> Command:
        command = single.build(paths, port)
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no", *command.argv]
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


def measure(spec: ServerSpec, paths: Paths, workload: Workload, count: int, label: str) -> Count:
    """One run under callgrind answering ``count`` requests; the instructions it executed."""
    out = paths.work / f"callgrind-{label}"
    server = RunningServer(under_callgrind(spec, out), paths)
    try:
        problem = server.wait_ready(READY_TIMEOUT_SECONDS)
        if problem:
            raise SystemExit(f"{spec.key}: {problem}")
        serve(server.port, workload, count)
        os.killpg(server.pid, server.command.stop_signal)
        server.process.wait(STOP_TIMEOUT_SECONDS)
    finally:
        server.stop()
    master = workers = 0
    for path in paths.work.glob(f"{out.name}.*"):
        found = TOTALS.search(path.read_text(errors="replace"))
        instructions = int(found.group(1)) if found else 0
        if path.name == f"{out.name}.{server.pid}":
            master += instructions
        else:
            workers += instructions
        path.unlink()
    return Count(master, workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Instructions per request of porch variants, under callgrind.")
    parser.add_argument("workload", choices=[name for name in WORKLOADS if not WORKLOADS[name].idle_connections])
    parser.add_argument("--servers", help="porch variants, comma-separated (default: the workload's porch servers)")
    parser.add_argument("--requests", type=int, default=2000, help="requests measured (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="requests of the baseline run (default 200)")
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
    rows: list[tuple[ServerSpec, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="porch-instructions-") as work:
        cgi_python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        paths = Paths(REPO, BENCH, Path(work), VENV, cgi_python)
        prepare_root(paths)
        for key in keys:
            spec = SPECS[key]
            say(f"{key}: {args.warmup} and then {args.warmup + args.requests} requests under callgrind")
            base = measure(spec, paths, workload, args.warmup, f"{key}-base")
            full = measure(spec, paths, workload, args.warmup + args.requests, f"{key}-full")
            worker = (full.workers - base.workers) / args.requests
            master = (full.master - base.master) / args.requests
            say(f"{key}: {worker:,.0f} instructions a request in the worker, {master:,.0f} in the master")
            rows.append((spec, worker, master))
    first = rows[0][1]
    lines = [
        f"### Instructions per request: {args.workload}",
        "",
        f"{datetime.date.today().isoformat()}; `python bench/instructions.py {args.workload} --servers "
        f"{','.join(keys)} --requests {args.requests}` -- callgrind, one worker of one thread, "
        f"PYTHONHASHSEED=0, {args.requests:,} requests on one connection after {args.warmup:,}.",
        "",
        f"| server | worker instructions/req | vs {rows[0][0].label} | master instructions/req |",
        "|---|---:|---:|---:|",
    ]
    for spec, worker, master in rows:
        change = (worker / first - 1) * 100
        lines.append(f"| {spec.label} (`{spec.key}`) | {worker:,.0f} | {change:+.1f} % | {master:,.0f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        target = BENCH / "results" / f"instructions-{args.workload}.md"
        target.write_text(text + "\n")
        say(f"written: {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
