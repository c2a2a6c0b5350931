"""Benchmark porch against the servers its users would pick instead, side by side, in one run.

    python bench/run.py            full run: wrk -t2 -c32 -d10s, 2 repeats (about 13 minutes)
    python bench/run.py --quick    development run: -d3s, 1 repeat (about 3 minutes)
    python bench/run.py --workloads wsgi-hello,static-1k --servers porch-2x8,uwsgi --repeats 3

How a run goes::

    check wrk / nginx / lighttpd (a missing one skips its peer, with a line saying so)
    bench/.venv: create it and pip install the Python peers when missing (uWSGI may fail: skipped)
    bench/.venv-compiled: porch built with PORCH_COMPILE=1, again whenever its sources changed
    a temporary document root: 1k.txt, 10m.bin, cgi-bin/hello.sh, cgi-bin/hello.py
    for each workload:
        start its servers (each in its own process group, on a free 127.0.0.1 port)
        probe each (a correct response? keep-alive?), warm it up with a short wrk run
        repeat R times, interleaved (A B C A B C): CPU of the server tree, wrk, CPU again
        stop them all
    print the markdown report and write it to bench/results/<date>-<mode>.md (+ .json samples,
    + .svg: req/s and CPU per request of every server, per workload)

Every process is started in its own session and ended in ``finally`` (also on Ctrl-C or TERM),
every wait has a timeout, and only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from measure import IdleHolder, lua_script, run_wrk, tree_context_switches, tree_cpu_seconds, tree_memory
from report import Report, aggregate, chart, machine_line, render
from servers import COMPILED_VENV_NAME, SPECS, Paths, Probe, RunningServer, raise_nofile
from workloads import STATIC_LARGE_BYTES, STATIC_SMALL_BYTES, WORKLOADS, Workload

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
PEER_PACKAGES = ["gunicorn==27.0.1", "waitress==3.0.2"]
UWSGI_PACKAGE = "uwsgi==2.0.31"
UWSGI_FAILED_MARKER = VENV / "uwsgi-build-failed"
PIP_TIMEOUT_SECONDS = 600
COMPILED_VENV = BENCH / COMPILED_VENV_NAME
COMPILED_STAMP = COMPILED_VENV / "porch-sources.sha256"  # what the compiled build was built from
MODES = {  # duration (s), repeats, warm-up (s)
    "quick": (3.0, 1, 1.0),
    "full": (10.0, 2, 2.0),
}


def say(text: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    print(text, file=sys.stderr, flush=True)


def pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_SECONDS,
        check=False,
    )


def ensure_venv(reinstall: bool) -> list[str]:
    """Create bench/.venv with the Python peers; the lines explaining what is unavailable."""
    problems: list[str] = []
    python = VENV / "bin" / "python"
    if reinstall and VENV.exists():
        shutil.rmtree(VENV)
    if not python.exists():
        say(f"creating {VENV.relative_to(REPO)} for the Python peers")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=PIP_TIMEOUT_SECONDS)
    have = subprocess.run([str(python), "-c", "import gunicorn, waitress"], capture_output=True, check=False)
    if have.returncode != 0:
        say(f"installing {' '.join(PEER_PACKAGES)} into {VENV.relative_to(REPO)}")
        done = pip(PEER_PACKAGES)
        if done.returncode != 0:
            problems.append(f"gunicorn/waitress could not be installed: {done.stderr.strip()[-300:]}")
    if not (VENV / "bin" / "uwsgi").exists() and not UWSGI_FAILED_MARKER.exists():
        say(f"building {UWSGI_PACKAGE} (needs a C compiler and Python headers; about 30 s)")
        done = pip([UWSGI_PACKAGE])
        if done.returncode != 0:
            UWSGI_FAILED_MARKER.write_text(done.stderr[-4000:])
    if UWSGI_FAILED_MARKER.exists():
        problems.append(f"uWSGI did not build (see {UWSGI_FAILED_MARKER.relative_to(REPO)}; --reinstall tries again)")
    return problems


def sources_digest() -> str:
    """A digest of everything the compiled build is made from."""
    digest = hashlib.sha256()
    files = [REPO / "pyproject.toml", REPO / "setup.py"]
    for folder in ("server", "handlers", "build_backend"):
        files += sorted(
            path for path in (REPO / folder).rglob("*") if path.is_file() and "__pycache__" not in path.parts
        )
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def ensure_compiled(reinstall: bool) -> list[str]:
    """bench/.venv-compiled with porch built by PORCH_COMPILE=1 from this checkout, rebuilt when the
    sources changed since; the line explaining why it is unavailable."""
    python = COMPILED_VENV / "bin" / "python"
    digest = sources_digest()
    if not reinstall and COMPILED_STAMP.exists() and COMPILED_STAMP.read_text() == digest:
        return []
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(COMPILED_VENV)], check=True, timeout=PIP_TIMEOUT_SECONDS)
    COMPILED_STAMP.unlink(missing_ok=True)
    say(f"building porch compiled into {COMPILED_VENV.relative_to(REPO)} (PORCH_COMPILE=1, about a minute)")
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--force-reinstall", str(REPO)],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_SECONDS,
        check=False,
        env={**os.environ, "PORCH_COMPILE": "1"},
    )
    if done.returncode != 0:
        return [f"porch compiled did not build: {done.stderr.strip()[-300:]}"]
    COMPILED_STAMP.write_text(digest)
    return []


def porch_build(python: str) -> str:
    """What ``python -m porch --version`` says it is: "pure", "compiled", or why it did not say."""
    done = subprocess.run([python, "-m", "porch", "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.strip().rpartition("(")[2].rstrip(")") if done.returncode == 0 else done.stderr.strip()


def publish(text: str, name: str, save: bool) -> None:
    """Print a report and, with ``save``, write it to bench/results/``name``."""
    print(text)
    if save:
        target = BENCH / "results" / name
        target.write_text(text + "\n")
        say(f"written: {target.relative_to(REPO)}")


def run_paths(work: Path) -> Paths:
    """The paths of a run in the temporary directory ``work``, its document root prepared; CGI
    scripts' #! line names the system's python3 where there is one."""
    cgi_python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else os.path.realpath(sys.executable)
    paths = Paths(REPO, BENCH, work, VENV, cgi_python)
    prepare_root(paths)
    return paths


def prepare_root(paths: Paths) -> None:
    """The document root every server serves: two files and the two CGI scripts."""
    root = paths.root
    (root / "cgi-bin").mkdir(parents=True)
    (root / "1k.txt").write_bytes((b"porch benchmark 1k file. " * 41)[: STATIC_SMALL_BYTES - 1] + b"\n")
    with open(root / "10m.bin", "wb") as big:
        block = bytes(range(256)) * 4096
        for _ in range(STATIC_LARGE_BYTES // len(block)):
            big.write(block)
    shutil.copy(BENCH / "cgi-bin" / "hello.sh", root / "cgi-bin" / "hello.sh")
    script = (BENCH / "cgi-bin" / "hello.py").read_text().split("\n", 1)[1]
    (root / "cgi-bin" / "hello.py").write_text(f"#!{paths.cgi_python}\n{script}")
    for path in (root / "cgi-bin" / "hello.sh", root / "cgi-bin" / "hello.py"):
        path.chmod(0o755)
    # http.server runs CGI scripts as nobody: every directory on the way must be searchable.
    for directory in (paths.work, root, root / "cgi-bin"):
        directory.chmod(0o755)


def measure_once(
    server: RunningServer, workload: Workload, url: str, script: Path, duration: float, connections: int
) -> dict:
    before, switches = tree_cpu_seconds(server.pid), tree_context_switches(server.pid)
    result = run_wrk(url, script, duration, connections)
    cpu = tree_cpu_seconds(server.pid) - before
    switches = tree_context_switches(server.pid) - switches
    requests = max(result.requests, 1)
    return {
        "requests": result.requests,
        "bytes": result.bytes,
        "seconds": result.seconds,
        "rps": result.rps,
        "mibps": result.mib_per_second,
        "p50_ms": result.p50_ms,
        "p90_ms": result.p90_ms,
        "p99_ms": result.p99_ms,
        "max_ms": result.max_ms,
        "errors": result.errors,
        "cpu_us": cpu / requests * 1e6,
        "switches": switches / requests,
    }


def run_workload(
    workload: Workload,
    servers: list[str],
    paths: Paths,
    args: argparse.Namespace,
    samples: list[dict],
    probes: dict[tuple[str, str], Probe],
    skipped: list[str],
) -> None:
    script = lua_script(BENCH, workload.script, paths.work)
    running: list[RunningServer] = []
    try:
        for key in servers:
            running += [RunningServer(SPECS[key], paths) for _ in range(args.instances)]
        live: list[RunningServer] = []
        for server in running:
            problem = server.wait_ready()
            probe = None
            if problem is None:
                probe = server.probe(workload.method, workload.path, workload.body, workload.headers, workload.check)
                problem = None if probe.ok else probe.detail
            if problem is not None:
                skipped.append(f"{workload.name} / {server.spec.key}: {problem}")
                say(f"  {server.spec.key}: SKIPPED: {problem}")
                server.stop()
                continue
            assert probe is not None
            probes[(workload.name, server.spec.key)] = probe
            if args.warmup > 0:
                try:
                    run_wrk(f"http://127.0.0.1:{server.port}{workload.path}", script, args.warmup, args.connections)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    skipped.append(f"{workload.name} / {server.spec.key}: warm-up failed: {error}")
                    say(f"  {server.spec.key}: SKIPPED: warm-up failed: {error}")
                    server.stop()
                    continue
            live.append(server)
        for repeat in range(args.repeats):
            for server in live:
                url = f"http://127.0.0.1:{server.port}{workload.path}"
                instance = [other for other in live if other.spec.key == server.spec.key].index(server)
                try:
                    if workload.idle_connections:
                        measure_idle(server, workload, url, script, args, repeat, samples)
                        continue
                    sample = measure_once(server, workload, url, script, args.duration, args.connections)
                except (RuntimeError, subprocess.TimeoutExpired) as error:  # wrk or the holder failed
                    skipped.append(f"{workload.name} / {server.spec.key} run {repeat + 1}: {error}")
                    say(f"  {server.spec.key:17} #{repeat + 1}: FAILED: {error}")
                    continue
                samples.append(
                    {
                        "workload": workload.name,
                        "server": server.spec.key,
                        "phase": "",
                        "repeat": repeat,
                        "instance": instance,
                        **sample,
                    }
                )
                which = f"{server.spec.key}/{instance + 1}" if args.instances > 1 else server.spec.key
                say(f"  {which:17} #{repeat + 1}: {describe(workload, sample)}")
    finally:
        for server in running:
            server.stop()


def measure_idle(
    server: RunningServer,
    workload: Workload,
    url: str,
    script: Path,
    args: argparse.Namespace,
    repeat: int,
    samples: list[dict],
) -> None:
    """idle-10k: hello without, then with, the idle connections held open (A B per repeat)."""
    sample = measure_once(server, workload, url, script, args.duration, args.connections)
    memory = tree_memory(server.pid)
    samples.append(
        {
            "workload": workload.name,
            "server": server.spec.key,
            "phase": "baseline",
            "repeat": repeat,
            "rss_mib": memory.rss_mib,
            "threads": memory.threads,
            **sample,
        }
    )
    say(
        f"  {server.spec.key:17} #{repeat + 1} without idle: {describe(workload, sample)}, "
        f"RSS {memory.rss_mib:.0f} MiB, {memory.threads} threads"
    )
    holder = IdleHolder(BENCH, server.port, workload.idle_connections, workload.path)
    try:
        opened = holder.wait_ready()
        held = tree_memory(server.pid)
        sample = measure_once(server, workload, url, script, args.duration, args.connections)
        after = tree_memory(server.pid)
    finally:
        still_open = holder.stop()
    samples.append(
        {
            "workload": workload.name,
            "server": server.spec.key,
            "phase": "idle",
            "repeat": repeat,
            "rss_mib": max(held.rss_mib, after.rss_mib),
            "threads": max(held.threads, after.threads),
            "idle_opened": opened,
            "idle_open": still_open,
            **sample,
        }
    )
    say(
        f"  {server.spec.key:17} #{repeat + 1} with {opened:,} idle: {describe(workload, sample)}, "
        f"RSS {max(held.rss_mib, after.rss_mib):.0f} MiB, {max(held.threads, after.threads)} threads, "
        f"{still_open} still open after"
    )


def describe(workload: Workload, sample: dict) -> str:
    speed = f"{sample['mibps']:,.1f} MiB/s" if workload.unit == "MiB/s" else f"{sample['rps']:,.0f} req/s"
    errors = {key: count for key, count in sample["errors"].items() if count}
    return f"{speed}, p99 {sample['p99_ms']:.2f} ms, {sample['cpu_us']:,.0f} µs CPU/req" + (
        f", errors {errors}" if errors else ""
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark porch against peer servers with wrk.")
    parser.add_argument("--quick", action="store_true", help="development mode: -d3s, 1 repeat, 1 s warm-up")
    parser.add_argument("--workloads", help=f"comma-separated subset of: {', '.join(WORKLOADS)}")
    parser.add_argument("--servers", help=f"comma-separated subset of: {', '.join(SPECS)}")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (quick 3, full 10)")
    parser.add_argument("--repeats", type=int, help="runs per server, interleaved (quick 1, full 2)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per server (quick 1, full 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="processes started per server, each measured in turn (default 1): two runs of one "
        "server differ by a few %% with hash seeds and memory layout, so an A/B of a few %% needs several",
    )
    parser.add_argument("--no-save", action="store_true", help="print the report only; write no results file")
    parser.add_argument("--reinstall", action="store_true", help="recreate bench/.venv (and retry uWSGI)")
    args = parser.parse_args(argv)
    args.mode = "quick" if args.quick else "full"
    duration, repeats, warmup = MODES[args.mode]
    args.duration = args.duration or duration
    args.repeats = args.repeats or repeats
    args.warmup = args.warmup if args.warmup is not None else warmup
    if any(value is not None and value <= 0 for value in (args.duration, args.repeats, args.instances)):
        parser.error("--duration, --repeats and --instances must be positive")
    args.workload_names = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    args.server_names = args.servers.split(",") if args.servers else None
    for name in args.workload_names:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}")
    for name in args.server_names or ():
        if name not in SPECS:
            parser.error(f"unknown server {name!r}")
    return args


def chosen(workload: str, args: argparse.Namespace) -> list[str]:
    """The servers of ``workload`` that --servers asks for, with the porch variants they are compared with."""
    return [
        key
        for key in WORKLOADS[workload].servers
        if args.server_names is None
        or key in args.server_names
        or (SPECS[key].is_porch and any(SPECS[s].compare_to == key for s in args.server_names))
    ]


def stop_on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so every finally runs and every server is stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_term)
    raise_nofile()
    skipped: list[str] = []
    if shutil.which("wrk") is None:
        say("wrk is not installed: apt-get install wrk (it drives every measurement)")
        return 2
    skipped += ensure_venv(args.reinstall)
    build = porch_build(sys.executable)
    if build != "pure":  # the rows named porch are the pure build
        say(f"{sys.executable} -m porch runs porch's {build} build: run the benchmark with the pure one")
        return 2
    if any(SPECS[key].compiled for name in args.workload_names for key in chosen(name, args)):
        skipped += ensure_compiled(args.reinstall)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="porch-bench-") as work:
        paths = run_paths(Path(work))
        plan: list[tuple[Workload, list[str]]] = []
        for name in args.workload_names:
            workload = WORKLOADS[name]
            servers = []
            for key in chosen(name, args):
                missing = SPECS[key].missing(paths)
                if missing:
                    note = f"{SPECS[key].label}: {missing}"
                    if note not in skipped:
                        skipped.append(note)
                        say(f"skipping {note}")
                    continue
                servers.append(key)
            if servers:
                plan.append((workload, servers))
        runs = args.instances * sum(
            len(servers) * (2 if workload.idle_connections else 1) for workload, servers in plan
        )
        say(
            f"{args.mode} run: {len(plan)} workloads, {runs} server runs × {args.repeats} repeats × "
            f"{args.duration:g} s ≈ {runs * args.repeats * (args.duration + 0.3) / 60 + len(plan) * 0.15:.0f} min"
        )
        samples: list[dict] = []
        probes: dict[tuple[str, str], Probe] = {}
        try:
            for workload, servers in plan:
                say(f"{workload.name}: {', '.join(servers)}")
                run_workload(workload, servers, paths, args, samples, probes, skipped)
        except KeyboardInterrupt:
            say("interrupted: every server was stopped; reporting what was measured")
        settings = (
            f"{args.mode} mode, `wrk -t2 -c{args.connections} -d{args.duration:g}s --latency`, "
            f"{args.repeats} repeat(s) interleaved per workload, {args.warmup:g} s warm-up per server, "
            f"{args.instances} instance(s) of each, "
            f"{datetime.date.today().isoformat()}, {(time.monotonic() - started) / 60:.1f} min"
        )
        report = Report(machine_line(VENV, REPO), settings, aggregate(samples, probes), skipped)
    text = render(report)
    print(text)
    if not args.no_save and samples:
        results = BENCH / "results"
        results.mkdir(exist_ok=True)
        stem = results / f"{datetime.date.today().isoformat()}-{args.mode}"
        stem.with_suffix(".md").write_text(f"# porch benchmark, {args.mode} run\n\n{text}")
        stem.with_suffix(".json").write_text(
            json.dumps(
                {"machine": report.machine, "settings": settings, "skipped": skipped, "samples": samples}, indent=1
            )
        )
        stem.with_suffix(".svg").write_text(chart(report.rows))
        say(f"written: {stem.with_suffix('.md').relative_to(REPO)}, .json and .svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
