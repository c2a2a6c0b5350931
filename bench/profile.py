"""Profile porch's workers on one workload: where the CPU goes, per request.

    python bench/profile.py wsgi-hello                 py-spy, 10 s at 200 Hz, top functions
    python bench/profile.py static-1k --syscalls       also count syscalls per request (strace -c)
    python bench/profile.py cgi-sh --native --gil      C frames too / only the GIL holder
    python bench/profile.py xmlrpc-add --perf          CPU per system call and kernel share (perf)

How it works: the porch variant of the workload is started exactly as ``run.py`` starts it, warmed
up, and measured once without any profiler (req/s and the server's CPU µs per request from
/proc).  Then wrk runs again while ``py-spy record --format raw`` samples every worker process;
idle threads (blocked in a syscall, or waiting for the GIL) are not sampled, so the samples
approximate CPU time.  The collapsed stacks are summed per function -- *self* (the function was
on top) and *inclusive* (it was anywhere on the stack) -- and each share is also shown as µs per
request: share × the CPU per request of the clean run.  With ``--syscalls``, ``strace -c -f``
attached to the workers counts system calls during another wrk run; calls per request are
exact even though strace slows the server down.  With ``--perf``, ``perf record -g`` samples the
workers' CPU (user and kernel) during a further wrk run, and the report gives each system call's
inclusive share of it -- how much of the CPU the futex calls of GIL hand-offs take, say.

The report goes to stdout and to bench/results/profile-<workload>-<server>.md; the raw collapsed stacks
(for flamegraph.pl or speedscope) stay in bench/results/profiles/ when ``--keep-raw`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from measure import lua_script, process_tree, run_wrk, tree_context_switches, tree_cpu_seconds
from run import BENCH, REPO, VENV, ensure_venv, pip, publish, run_paths, say
from servers import SPECS, RunningServer, raise_nofile, with_counts
from workloads import REQUEST_WORKLOADS, WORKLOADS

PYSPY_PACKAGE = "py-spy==0.4.3"
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
STRACE_ROW = re.compile(
    r"^\s*(?P<percent>[\d.]+)\s+(?P<seconds>[\d.]+)\s+(?P<usecs>\d+)\s+(?P<calls>\d+)"
    r"\s+(?:(?P<errors>\d+)\s+)?(?P<name>\w+)\s*$"
)


def py_spy() -> str:
    found = shutil.which("py-spy") or (str(VENV / "bin" / "py-spy") if (VENV / "bin" / "py-spy").exists() else None)
    if found:
        return found
    say(f"installing {PYSPY_PACKAGE} into {VENV.relative_to(REPO)}")
    done = pip([PYSPY_PACKAGE])
    if done.returncode != 0:
        raise SystemExit(f"py-spy could not be installed: {done.stderr.strip()[-300:]}")
    return str(VENV / "bin" / "py-spy")


def frame_key(frame: str) -> str:
    """``function (file)`` without the line number, the file relative to the repository."""
    match = FRAME.match(frame)
    if not match:
        return frame
    if match["function"].startswith("0x"):
        return f"[{match['file']}]"  # a native frame without symbols
    path = match["file"]
    path = path.removeprefix(str(REPO) + "/")
    path = re.sub(r"^.*?/lib/python3\.\d+/", "", path)  # the standard library, wherever installed
    return f"{match['function']} ({path})"


def summarise(raw_files: list[Path]) -> tuple[int, Counter[str], Counter[str], Counter[str], Counter[str]]:
    """Total samples; self and inclusive samples per function; self per file; per thread role."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    roles: Counter[str] = Counter()
    for raw in raw_files:
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [frame_key(frame) for frame in stack.split(";") if frame]
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for key in set(frames):
                inclusive[key] += count
            by_file[frames[-1].rpartition("(")[2].rstrip(")")] += count
            joined = ";".join(frames)
            role = (
                "acceptor"
                if "serve_forever" in joined
                else "pool thread"
                if ".work (" in joined
                else "main thread"
                if "Runtime.run" in joined
                else "other"
            )
            roles[role] += count
    return total, own, inclusive, by_file, roles


def table(title: str, counts: Counter[str], total: int, cpu_us: float, top: int) -> list[str]:
    lines = [f"#### {title}", "", "| # | function (file) | share | µs/req |", "|---:|---|---:|---:|"]
    for n, (key, count) in enumerate(counts.most_common(top), 1):
        share = count / total if total else 0.0
        lines.append(f"| {n} | `{key}` | {share:.1%} | {share * cpu_us:,.1f} |")
    return lines + [""]


def syscall_counts(
    workers: list[int], url: str, script: Path, duration: float, connections: int
) -> tuple[list[tuple[str, int, int]], int]:
    """strace -c -f on the workers during one wrk run: (name, calls, errors) rows and the requests."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as output:
        argv = ["strace", "-c", "-f", "-o", output.name]
        for pid in workers:
            argv += ["-p", str(pid)]
        tracer = subprocess.Popen(argv, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(1.0)  # attached
            result = run_wrk(url, script, duration, connections)
        finally:
            tracer.send_signal(signal.SIGINT)
            try:
                tracer.wait(30)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()
        rows = []
        for line in Path(output.name).read_text().splitlines():
            match = STRACE_ROW.match(line)
            if match and match["name"] != "total":
                rows.append((match["name"], int(match["calls"]), int(match["errors"] or 0)))
    return sorted(rows, key=lambda row: -row[1]), result.requests


PERF_DSO_ROW = re.compile(r"^\s+(?P<share>[\d.]+)%\s+(?P<object>\S.*?)\s*$")
PERF_ROW = re.compile(r"^\s+(?P<children>[\d.]+)%\s+(?P<self>[\d.]+)%\s+\[(?P<space>k|\.)\]\s+(?P<symbol>.+?)\s*$")


def perf_report(data: Path, children: str, sort: str) -> list[str]:
    """The lines of ``perf report`` on ``data``, sorted by ``sort``, without call graphs."""
    return subprocess.run(
        ["perf", "report", "-i", str(data), children, "--sort", sort, "--stdio", "-g", "none"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    ).stdout.splitlines()


def perf_tables(
    workers: list[int], url: str, script: Path, duration: float, connections: int, work: Path, top: int
) -> list[str]:
    """perf record -g on the workers during a wrk run: CPU per system call, kernel share, top symbols."""
    if shutil.which("perf") is None:
        return ["perf is not installed (apt-get install linux-perf): no system-level profile.", ""]
    data = work / "perf.data"
    load = subprocess.Popen(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration + 3:g}s", "-s", str(script), url],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(1.0)
        recorded = subprocess.run(
            [
                "perf",
                "record",
                "-F",
                "999",
                "-g",
                "-o",
                str(data),
                "-p",
                ",".join(map(str, workers)),
                "--",
                "sleep",
                f"{duration:g}",
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        )
    finally:
        load.wait(duration + 30)
    if recorded.returncode != 0 or not data.exists():
        return [f"perf record failed: {recorded.stderr.strip()[-300:]}", ""]
    rows = [match for line in perf_report(data, "--children", "sym") if (match := PERF_ROW.match(line))]
    by_object = perf_report(data, "--no-children", "dso")
    objects = [(m["object"], float(m["share"])) for line in by_object if (m := PERF_DSO_ROW.match(line))]
    kernel = sum(float(row["self"]) for row in rows if row["space"] == "k")
    calls = [
        (row["symbol"].removeprefix("__x64_sys_"), float(row["children"]))
        for row in rows
        if row["symbol"].startswith("__x64_sys_")
    ]
    lines = [
        "#### CPU by system call (perf, inclusive: the call and the kernel work under it)",
        "",
        f"perf record -F 999 -g for {duration:g} s on the workers: {kernel:.0f}% of their CPU is in the kernel.",
        "",
        "| system call | share of worker CPU |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {share:.1f}% |" for name, share in sorted(calls, key=lambda c: -c[1])[:15]]
    lines += [
        "",
        "#### CPU by object (perf: the kernel, the interpreter, porch's compiled modules, libc, ...)",
        "",
        "| object | share of worker CPU |",
        "|---|---:|",
    ]
    lines += [f"| `{name}` | {share:.1f}% |" for name, share in objects[:top]]
    lines += [
        "",
        "#### Top symbols by self CPU (perf; `[k]` kernel, `[.]` user space)",
        "",
        "| symbol | self |",
        "|---|---:|",
    ]
    for row in sorted(rows, key=lambda r: -float(r["self"]))[:top]:
        lines.append(f"| `[{row['space']}] {row['symbol']}` | {float(row['self']):.1f}% |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Profile porch's workers on one workload with py-spy.")
    parser.add_argument("workload", choices=REQUEST_WORKLOADS)
    parser.add_argument("--server", help="porch variant to run (default: the workload's first porch server)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sampling (default 10)")
    parser.add_argument("--rate", type=int, default=200, help="samples per second (default 200)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL")
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    parser.add_argument("--syscalls", action="store_true", help="count syscalls per request with strace -c")
    parser.add_argument("--perf", action="store_true", help="also profile with perf: CPU per system call, kernel share")
    parser.add_argument("--keep-raw", action="store_true", help="keep the collapsed stacks in bench/results/profiles/")
    parser.add_argument("--workers", type=int, help="experiment: run the porch variant with this many workers")
    parser.add_argument("--threads", type=int, help="experiment: run the porch variant with this many threads")
    parser.add_argument(
        "--clean-only",
        action="store_true",
        help="only the clean run (req/s, CPU and context switches per request); no profiler",
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]
    key = args.server or next(name for name in workload.servers if SPECS[name].is_porch)
    raise_nofile()
    ensure_venv(reinstall=False)
    spy = py_spy()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="porch-profile-") as work:
        paths = run_paths(Path(work))
        script = lua_script(BENCH, workload.script, paths.work)
        spec = with_counts(SPECS[key], args.workers, args.threads)
        server = RunningServer(spec, paths)
        try:
            problem = server.wait_ready()
            if problem:
                raise SystemExit(f"{key}: {problem}")
            probe = server.probe(workload.method, workload.path, workload.body, workload.headers, workload.check)
            if not probe.ok:
                raise SystemExit(f"{key}: {probe.detail}")
            url = f"http://127.0.0.1:{server.port}{workload.path}"
            run_wrk(url, script, 2.0, args.connections)
            before, switches = tree_cpu_seconds(server.pid), tree_context_switches(server.pid)
            clean = run_wrk(url, script, args.duration, args.connections)
            cpu_us = (tree_cpu_seconds(server.pid) - before) / clean.requests * 1e6 if clean.requests else 0.0
            switches_per_request = (tree_context_switches(server.pid) - switches) / max(clean.requests, 1)
            workers = [pid for pid in process_tree(server.pid) if parent_of(pid) == server.pid]
            if args.clean_only:
                print(
                    f"{args.workload} on {spec.label} ({spec.settings}): {clean.rps:,.0f} req/s, p99 "
                    f"{clean.p99_ms:.2f} ms, {cpu_us:,.0f} µs CPU/req, {switches_per_request:.1f} context switches/req"
                )
                return 0
            say(
                f"{key}: {clean.rps:,.0f} req/s, {cpu_us:,.0f} µs CPU/req, {switches_per_request:.1f} context "
                f"switches/req; sampling workers {workers}"
            )
            raws = [Path(work) / f"raw-{pid}.txt" for pid in workers]
            spies = []
            load = subprocess.Popen(
                ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration + 3:g}s", "-s", str(script), url],
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                time.sleep(1.0)
                for pid, raw in zip(workers, raws, strict=True):
                    argv_spy = [
                        spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(args.rate),
                        "--duration",
                        f"{args.duration:g}",
                        "--format",
                        "raw",
                        "--output",
                        str(raw),
                    ]
                    argv_spy += [] if args.native else ["--nonblocking"]  # native stacks need a paused process
                    argv_spy += ["--gil"] if args.gil else []
                    argv_spy += ["--native"] if args.native else []
                    spies.append(
                        subprocess.Popen(
                            argv_spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
                        )
                    )
                for spy_process in spies:
                    try:
                        _, complaint = spy_process.communicate(timeout=args.duration + 30)
                    except subprocess.TimeoutExpired:
                        spy_process.kill()
                        _, complaint = spy_process.communicate()
                    if spy_process.returncode:
                        say(f"py-spy failed: {complaint.decode(errors='replace').strip()[-300:]}")
            finally:
                load.wait(args.duration + 30)
            total, own, inclusive, by_file, roles = summarise([raw for raw in raws if raw.exists()])
            lines += [
                f"### Profile: {args.workload} on {spec.label} ({spec.settings})",
                "",
                f"{datetime.date.today().isoformat()}; clean run: {clean.rps:,.0f} req/s, p99 "
                f"{clean.p99_ms:.2f} ms, **{cpu_us:,.0f} µs CPU per request** (server process tree), "
                f"{switches_per_request:.1f} context switches per request. "
                f"py-spy {args.rate} Hz for {args.duration:g} s on {len(workers)} worker(s)"
                f"{', GIL holder only' if args.gil else ''}{', with native frames' if args.native else ''}: "
                f"{total:,} non-idle samples. µs/req = share × CPU per request.",
                "",
            ]
            lines += (
                [
                    "Samples by thread role: "
                    + ", ".join(f"{role} {count / total:.0%}" for role, count in roles.most_common())
                    + ".",
                    "",
                ]
                if total
                else []
            )
            if spec.compiled:
                lines += [
                    "py-spy sees only interpreted frames: the time of a compiled module counts as the self",
                    "time of its nearest interpreted caller (`Thread.run` for the request spine); `--perf`",
                    "names the compiled functions.",
                    "",
                ]
            lines += table("Self time (the function itself was running)", own, total, cpu_us, args.top)
            lines += table("Inclusive time (the function or its callees)", inclusive, total, cpu_us, args.top)
            lines += table("Self time by file", Counter({f"{k}": v for k, v in by_file.items()}), total, cpu_us, 15)
            if args.syscalls:
                rows, requests = syscall_counts(workers, url, script, min(args.duration, 5.0), args.connections)
                lines += [
                    "#### System calls per request (strace -c -f on the workers)",
                    "",
                    f"{requests:,} requests under strace.",
                    "",
                    "| syscall | per request | errors per request |",
                    "|---|---:|---:|",
                ]
                for name, calls, errors in rows[:20]:
                    lines.append(f"| {name} | {calls / max(requests, 1):.2f} | {errors / max(requests, 1):.2f} |")
                lines.append(f"| **all** | {sum(r[1] for r in rows) / max(requests, 1):.2f} | |")
                lines.append("")
            if args.perf:
                lines += perf_tables(workers, url, script, args.duration, args.connections, Path(work), args.top)
            if args.keep_raw:
                keep = BENCH / "results" / "profiles"
                keep.mkdir(parents=True, exist_ok=True)
                for pid, raw in zip(workers, raws, strict=True):
                    if raw.exists():
                        shutil.copy(raw, keep / f"{args.workload}-{pid}.collapsed")
        finally:
            server.stop()
    publish("\n".join(lines), f"profile-{args.workload}-{key}.md", not args.no_save)
    return 0


def parent_of(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(text[text.rindex(")") + 2 :].split()[1])


if __name__ == "__main__":
    sys.exit(main())
