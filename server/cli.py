"""The ``porch`` command.

    porch [-c FILE] [--bind ADDR]...      serve from a config file (default ./config/porch.yaml,
                                          or the current directory when there is none)
    porch serve DIR [--port N] [--bind H] serve a directory with listings, no config file
    porch check [-c FILE]                 validate a config without serving (exit 0 or 1)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from server import __version__
from server.config import Config, check_config, config_from_mapping, load_config
from server.errors import ConfigError

DEFAULT_CONFIG = Path("config") / "porch.yaml"
DEFAULT_PORT = 8000


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="porch",
        description="A pluggable HTTP/1.1 server: static files, CGI, WSGI and XML-RPC from one YAML file.",
        epilog="Without -c, porch uses ./config/porch.yaml if present, else serves the current directory.",
    )
    top.add_argument("--version", action="version", version=f"porch {__version__}")
    top.add_argument("-c", "--config", metavar="FILE", help="the YAML config file")
    top.add_argument("-b", "--bind", metavar="ADDR", action="append",
                     help="listen on ADDR (host:port, [v6]:port, unix:/path) instead of the configured "
                          "listeners; repeatable")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve a directory (with listings) without a config file")
    serve.add_argument("directory", nargs="?", default=".", help="the directory to serve (default: .)")
    serve.add_argument("-p", "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("-b", "--bind", metavar="ADDR", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; use 0.0.0.0 or :: for every interface)")
    check = commands.add_parser("check", help="validate a config file and exit 0 (valid) or 1")
    check.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help="the YAML config file")
    return top


def directory_config(directory: str, listen: Sequence[str]) -> Config:
    """The config of ``porch serve DIR``: one static mount with listings."""
    return config_from_mapping(
        {"listen": list(listen), "mounts": [{"path": "/", "type": "static", "root": directory, "listing": True}]},
        source="<command line>", base_dir=Path.cwd(),
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
    try:
        config = chosen_config(args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"porch: {problem}", file=sys.stderr)
        return 1
    path = config_path(args)
    reload_config = (lambda: load_config(path, listen=args.bind)) if path else None
    from server.arbiter import Arbiter

    return Arbiter(config, reload_config).run()
