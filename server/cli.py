"""The ``porch`` command.

    porch [-c FILE] [SETTINGS] [-D]       serve from a config file (default ./config/porch.yaml,
                                          or the current directory when there is none)
    porch serve [PORT|DIR] [-d DIR] [--port N] [SETTINGS]
                                          serve a directory with listings, no config file
    porch check [-c FILE] [SETTINGS]      validate a config without serving (exit 0 or 1);
                                          also ``porch --check-config``
    porch stop [--timeout S]              TERM the server in the pidfile, wait until it is gone
    porch reload [--timeout S]            check the config, HUP the server, wait for the outcome
    porch status                          exit 0 running, 1 stale pidfile, 3 not running, 4 unknown
    porch reopen                          USR1: the server reopens its log files
    porch top [--url URL] [--once]        the running server's status mount, redrawn (porch.top)

SETTINGS are gunicorn's options where porch has the setting (``-b ADDR``, ``-w N``,
``--threads N``, ``--access-logfile F``, ``--error-logfile F``, ``--log-level L``, ``-p FILE``,
``--allow-root``); they replace the file's values through ``load_config(overrides=...)``, for
serving, checking and every reload alike.  ``PORCH_ARGS`` holds options too (gunicorn's
``GUNICORN_CMD_ARGS``); an option also given on the command line takes the command line's value.

The control commands find the pidfile with ``--pidfile FILE`` or the ``pidfile`` key of the
config (``-c FILE``, default ./config/porch.yaml), and trust it only while it is locked
(``porch.master.daemon``): a stale pidfile never makes porch signal an unrelated process.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from porch import BUILD, __version__
from porch.config.check import CheckFailed, summary, warning_line
from porch.config.convert import yaml_text
from porch.config.environment import environment_problems, locator
from porch.config.load import COMMAND_LINE, OVERRIDABLE, config_from_mapping, load_config
from porch.config.settings import Config, ConfigError, ConfigProblem
from porch.handlers.build import check_config
from porch.master.daemon import check_privileges, check_root, process_gone, read_pid, read_state
from porch.master.upgrade import upgrade_startup
from porch.top import DEFAULT_INTERVAL_SECONDS, interval_seconds, run_top

DEFAULT_CONFIG = Path("config") / "porch.yaml"
DEFAULT_PORT = 8000
LOOPBACK_HOST = "127.0.0.1"  # where `-b PORT` and `-b :PORT` listen: porch opens nothing wider unasked
PATH_SETTINGS = ("log.access", "log.error", "pidfile")  # made absolute at once: a daemon works from "/"
IN_SUMMARY = ("listen", "workers")  # overrides the summary line of `porch check` shows anyway
STOP_MARGIN_SECONDS = 10.0  # `porch stop` waits timeouts.graceful plus this for the exit
STOP_TIMEOUT_SECONDS = 40.0  # ... or this when there is no config to read it from
STOP_POLL_SECONDS = 0.05
RELOAD_TIMEOUT_SECONDS = 75.0  # `porch reload` waits this long for the outcome: the master gives a generation 60 s
# A top-level `pidfile:` line, read from a config that no longer parses as YAML.
PIDFILE_LINE = re.compile(
    r"""^pidfile:[ \t]*(?:"([^"]+)"|'([^']+)'|([^\s#'"][^#\r\n]*?))[ \t]*(?:#.*)?$""", re.MULTILINE
)
USAGE_ERROR = 2  # argparse's exit status for a command line it cannot parse
# Exit statuses of `porch status`, as LSB init scripts define them (LSB Core 5.0, "Init Script
# Actions"): running, dead but the pidfile exists, not running, unknown.
STATUS_RUNNING, STATUS_STALE, STATUS_NOT_RUNNING, STATUS_UNKNOWN = 0, 1, 3, 4


CONTROL_HELP = {
    "stop": "stop the running server gracefully (TERM) and wait until it has exited",
    "reload": "check the config, make the running server reload it (HUP) and wait until it serves or refused it",
    "status": "say whether the server runs: exit 0 running, 1 stale pidfile, 3 not running, 4 unknown",
    "reopen": "make the running server reopen its log files (USR1), after rotating them",
    "upgrade": "replace the running master by the installed porch on the same sockets (USR2), without refusing "
    "a connection, and wait until the new master serves or failed",
}

# gunicorn options porch has no option for, and what does the same in porch (told after a usage error).
GUNICORN_EQUIVALENTS = {
    "-k": "set `concurrency:` (threading or forking) in the config",
    "--worker-class": "set `concurrency:` (threading or forking) in the config",
    "-t": "set `worker_timeout:` in the config",
    "--graceful-timeout": "set `timeouts.graceful:` in the config",
    "--keep-alive": "set `timeouts.keepalive:` in the config",
    "--max-requests": "set `max_requests:` in the config",
    "--certfile": "give a listener `tls: {cert: FILE, key: FILE}` in the config",
    "--keyfile": "give a listener `tls: {cert: FILE, key: FILE}` in the config",
    "-u": "set `user:` in the config",
    "--user": "set `user:` in the config",
    "-g": "set `group:` in the config",
    "--group": "set `group:` in the config",
    "--log-file": "use --error-logfile FILE",
    "--access-logformat": "set `log.access_format:` (combined, common or json) in the config",
    "--forwarded-allow-ips": "set `trusted_proxies:` in the config",
    "--chdir": "start porch in that directory, or `porch serve -d DIR`",
}


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got '{text}'")
    return int(text)


def port_or_directory(text: str) -> int | str:
    """argparse type of ``porch serve [PORT|DIR]``: digits are a port, as ``python -m http.server 8000``."""
    return port_number(text) if text.isdigit() else text


def add_settings(parser: argparse.ArgumentParser, *, top: bool, serving: bool) -> None:
    """The options that override settings (``OVERRIDABLE``), on the top level or a command.

    Below the top level they default to SUPPRESS, so that a command does not undo an option
    given before it (``porch -w 2 serve``); every default is None, so that PORCH_ARGS fills in
    exactly the options the command line left out.
    """
    unset = None if top else argparse.SUPPRESS
    parser.add_argument(
        "-b",
        "--bind",
        metavar="ADDR",
        action="append",
        default=unset,
        help="listen on ADDR instead of the configured listeners; repeatable: HOST:PORT, [V6]:PORT, "
        f"unix:PATH, PORT or :PORT ({LOOPBACK_HOST}), HOST (port {DEFAULT_PORT}, or --port under serve)",
    )
    parser.add_argument(
        "-w", "--workers", metavar="N", default=unset, help='worker processes (`workers`), or "auto" (CPU count)'
    )
    parser.add_argument("--threads", metavar="N", default=unset, help="threads per worker (`threads`)")
    parser.add_argument(
        "--access-logfile", metavar="FILE", default=unset, help='access log file, "-" for stdout (`log.access`)'
    )
    parser.add_argument(
        "--error-logfile", metavar="FILE", default=unset, help='error log file, "-" for stderr (`log.error`)'
    )
    parser.add_argument(
        "--log-level", metavar="LEVEL", default=unset, help="debug, info, warning or error (`log.level`)"
    )
    parser.add_argument(
        "-p", "--pidfile", metavar="FILE", default=unset, help="the master's pidfile, locked while it runs (`pidfile`)"
    )
    parser.add_argument(
        "--allow-root",
        action="store_true",
        default=unset,
        help="let workers run as root on a non-loopback address, as in a container (`allow_root`)",
    )
    if serving:
        parser.add_argument(
            "-D",
            "--daemon",
            action="store_true",
            default=unset,
            help="run in the background; exits 0 once the server serves (needs a pidfile and log files)",
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            default=unset,
            help="development: restart the workers when the config file or a Python file under a mount's "
            "pythonpath changes",
        )
        parser.add_argument(
            "--check-config",
            action="store_true",
            default=unset,
            help="validate and exit 0 (valid) or 1, as `porch check`, showing the effective values",
        )


def parser(prog: str = "porch") -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=prog,
        description="A pluggable HTTP/1.1 server: static files, CGI, WSGI and XML-RPC from one YAML file.",
        epilog="Without -c, porch uses ./config/porch.yaml if present, else serves the current directory. "
        "Options in the PORCH_ARGS environment variable apply unless the command line gives them too.",
    )
    top.add_argument("--version", action="version", version=f"porch {__version__} ({BUILD})")
    top.add_argument("-c", "--config", metavar="FILE", help="the YAML config file")
    add_settings(top, top=True, serving=True)
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve a directory (with listings) without a config file",
        description=f"Serve a directory with listings on {LOOPBACK_HOST}:{DEFAULT_PORT}, like python -m http.server.",
    )
    serve.add_argument(
        "targets",
        nargs="*",
        metavar="PORT|DIR",
        type=port_or_directory,
        help="a number is the port (as python -m http.server 8000), anything else the directory (default: .); "
        "both may be given, in either order",
    )
    serve.add_argument("-d", "--directory", metavar="DIR", help="the directory to serve, even one named like a number")
    serve.add_argument("--port", metavar="N", type=port_number, help=f"port (default {DEFAULT_PORT})")
    add_settings(serve, top=False, serving=True)
    check = commands.add_parser("check", help="validate a config file and exit 0 (valid) or 1")
    check.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help="the YAML config file")
    add_settings(check, top=False, serving=False)
    for name, summary_text in CONTROL_HELP.items():
        control = commands.add_parser(name, help=summary_text, description=summary_text)
        control.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            default=argparse.SUPPRESS,
            help="the config of the running server (for its pidfile)",
        )
        control.add_argument(
            "-p",
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
        if name in ("reload", "upgrade"):
            control.add_argument(
                "--timeout",
                metavar="S",
                type=float,
                default=RELOAD_TIMEOUT_SECONDS,
                help=f"seconds to wait for the new workers to serve (default {RELOAD_TIMEOUT_SECONDS:g})",
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


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, with the options of PORCH_ARGS it does not give itself.

    PORCH_ARGS is parsed on its own, as gunicorn parses GUNICORN_CMD_ARGS, so that a command
    line ``-b`` replaces its ``-b`` addresses instead of adding to them.
    """
    args = parse_or_hint(parser(), sys.argv[1:] if argv is None else argv)
    env = os.environ.get("PORCH_ARGS", "")
    if env.strip():
        env_parser = parser("PORCH_ARGS")
        try:
            words = shlex.split(env)
        except ValueError as error:
            env_parser.error(str(error))
        defaults = parse_or_hint(env_parser, words)
        if defaults.command is not None:
            env_parser.error(f"holds options only, not the command '{defaults.command}'")
        for name, value in vars(defaults).items():
            if value is not None and getattr(args, name, None) is None:
                setattr(args, name, value)
    if getattr(args, "pidfile", None) and args.pidfile.isdigit():
        parser().error(
            f"-p/--pidfile names the pidfile (as gunicorn's -p), not a port: for port {args.pidfile} "
            f"write `porch serve {args.pidfile}`, `--port {args.pidfile}` or `-b :{args.pidfile}`"
        )
    return args


def parse_or_hint(parser: argparse.ArgumentParser, words: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args(words)``; after a usage error, the porch way of any gunicorn option used."""
    try:
        return parser.parse_args(words)
    except SystemExit as leaving:
        if leaving.code == USAGE_ERROR:
            flags = {word.split("=", 1)[0] for word in words if word.startswith("-")}
            for flag, equivalent in GUNICORN_EQUIVALENTS.items():
                if flag in flags:
                    print(f"{parser.prog}: porch has no {flag} (gunicorn's); {equivalent}", file=sys.stderr)
        raise


def served_site(args: argparse.Namespace) -> tuple[str, int]:
    """The directory and port of ``porch serve [PORT|DIR]... [-d DIR] [--port N]``; ValueError if one is given twice."""
    directories = [target for target in args.targets if isinstance(target, str)]
    ports = [target for target in args.targets if isinstance(target, int)]
    if args.directory is not None:
        directories.append(args.directory)
    if args.port is not None:
        ports.append(args.port)
    for what, given in (("directory", directories), ("port", ports)):
        if len(given) > 1:
            raise ValueError(f"the {what} is given twice: {' and '.join(str(value) for value in given)}")
    return (directories or ["."])[0], (ports or [DEFAULT_PORT])[0]


def bind_address(text: str, port: int) -> str:
    """A ``-b`` value as a listen address: ``PORT`` and ``:PORT`` on the loopback address, a bare
    host on ``port``, a relative ``unix:`` path made absolute (a daemon reloads from "/")."""
    text = text.strip()
    if text.isdigit() or (text.startswith(":") and text[1:].isdigit()):
        return f"{LOOPBACK_HOST}:{text.lstrip(':')}"
    if text.startswith("unix:"):
        return "unix:" + os.path.abspath(text[5:]) if text[5:] else text
    if text.startswith("[") and text.endswith("]"):
        return f"{text}:{port}"
    try:
        return f"[{ipaddress.IPv6Address(text)}]:{port}"
    except ValueError:
        return text if ":" in text or "/" in text else f"{text}:{port}"


def command_line_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the options replace, by ``OVERRIDABLE`` key; ``serve`` always sets ``listen``."""
    port = args.port if args.command == "serve" else DEFAULT_PORT
    given = {key: getattr(args, option[2:].replace("-", "_"), None) for key, option in OVERRIDABLE.items()}
    overrides = {key: value for key, value in given.items() if value is not None}
    if args.command == "serve" or "listen" in overrides:
        overrides["listen"] = [bind_address(text, port) for text in overrides.get("listen", [str(port)])]
    for key in PATH_SETTINGS:
        if overrides.get(key, "-") != "-":
            overrides[key] = os.path.abspath(overrides[key])
    return overrides


def directory_config(directory: str, overrides: dict[str, Any]) -> Config:
    """The config of ``porch serve DIR``: one static mount with listings."""
    if Path(directory).exists() and not Path(directory).is_dir():
        raise ConfigError([ConfigProblem(COMMAND_LINE, None, "DIR", f"'{directory}' is not a directory")])
    return config_from_mapping(
        {"mounts": [{"path": "/", "type": "static", "root": directory, "listing": True}]},
        source="<command line>",
        base_dir=Path.cwd(),
        overrides=overrides,
    )


def config_path(args: argparse.Namespace) -> str | None:
    """The config file: ``-c FILE``, else ./config/porch.yaml (if present, unless for ``check``); none for ``serve``."""
    if args.command == "serve":
        return None
    if args.command == "check":
        return getattr(args, "config", None) or str(DEFAULT_CONFIG)
    return args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)


def chosen_config(args: argparse.Namespace, overrides: dict[str, Any]) -> Config:
    """The config to serve: ``serve DIR``, ``-c FILE``, ./config/porch.yaml, or the current directory."""
    if args.command == "serve":
        return directory_config(args.directory, overrides)
    path = config_path(args)
    if path is None:
        return directory_config(".", overrides)
    return load_config(path, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.command in CONTROL_HELP:
        return control(args)
    if args.command == "top":
        return run_top(args.url, config_path(args), args.interval, args.once)
    if args.command == "serve":
        try:
            args.directory, args.port = served_site(args)
        except ValueError as error:
            parser().error(str(error))
    overrides = command_line_overrides(args)
    if args.command == "check" or args.check_config:
        return check(args, overrides)
    return serve(args, overrides)


def report(error: ConfigError) -> int:
    """Every problem on stderr; exit status 1."""
    for problem in error.problems:
        print(f"porch: {problem}", file=sys.stderr)
    return 1


# --- checking -------------------------------------------------------------------------------


def check(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """``porch check`` and ``--check-config``: the summary of the effective config, or every problem;
    the warnings either way (after the problems, which are what stops the start).

    A config file's handlers are built in a child process (``check_config``); the summary
    shows the values the options replaced.
    """
    path = config_path(args)
    try:
        if path is not None:
            pidfile = Path(overrides["pidfile"]) if "pidfile" in overrides else pidfile_setting(path)
            running = read_pid(pidfile) if pidfile is not None else None
            line, *warnings = check_config(path, overrides=overrides, running_pid=running).splitlines()
            config = chosen_config(args, overrides)
        else:
            config = chosen_config(args, overrides)
            line = summary(config, "<command line>")
            warnings = [warning_line(warning) for warning in (*config.warnings, *machine_problems(config, None))]
    except CheckFailed as failed:
        status = report(failed)
        for warning in failed.warnings:
            print(f"porch: {warning_line(warning)}", file=sys.stderr)
        return status
    except ConfigError as error:
        return report(error)
    from_options = [
        f"{key}: {effective_text(config, key)}" for key in OVERRIDABLE if key in overrides and key not in IN_SUMMARY
    ]
    if from_options:
        line += f"; from the command line: {', '.join(from_options)}"
    print("\n".join([line, *warnings]))
    return 0


def effective_text(config: Config, key: str) -> str:
    """The value of the dotted setting ``key`` in ``config``, written as YAML would show it."""
    value = functools.reduce(getattr, key.split("."), config)
    return yaml_text(value)


# --- serving --------------------------------------------------------------------------------


def serve(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Check what can be checked while a terminal still shows the answer, then run the arbiter.

    Started by a master's USR2 (``porch.master.upgrade``), every refusal also goes to that
    master, which logs it and keeps serving.
    """
    path = config_path(args)
    upgrade = upgrade_startup()
    try:
        config = chosen_config(args, overrides)
        machine_problems(config, path, overrides)
    except ConfigError as error:
        if upgrade is not None:
            upgrade[1].failed("; ".join(str(problem) for problem in error.problems))
        return report(error)
    daemon = bool(args.daemon)
    refusal = startup_problem(config, daemon=daemon)
    if refusal is not None:
        if upgrade is not None:
            upgrade[1].failed(refusal)
        print(f"porch: {refusal}", file=sys.stderr)
        return 1
    if config.umask is not None:  # before the arbiter creates logs, sockets and the pidfile
        os.umask(int(config.umask, 8))
    reload_config = reloader(os.path.abspath(path), overrides) if path else None
    from porch.master.arbiter import Arbiter

    watch = bool(getattr(args, "reload", None))
    return Arbiter(
        config, reload_config, daemon=daemon, pidfile=config.pidfile, name=path, watch=watch, upgrade=upgrade
    ).run()


def machine_problems(config: Config, path: str | None, overrides: dict[str, Any] | None = None) -> list[ConfigProblem]:
    """What the machine lacks for ``config`` (``porch.config.environment``): ConfigError, or the warnings.

    A port held by the porch of the same pidfile is only a warning: its start stops at the pidfile.
    """
    where = locator(path, path or "<command line>", frozenset(overrides or ()))
    running = read_pid(config.pidfile) if config.pidfile is not None else None
    problems, warnings = environment_problems(config, where, running_pid=running)
    if problems:
        raise CheckFailed(problems, [*config.warnings, *warnings])
    return warnings


def reloader(path: str, overrides: dict[str, Any]) -> Callable[[], Config]:
    """What a HUP re-reads: the same file (absolute: a daemon works from "/") and the same options."""
    return lambda: load_config(path, overrides=overrides)


def startup_problem(config: Config, *, daemon: bool) -> str | None:
    """Why porch must not start with these settings, or None.

    A daemon's stdout and stderr are /dev/null, so a log going there would be lost without
    a word; and ``porch stop`` could not find a daemon without a pidfile.
    """
    if daemon:
        if config.pidfile is None:
            return "--daemon needs a pidfile: give --pidfile FILE or set `pidfile:` in the config"
        if config.log.error == "-":
            return '--daemon detaches from the terminal, so log.error cannot be "-" (stderr): set it to a file path'
        if config.log.access == "-":
            return (
                '--daemon detaches from the terminal, so log.access cannot be "-" (stdout): '
                "set it to a file path, or to false for no access log"
            )
    problem = check_privileges(config)
    if problem is not None and problem == check_root(config):
        problem += " (on the command line: --allow-root)"
    return problem


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
    if problems and args.command not in ("reload", "upgrade"):
        print(
            f"porch: warning: {path} has errors (porch check -c {path}); using its pidfile {pidfile}", file=sys.stderr
        )
    command = {"stop": stop, "reload": reload, "status": status, "reopen": reopen, "upgrade": upgrade}[args.command]
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
        timeout = (
            config.drain_seconds + config.timeouts.graceful + STOP_MARGIN_SECONDS if config else STOP_TIMEOUT_SECONDS
        )
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
    if not passes_check(path, pid, "reloading"):
        return 1
    before = reloads_done(pidfile, pid)
    if not deliver(pid, signal.SIGHUP):
        return 1

    def outcome() -> int | None:
        nonlocal before
        state = read_state(pidfile)
        if reloads_done(pidfile, pid, state) <= before:
            return None
        if state.get("result") == "ok":
            print(f"reloaded (pid {pid}, generation {state.get('generation')})")
            return 0
        if state.get("result") == "failed":
            for line in str(state.get("reason", "")).splitlines():
                print(f"porch: {line}", file=sys.stderr)
            print(f"porch: reload failed; pid {pid} keeps its configuration", file=sys.stderr)
            return 1
        before = reloads_done(pidfile, pid, state)  # an earlier reload superseded: ours comes next
        return None

    return wait_for_outcome(pid, "reload", args.timeout, outcome)


def wait_for_outcome(pid: int, what: str, timeout: float, outcome: Callable[[], int | None]) -> int:
    """Poll ``outcome`` (the exit status once the master has recorded one, None before) until
    ``timeout``, or until the master is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (status := outcome()) is not None:
            return status
        if process_gone(pid):
            print(f"porch: pid {pid} exited during the {what}", file=sys.stderr)
            return 1
        time.sleep(STOP_POLL_SECONDS)
    print(
        f"porch: {what} signalled (pid {pid}), but no outcome within {timeout:g} s (see its error log)", file=sys.stderr
    )
    return 1


def passes_check(path: str, pid: int, doing: str) -> bool:
    """``porch check`` the config before signalling: its problems (and why nothing is done) or
    its warnings on stderr."""
    try:
        report = check_config(path, running_pid=pid)
    except ConfigError as error:
        for issue in error.problems:
            print(f"porch: {issue}", file=sys.stderr)
        print(f"porch: not {doing}: {path} is invalid; pid {pid} keeps its configuration", file=sys.stderr)
        return False
    for warning in report.splitlines()[1:]:
        print(warning, file=sys.stderr)
    return True


def upgrade(args: argparse.Namespace, pidfile: Path, config: Config | None, path: str | None) -> int:
    """USR2, then wait for the outcome the old master records: the new master serves (the pidfile
    names it) or it could not start (the old one keeps serving, and says why)."""
    pid = read_pid(pidfile)
    if pid is None:
        return not_running(pidfile)
    if path is not None and not passes_check(path, pid, "upgrading"):
        return 1
    asked = time.time()
    if not deliver(pid, signal.SIGUSR2):
        return 1

    def outcome() -> int | None:
        recorded = read_state(pidfile).get("upgrade")
        if not (isinstance(recorded, dict) and recorded.get("from") == pid and float(recorded.get("time", 0)) >= asked):
            return None
        if recorded.get("result") == "ok":
            print(f"upgraded (pid {pid} → {recorded.get('to')}; pid {pid} finishes its requests and exits)")
            return 0
        for line in str(recorded.get("reason", "")).splitlines():
            print(f"porch: {line}", file=sys.stderr)
        print(f"porch: upgrade failed; pid {pid} keeps serving", file=sys.stderr)
        return 1

    return wait_for_outcome(pid, "upgrade", args.timeout, outcome)


def reloads_done(pidfile: Path, pid: int, state: dict[str, object] | None = None) -> int:
    """How many reloads the master ``pid`` has recorded in the state file next to ``pidfile``."""
    state = read_state(pidfile) if state is None else state
    count = state.get("reloads")
    return count if state.get("pid") == pid and isinstance(count, int) else 0


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
    """The ``pidfile`` key of a config that does not load -- not even as YAML -- read from its
    top-level ``pidfile:`` line, so that a server can still be stopped after its config was broken."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = PIDFILE_LINE.search(text)
    value = next((group for group in match.groups() if group), None) if match else None
    if value is None:
        return None
    return Path(os.path.abspath(Path(path).resolve().parent / Path(value.strip()).expanduser()))
