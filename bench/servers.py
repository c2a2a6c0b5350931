"""The servers of the benchmark: how each is started, checked and stopped.

Every server is described once by a ``ServerSpec`` (key, label, exact settings, whether it is a
Python peer, which porch variant it is compared with, what it needs installed) and a builder that
turns a free port and the run's ``Paths`` into a command line.  ``RunningServer`` starts that
command in its own session (process group), with a raised open-file limit, waits for the port,
probes it with the workload's request, and ``stop()`` ends the whole group -- TERM, then KILL --
so nothing outlives the run, whatever happened.
"""

from __future__ import annotations

import http.client
import os
import re
import resource
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0
NOFILE_WANTED = 65536
COMPILED_VENV_NAME = ".venv-compiled"  # beside bench/.venv: porch built with PORCH_COMPILE=1 (run.py builds it)


@dataclass(frozen=True)
class Paths:
    """Where things are for one run."""

    repo: Path  # the porch checkout
    bench: Path  # repo/bench
    work: Path  # a temporary directory: document root, rendered configs, server logs
    venv: Path  # bench/.venv, holding the Python peers
    cgi_python: str  # interpreter put in the cgi-py script's #! line

    @property
    def root(self) -> Path:
        return self.work / "www"

    @property
    def apps(self) -> Path:
        return self.bench / "apps"

    @property
    def compiled(self) -> Path:
        return self.bench / COMPILED_VENV_NAME


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    stop_signal: int = signal.SIGTERM


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str  # the name in the tables
    settings: str  # exactly how it runs, for the tables and the README
    build: Callable[[Paths, int], Command]
    python_peer: bool = False  # counts for "best Python peer" targets
    compare_to: str | None = None  # key of the porch variant this peer is compared with
    needs: tuple[str, ...] = ()  # programs on PATH, "venv:NAME" for a program in the venv, or "compiled"

    @property
    def is_porch(self) -> bool:
        return self.key.startswith("porch")

    @property
    def compiled(self) -> bool:
        """porch's compiled build (bench/.venv-compiled)."""
        return "compiled" in self.needs

    def missing(self, paths: Paths) -> str | None:
        """Why this server cannot run here, or None."""
        for need in self.needs:
            if need == "compiled":
                if not (paths.compiled / "bin" / "porch").exists():
                    return f"porch's compiled build is not in {paths.compiled.name} (run.py builds it)"
            elif need.startswith("venv:"):
                program = paths.venv / "bin" / need[5:]
                if not program.exists():
                    return f"{need[5:]} is not installed in {paths.venv.name}"
            elif shutil.which(need) is None:
                return f"{need} is not installed (apt-get install {need})"
        return None


def compiled_twin(key: str) -> str:
    """The compiled build's server of a pure porch variant: porch-static -> porch-compiled-static."""
    return key.replace("porch-", "porch-compiled-", 1)


def with_counts(spec: ServerSpec, workers: int | None, threads: int | None) -> ServerSpec:
    """The porch variant ``spec`` with other ``workers``/``threads`` (an experiment, not a peer match)."""
    if workers is None and threads is None:
        return spec

    def build(paths: Paths, port: int) -> Command:
        command = spec.build(paths, port)
        env = dict(command.env)
        if workers is not None:
            env["BENCH_WORKERS"] = str(workers)
        if threads is not None:
            env["BENCH_THREADS"] = str(threads)
        return Command(command.argv, env, command.cwd, command.stop_signal)

    settings = spec.settings
    if workers is not None:
        settings = re.sub(r"workers: \d+", f"workers: {workers}", settings)
    if threads is not None:
        settings = re.sub(r"threads: \d+", f"threads: {threads}", settings)
    return replace(spec, settings=settings, build=build)


def render(template: Path, target: Path, **values: object) -> Path:
    """Write ``template`` with its ``$name`` placeholders filled in (string.Template)."""
    target.write_text(string.Template(template.read_text()).substitute(**{k: str(v) for k, v in values.items()}))
    return target


# -- the builders -----------------------------------------------------------------------------


def porch(
    config: str,
    workers: int,
    threads: int,
    keepalive: float | None = None,
    metrics: bool = True,
    compiled: bool = False,
) -> Callable[[Paths, int], Command]:
    """porch as ``python -m porch``: the pure build from the interpreter running the benchmark, or
    the compiled build from bench/.venv-compiled."""

    def build(paths: Paths, port: int) -> Command:
        env = {
            "BENCH_PORT": str(port),
            "BENCH_ROOT": str(paths.root),
            "BENCH_WORKERS": str(workers),
            "BENCH_THREADS": str(threads),
            "BENCH_METRICS": "true" if metrics else "false",
        }
        if keepalive is not None:
            env["BENCH_KEEPALIVE"] = str(keepalive)
        python = str(paths.compiled / "bin" / "python") if compiled else sys.executable
        return Command([python, "-m", "porch", "-c", str(paths.bench / "configs" / config)], env, paths.repo)

    return build


def gunicorn(worker_class: str, workers: int, threads: int = 1) -> Callable[[Paths, int], Command]:
    def build(paths: Paths, port: int) -> Command:
        argv = [
            str(paths.venv / "bin" / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            worker_class,
            "--chdir",
            str(paths.apps),
        ]
        if worker_class == "gthread":
            argv += ["--threads", str(threads)]
        return Command(argv + ["hello:app"], cwd=paths.apps)

    return build


def waitress(paths: Paths, port: int) -> Command:
    return Command(
        [str(paths.venv / "bin" / "waitress-serve"), f"--listen=127.0.0.1:{port}", "--threads=8", "hello:app"],
        {"PYTHONPATH": str(paths.apps)},
        paths.apps,
    )


def uwsgi(paths: Paths, port: int) -> Command:
    return Command(
        [
            str(paths.venv / "bin" / "uwsgi"),
            "--http11-socket",
            f"127.0.0.1:{port}",
            "--wsgi-file",
            str(paths.apps / "hello.py"),
            "--callable",
            "app",
            "--master",
            "--processes",
            "2",
            "--threads",
            "8",
            "--disable-logging",
            "--die-on-term",
            "--need-app",
        ],
        cwd=paths.apps,
        stop_signal=signal.SIGINT,
    )


def http_server(cgi: bool) -> Callable[[Paths, int], Command]:
    def build(paths: Paths, port: int) -> Command:
        argv = [
            sys.executable,
            str(paths.bench / "peers" / "httpserver.py"),
            "--port",
            str(port),
            "--root",
            str(paths.root),
        ]
        return Command(argv + (["--cgi"] if cgi else []), cwd=paths.work)

    return build


def xmlrpc_server(paths: Paths, port: int) -> Command:
    return Command(
        [sys.executable, str(paths.bench / "peers" / "xmlrpcserver.py"), "--port", str(port)], cwd=paths.work
    )


def nginx(paths: Paths, port: int) -> Command:
    conf = render(
        paths.bench / "configs" / "nginx.conf",
        paths.work / f"nginx-{port}.conf",
        port=port,
        root=paths.root,
        work=paths.work,
    )
    return Command(
        ["nginx", "-p", str(paths.work), "-e", str(paths.work / "nginx-error.log"), "-c", str(conf)], cwd=paths.work
    )


def lighttpd(paths: Paths, port: int) -> Command:
    conf = render(
        paths.bench / "configs" / "lighttpd.conf",
        paths.work / f"lighttpd-{port}.conf",
        port=port,
        root=paths.root,
        work=paths.work,
    )
    return Command(["lighttpd", "-D", "-f", str(conf)], cwd=paths.work)


SPECS: dict[str, ServerSpec] = {
    spec.key: spec
    for spec in [
        ServerSpec(
            "porch-2x8", "porch", "workers: 2, threads: 8, threading, access log off", porch("porch-wsgi.yaml", 2, 8)
        ),
        ServerSpec(
            "porch-2x8-nometrics",
            "porch, metrics off",
            "workers: 2, threads: 8, threading, access log off, metrics: false",
            porch("porch-wsgi.yaml", 2, 8, metrics=False),
        ),
        ServerSpec(
            "porch-1x8",
            "porch 1×8",
            "workers: 1, threads: 8, threading, access log off",
            porch("porch-wsgi.yaml", 1, 8),
        ),
        ServerSpec(
            "porch-idle",
            "porch",
            "workers: 2, threads: 8, keepalive timeout 300 s, access log off",
            porch("porch-wsgi.yaml", 2, 8, keepalive=300),
        ),
        ServerSpec(
            "porch-static",
            "porch",
            "workers: 1, threads: 8, static mount defaults, access log off",
            porch("porch-static.yaml", 1, 8),
        ),
        ServerSpec(
            "porch-static-nometrics",
            "porch, metrics off",
            "workers: 1, threads: 8, static mount defaults, access log off, metrics: false",
            porch("porch-static.yaml", 1, 8, metrics=False),
        ),
        ServerSpec(
            "porch-cgi",
            "porch",
            "workers: 1, threads: 8, cgi mount defaults, access log off",
            porch("porch-cgi.yaml", 1, 8),
        ),
        ServerSpec(
            "porch-xmlrpc",
            "porch",
            "workers: 1, threads: 8, xmlrpc mount defaults, access log off",
            porch("porch-xmlrpc.yaml", 1, 8),
        ),
        *(
            ServerSpec(
                compiled_twin(pure),
                "porch compiled",
                f"{pure} built with PORCH_COMPILE=1 (mypyc)",
                porch(config, workers, 8, compiled=True),
                needs=("compiled",),
            )
            for pure, config, workers in (
                ("porch-2x8", "porch-wsgi.yaml", 2),
                ("porch-static", "porch-static.yaml", 1),
                ("porch-cgi", "porch-cgi.yaml", 1),
                ("porch-xmlrpc", "porch-xmlrpc.yaml", 1),
            )
        ),
        ServerSpec(
            "gunicorn-sync",
            "gunicorn sync",
            "--workers 2 --worker-class sync (no keep-alive by design)",
            gunicorn("sync", 2),
            python_peer=True,
            compare_to="porch-2x8",
            needs=("venv:gunicorn",),
        ),
        ServerSpec(
            "gunicorn-gthread",
            "gunicorn gthread",
            "--workers 2 --worker-class gthread --threads 8",
            gunicorn("gthread", 2, 8),
            python_peer=True,
            compare_to="porch-2x8",
            needs=("venv:gunicorn",),
        ),
        ServerSpec(
            "waitress",
            "waitress",
            "--threads=8 (one process)",
            waitress,
            python_peer=True,
            compare_to="porch-1x8",
            needs=("venv:waitress-serve",),
        ),
        ServerSpec(
            "uwsgi",
            "uWSGI",
            "--http11-socket --master --processes 2 --threads 8 --disable-logging",
            uwsgi,
            compare_to="porch-2x8",
            needs=("venv:uwsgi",),
        ),
        ServerSpec(
            "http.server",
            "http.server",
            "ThreadingHTTPServer, SimpleHTTPRequestHandler, HTTP/1.1",
            http_server(cgi=False),
            python_peer=True,
            compare_to="porch-static",
        ),
        ServerSpec(
            "http.server-cgi",
            "http.server CGI",
            "ThreadingHTTPServer, CGIHTTPRequestHandler, HTTP/1.0",
            http_server(cgi=True),
            python_peer=True,
            compare_to="porch-cgi",
        ),
        ServerSpec(
            "xmlrpc.server",
            "SimpleXMLRPCServer",
            "ThreadingMixIn, HTTP/1.1, logRequests=False",
            xmlrpc_server,
            python_peer=True,
            compare_to="porch-xmlrpc",
        ),
        ServerSpec(
            "nginx",
            "nginx",
            "worker_processes 1, sendfile on, access_log off",
            nginx,
            compare_to="porch-static",
            needs=("nginx",),
        ),
        ServerSpec(
            "lighttpd",
            "lighttpd",
            "one process, mod_cgi, no access log",
            lighttpd,
            compare_to="porch-cgi",
            needs=("lighttpd",),
        ),
    ]
}


# -- processes ----------------------------------------------------------------------------------


def raise_nofile() -> None:
    """Lift the soft open-file limit (idle-10k holds 10 000 sockets); runs here and in children."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(NOFILE_WANTED, hard)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Probe:
    ok: bool
    detail: str
    keep_alive: bool = False
    framing: str = ""  # how the response body ends: "length", "chunked" or "close"


class RunningServer:
    """One server process group, started on a free loopback port."""

    def __init__(self, spec: ServerSpec, paths: Paths) -> None:
        self.spec = spec
        self.port = free_port()
        self.command = spec.build(paths, self.port)
        self.log_path = paths.work / f"{spec.key}-{self.port}.log"
        env = {**os.environ, **self.command.env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command.argv,
                cwd=self.command.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=raise_nofile,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> str | None:
        """Wait until the port accepts connections; the problem, or None when ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"exited with status {self.process.returncode}: {self.log_tail()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return None
            except OSError:
                time.sleep(0.05)
        return f"not listening after {timeout:.0f} s: {self.log_tail()}"

    def probe(
        self, method: str, path: str, body: bytes, headers: dict[str, str], check: Callable[[bytes], bool]
    ) -> Probe:
        """Send the workload's request twice on one connection: a correct answer, and kept alive?"""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        framing = ""
        try:
            for attempt in range(2):
                try:
                    conn.request(method, path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as error:
                    if attempt == 0:
                        return Probe(False, f"{method} {path}: {error!r}")
                    return Probe(True, "closes idle connections", False, framing)
                if response.status != 200 or not check(data):
                    return Probe(False, f"{method} {path}: {response.status} {data[:200]!r}")
                if attempt == 0:
                    framing = (
                        "chunked"
                        if response.chunked
                        else "length"
                        if response.length is not None or response.getheader("content-length")
                        else "close"
                    )
                    if response.will_close:
                        return Probe(True, "answers Connection: close", False, framing)
            return Probe(True, "keeps connections alive", True, framing)
        finally:
            conn.close()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        """End the whole process group: the stop signal, then KILL after STOP_TIMEOUT_SECONDS."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, self.command.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # children left in the group, if any
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pass
