"""The ``porch`` command.

    porch [-c FILE] [--bind ADDR]...      serve from a config file (default ./config/porch.yaml,
                                          or the current directory when there is none)
          [-D] [--pidfile FILE]           in the background (exits once serving) / pidfile
    porch serve DIR [--port N] [--bind H] serve a directory with listings, no config file
    porch check [-c FILE]                 validate a config without serving (exit 0 or 1)
    porch stop [--timeout S]              TERM the server in the pidfile, wait until it is gone
    porch reload                          check the config, then HUP the server
    porch status                          exit 0 running, 1 stale pidfile, 3 not running, 4 unknown
    porch reopen                          USR1: the server reopens its log files
    porch top [--url URL] [--once]        the running server's status mount, redrawn (porch.top)

The control commands find the pidfile with ``--pidfile FILE`` or the ``pidfile`` key of the
config (``-c FILE``, default ./config/porch.yaml), and trust it only while it is locked
(``porch.master.daemon``): a stale pidfile never makes porch signal an unrelated process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from porch import __version__
from porch.config.load import config_from_mapping, load_config
from porch.config.settings import Config, ConfigError, ConfigProblem
from porch.config.yaml_nodes import read_yaml
from porch.handlers.build import check_config
from porch.master.daemon import check_privileges, process_gone, read_pid
from porch.top import DEFAULT_INTERVAL_SECONDS, interval_seconds, run_top

DEFAULT_CONFIG = Path("config") / "porch.yaml"
DEFAULT_PORT = 8000
STOP_MARGIN_SECONDS = 10.0  # `porch stop` waits timeouts.graceful plus this for the exit
STOP_TIMEOUT_SECONDS = 40.0  # ... or this when there is no config to read it from
STOP_POLL_SECONDS = 0.05
# Exit statuses of `porch status`, as LSB init scripts define them (LSB Core 5.0, "Init Script
# Actions"): running, dead but the pidfile exists, not running, unknown.
STATUS_RUNNING, STATUS_STALE, STATUS_NOT_RUNNING, STATUS_UNKNOWN = 0, 1, 3, 4


CONTROL_HELP = {
    "stop": "stop the running server gracefully (TERM) and wait until it has exited",
    "reload": "check the config, then make the running server reload it (HUP)",
    "status": "say whether the server runs: exit 0 running, 1 stale pidfile, 3 not running, 4 unknown",
    "reopen": "make the running server reopen its log files (USR1), after rotating them",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="porch",
        description="A pluggable HTTP/1.1 server: static files, CGI, WSGI and XML-RPC from one YAML file.",
        epilog="Without -c, porch uses ./config/porch.yaml if present, else serves the current directory.",
    )
    top.add_argument("--version", action="version", version=f"porch {__version__}")
    top.add_argument("-c", "--config", metavar="FILE", help="the YAML config file")
    top.add_argument(
        "-b",
        "--bind",
        metavar="ADDR",
        action="append",
        help="listen on ADDR (host:port, [v6]:port, unix:/path) instead of the configured listeners; repeatable",
    )
    top.add_argument(
        "-D",
        "--daemon",
        action="store_true",
        help="run in the background; exits 0 once the server serves (needs a pidfile and log files)",
    )
    top.add_argument(
        "--pidfile", metavar="FILE", help="write the master's pid to FILE, locked while it runs (overrides `pidfile`)"
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve a directory (with listings) without a config file")
    serve.add_argument("directory", nargs="?", default=".", help="the directory to serve (default: .)")
    serve.add_argument("-p", "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument(
        "-b",
        "--bind",
        metavar="ADDR",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; use 0.0.0.0 or :: for every interface)",
    )
    check = commands.add_parser("check", help="validate a config file and exit 0 (valid) or 1")
    check.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help="the YAML config file")
    for name, summary in CONTROL_HELP.items():
        control = commands.add_parser(name, help=summary, description=summary)
        control.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            default=argparse.SUPPRESS,
            help="the config of the running server (for its pidfile)",
        )
        control.add_argument(
            "--pidfile",
            metavar="FILE",
            default=argparse.SUPPRESS,
            help="the pidfile of the running server (instead of the config's)",
        )
        if name == "stop":
            control.add_argument(
                "--timeout",
                metavar="S",
                type=float,
                help="seconds to wait for the exit (default timeouts.graceful + "
                f"{STOP_MARGIN_SECONDS:g}, or {STOP_TIMEOUT_SECONDS:g} without a config)",
            )
    top_summary = "show the running server's status in the terminal, refreshed (its first `status` mount)"
    top_command = commands.add_parser("top", help=top_summary, description=top_summary)
    top_command.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="the config of the running server (for its status mount and first listener)",
    )
    top_command.add_argument(
        "--url", metavar="URL", help="the status mount to read instead, e.g. http://127.0.0.1:8000/status"
    )
    top_command.add_argument(
        "-i",
        "--interval",
        metavar="S",
        type=interval_seconds,
        default=DEFAULT_INTERVAL_SECONDS,
        help=f"seconds between refreshes (default {DEFAULT_INTERVAL_SECONDS:g})",
    )
    top_command.add_argument("--once", action="store_true", help="print one screen and exit (for scripts)")
    return top


def directory_config(directory: str, listen: Sequence[str]) -> Config:
    """The config of ``porch serve DIR``: one static mount with listings."""
    return config_from_mapping(
        {"listen": list(listen), "mounts": [{"path": "/", "type": "static", "root": directory, "listing": True}]},
        source="<command line>",
        base_dir=Path.cwd(),
    )


def config_path(args: argparse.Namespace) -> str | None:
    """The config file to serve: ``-c FILE``, else ./config/porch.yaml if present, else none."""
    if args.command == "serve":
        return None
    return args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)


def chosen_config(args: argparse.Namespace) -> Config:
    """The config to serve: ``serve DIR``, ``-c FILE``, ./config/porch.yaml, or the current directory."""
    if args.command == "serve":
        host = f"[{args.bind}]" if ":" in args.bind else args.bind
        return directory_config(args.directory, [f"{host}:{args.port}"])
    path = config_path(args)
    if path is None:
        return directory_config(".", args.bind or [f"127.0.0.1:{DEFAULT_PORT}"])
    return load_config(path, listen=args.bind)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        path = getattr(args, "config", None) or str(DEFAULT_CONFIG)
        try:
            print(check_config(path))
        except ConfigError as error:
            for problem in error.problems:
                print(problem, file=sys.stderr)
            return 1
        return 0
    if args.command in CONTROL_HELP:
        return control(args)
    if args.command == "top":
        return run_top(args.url, config_path(args), args.interval, args.once)
    return serve(args)


# --- serving --------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """Check what can be checked while a terminal still shows the answer, then run the arbiter."""
    if args.command != "serve" and args.bind:
        # A reload re-reads --bind; in the daemon the working directory is "/" by then.
        args.bind = [absolute_unix_address(address) for address in args.bind]
    try:
        config = chosen_config(args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"porch: {problem}", file=sys.stderr)
        return 1
    pidfile = Path(os.path.abspath(args.pidfile)) if args.pidfile else config.pidfile
    refusal = startup_problem(config, daemon=args.daemon, pidfile=pidfile)
    if refusal is not None:
        print(f"porch: {refusal}", file=sys.stderr)
        return 1
    if config.umask is not None:  # before the arbiter creates logs, sockets and the pidfile
        os.umask(int(config.umask, 8))
    path = config_path(args)
    reload_config = reloader(os.path.abspath(path), args.bind) if path else None
    from porch.master.arbiter import Arbiter

    return Arbiter(config, reload_config, daemon=args.daemon, pidfile=pidfile).run()


def reloader(path: str, bind: list[str] | None) -> Callable[[], Config]:
    """What a HUP re-reads: the same file (absolute: a daemon works from "/") and --bind."""
    return lambda: load_config(path, listen=bind)


def absolute_unix_address(address: str) -> str:
    """``unix:relative/path`` made absolute against the current directory; others unchanged."""
    if address.startswith("unix:") and address[5:] and not address[5:].startswith("/"):
        return "unix:" + os.path.abspath(address[5:])
    return address


def startup_problem(config: Config, *, daemon: bool, pidfile: Path | None) -> str | None:
    """Why porch must not start with these settings, or None.

    A daemon's stdout and stderr are /dev/null, so a log going there would be lost without
    a word; and ``porch stop`` could not find a daemon without a pidfile.
    """
    if daemon:
        if pidfile is None:
            return "--daemon needs a pidfile: give --pidfile FILE or set `pidfile:` in the config"
        if config.log.error == "-":
            return '--daemon detaches from the terminal, so log.error cannot be "-" (stderr): set it to a file path'
        if config.log.access == "-":
            return (
                '--daemon detaches from the terminal, so log.access cannot be "-" (stdout): '
                "set it to a file path, or to false for no access log"
            )
    return check_privileges(config)


# --- stop, reload, status, reopen -----------------------------------------------------------


def control(args: argparse.Namespace) -> int:
    """Find the pidfile, then run the control command ``args.command`` against its process."""
    failure = STATUS_UNKNOWN if args.command == "status" else 1
    path = config_path(args)
    config: Config | None = None
    problems: list[ConfigProblem] = []
    if path is not None:
        try:
            config = load_config(path)
        except ConfigError as error:
            problems = error.problems
    pidfile: Path | None = None
    if getattr(args, "pidfile", None):
        pidfile = Path(os.path.abspath(args.pidfile))
    elif config is not None:
        pidfile = config.pidfile
    elif path is not None:
        pidfile = pidfile_setting(path)
    if pidfile is None:
        for problem in problems:
            print(f"porch: {problem}", file=sys.stderr)
        where = f" ({path} has none)" if path and not problems else ""
        print(f"porch: no pidfile: give --pidfile FILE or -c FILE with a `pidfile:` setting{where}", file=sys.stderr)
        return failure
    if problems and args.command != "reload":
        print(
            f"porch: warning: {path} has errors (porch check -c {path}); using its pidfile {pidfile}", file=sys.stderr
        )
    command = {"stop": stop, "reload": reload, "status": status, "reopen": reopen}[args.command]
    return command(args, pidfile, config, path)


def status(args: argparse.Namespace, pidfile: Path, config: Config | None, path: str | None) -> int:
    """LSB ``status``: the answer on stdout, the state in the exit status."""
    pid = read_pid(pidfile)
    if pid is not None:
        print(f"running (pid {pid})")
        return STATUS_RUNNING
    if pidfile.exists():
        print(f"not running (stale pidfile {pidfile})")
        return STATUS_STALE
    print("not running")
    return STATUS_NOT_RUNNING


def stop(args: argparse.Namespace, pidfile: Path, config: Config | None, path: str | None) -> int:
    """TERM (graceful: in-flight requests finish), then wait until the process is gone."""
    pid = read_pid(pidfile)
    if pid is None:
        return not_running(pidfile)
    if not deliver(pid, signal.SIGTERM):
        return 1
    if args.timeout is not None:
        timeout = args.timeout
    else:
        timeout = config.timeouts.graceful + STOP_MARGIN_SECONDS if config else STOP_TIMEOUT_SECONDS
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() >= deadline:
            print(
                f"porch: pid {pid} is still running after {timeout:g} s; `kill -QUIT {pid}` stops it "
                "without waiting for requests in flight",
                file=sys.stderr,
            )
            return 1
        time.sleep(STOP_POLL_SECONDS)
    print(f"stopped (pid {pid})")
    return 0


def reload(args: argparse.Namespace, pidfile: Path, config: Config | None, path: str | None) -> int:
    """HUP only a config that passes ``porch check``, so a typo is shown here, not in a log."""
    pid = read_pid(pidfile)
    if pid is None:
        return not_running(pidfile)
    if path is None:
        print("porch: reload checks the config before signalling: give -c FILE (the server's config)", file=sys.stderr)
        return 1
    try:
        report = check_config(path)
    except ConfigError as error:
        for issue in error.problems:
            print(f"porch: {issue}", file=sys.stderr)
        print(f"porch: not reloading: {path} is invalid; pid {pid} keeps its configuration", file=sys.stderr)
        return 1
    for warning in report.splitlines()[1:]:
        print(warning, file=sys.stderr)
    if not deliver(pid, signal.SIGHUP):
        return 1
    print(f"reload signalled (pid {pid})")
    return 0


def reopen(args: argparse.Namespace, pidfile: Path, config: Config | None, path: str | None) -> int:
    """USR1: the master and every worker reopen their log files (for logrotate)."""
    pid = read_pid(pidfile)
    if pid is None:
        return not_running(pidfile)
    if not deliver(pid, signal.SIGUSR1):
        return 1
    print(f"log reopen signalled (pid {pid})")
    return 0


def deliver(pid: int, signum: int) -> bool:
    """Signal the server; False after saying why it could not be done."""
    if (problem := send(pid, signum)) is not None:
        print(f"porch: {problem}", file=sys.stderr)
        return False
    return True


def not_running(pidfile: Path) -> int:
    state = f"stale pidfile {pidfile}" if pidfile.exists() else f"no pidfile {pidfile}"
    print(f"porch: not running ({state})", file=sys.stderr)
    return 1


def send(pid: int, signum: int) -> str | None:
    """Signal ``pid``; what went wrong, or None."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return f"pid {pid} exited meanwhile"
    except PermissionError:
        return f"not allowed to signal pid {pid} (it runs as another user; try as root)"
    return None


def pidfile_setting(path: str) -> Path | None:
    """The ``pidfile`` key of a config that does not load, so that a server can still be
    stopped after its config file was broken."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    node, _ = read_yaml(text, path)
    value = node.value.get("pidfile") if node is not None and node.kind == "mapping" else None
    if value is None or value.kind != "scalar" or not isinstance(value.value, str) or not value.value:
        return None
    return Path(os.path.abspath(Path(path).resolve().parent / Path(value.value).expanduser()))
