"""``porch top``: the running server's state in a terminal, redrawn every few seconds, like uwsgitop.

It reads what the status page shows -- the master's snapshot (its shape: ``porch.metrics``) from
``<status mount>?format=json`` -- so it needs nothing but a status mount and a way to reach it:
``--url``, or the config's first ``status`` mount on its first listener (a ``unix:`` socket, or
TCP, with a wildcard address reached through loopback).  HTTPS certificates of loopback servers
are not verified: the server is this machine, often with a certificate for a public name.

A frame is plain lines, each with one style, so that fitting it to the terminal never cuts an
escape sequence; colours only on a terminal, and never with ``NO_COLOR`` set (no-color.org).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import shutil
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from porch.config.load import load_config
from porch.config.settings import Config, ConfigError
from porch.metrics.exposition import is_number

DEFAULT_INTERVAL_SECONDS = 2.0
TIMEOUT_SECONDS = 5.0
# A wildcard listener is reached through the loopback address of its family.
WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
STATUS_MOUNT_HINT = "add `- {path: /status, type: status}` under `mounts:`, or give --url URL"

STYLES = {
    "plain": "",
    "title": "\x1b[1m",
    "heading": "\x1b[7m",
    "good": "\x1b[32m",
    "warn": "\x1b[33m",
    "bad": "\x1b[1;31m",
    "dim": "\x1b[2m",
}
RESET = "\x1b[0m"
CLEAR = "\x1b[H\x1b[2J"
ENTER_SCREEN = "\x1b[?1049h\x1b[?25l"  # the alternate screen, without a cursor (as top does)
LEAVE_SCREEN = "\x1b[?25h\x1b[?1049l"
STATE_STYLES = {"ready": "good", "serving": "good", "starting": "warn", "booting": "warn", "reloading": "warn"}

Line = tuple[str, str]  # text, style name
Document = dict[str, Any]


def interval_seconds(text: str) -> float:
    """``--interval``: a positive number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return seconds


class TopError(Exception):
    """Why ``porch top`` cannot run: one line for stderr."""


class Unreachable(Exception):
    """The status mount did not answer a snapshot; the message says why."""


# --- where the status mount is --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The status mount to ask, and how to connect to it."""

    host: str  # what to connect to (TCP), and the Host header unless ``host_header`` says otherwise
    port: int
    path: str
    tls: bool = False
    unix_path: str | None = None
    host_header: str | None = None  # the status mount's virtual host

    @property
    def url(self) -> str:
        """How messages name the status mount."""
        if self.unix_path is not None:
            return f"{self.path} on unix:{self.unix_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{self.path}"

    def connection(self) -> http.client.HTTPConnection:
        if self.unix_path is not None:
            return UnixHTTPConnection(self.unix_path, TIMEOUT_SECONDS)
        if self.tls:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=TIMEOUT_SECONDS, context=tls_context(self.host)
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_SECONDS)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix stream socket (a ``unix:`` listener)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def tls_context(host: str) -> ssl.SSLContext:
    """Verified, except for a loopback server (this machine, whatever name its certificate has)."""
    context = ssl.create_default_context()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def target_from_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TopError(f"--url must be http://HOST[:PORT]/PATH or https://...: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise TopError(f"--url {url!r}: {error}") from None
    return Target(parts.hostname, port, parts.path or "/", tls=parts.scheme == "https")


def target_from_config(config: Config, source: str) -> Target:
    """The first ``status`` mount, on the first listener."""
    mount = next((mount for mount in config.mounts if mount.type == "status"), None)
    if mount is None:
        raise TopError(f"{source} has no status mount: {STATUS_MOUNT_HINT}")
    if not config.listen:
        raise TopError(f"{source} has no listener to reach the status mount on: give --url URL")
    listener = config.listen[0]
    tls = listener.tls is not None
    # Any name of the mount reaches it; one under a wildcard does too.
    host_header = mount.host[0].replace("*", "status", 1) if mount.host else None
    if listener.unix_path is not None:
        return Target("localhost", 0, mount.path, tls=tls, unix_path=listener.unix_path, host_header=host_header)
    host, port = listener.host_port
    return Target(WILDCARD_TO_LOOPBACK.get(host, host), port, mount.path, tls=tls, host_header=host_header)


def find_target(url: str | None, config_path: str | None) -> Target:
    if url is not None:
        return target_from_url(url)
    if config_path is None:
        raise TopError(f"no config file to find the status mount in: give -c FILE or --url URL ({STATUS_MOUNT_HINT})")
    return target_from_config(load_config(config_path), config_path)


# --- asking it ------------------------------------------------------------------------------------


def fetch(target: Target) -> Document:
    """The snapshot the status mount answers; Unreachable saying why when there is none."""
    connection = target.connection()
    headers = {"Accept": "application/json"}
    if target.host_header is not None:
        headers["Host"] = target.host_header
    try:
        connection.request("GET", target.path + "?format=json", headers=headers)
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as error:
        raise Unreachable(reason(error)) from None
    finally:
        connection.close()
    if response.status != 200:
        raise Unreachable(f"it answered {response.status} {response.reason}")
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise Unreachable("it answered something other than a JSON object (is it a status mount?)")
    return document


def reason(error: BaseException) -> str:
    """An error as a few words: "Connection refused", not "[Errno 111] Connection refused"."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


# --- drawing --------------------------------------------------------------------------------------


def whole(value: object) -> str:
    return f"{value:.0f}" if is_number(value) else "-"


def rate(value: object) -> str:
    return f"{value:.1f}" if is_number(value) else "-"


def milliseconds(value: object) -> str:
    return f"{value * 1000:.1f} ms" if is_number(value) else "-"


def size(value: object) -> str:
    """Bytes in the largest binary unit that keeps a number above 1: ``812 B``, ``45.2 MiB``."""
    if not is_number(value):
        return "-"
    amount, unit = float(value), "B"
    for larger in ("KiB", "MiB", "GiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, larger
    return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"


def duration(value: object) -> str:
    """``12s``, ``3m 04s``, ``2h 05m``, ``3d 01h``: the two largest units."""
    if not is_number(value):
        return "-"
    seconds = max(0, int(value))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def part(document: dict[str, Any], key: str) -> dict[str, Any]:
    """An object inside the snapshot; empty when it is missing (an older server) or not an object."""
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def entries(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The objects of a list inside the snapshot (workers, their busy requests); [] when missing."""
    value = document.get(key)
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def last(history: dict[str, Any], name: str) -> Any:
    """The newest point of a history series, None when there is none."""
    points = history.get(name)
    return points[-1] if isinstance(points, list) and points else None


def printable(text: str) -> str:
    """Client-sent text (a request path) with control characters escaped: no terminal tricks."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in text)


def table(headings: Sequence[str], rows: Sequence[Sequence[str]], left: frozenset[int]) -> list[Line]:
    """Aligned columns, numbers right-aligned (columns not in ``left``); the last column is not padded."""
    cells = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [headings, *cells]) for i in range(len(headings))]

    def line(row: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [(line(headings), "heading"), *((line(row), "plain") for row in cells)]


def header(document: Document) -> list[Line]:
    software = str(document.get("software", "porch"))
    version = document.get("version")
    name = software if not isinstance(version, str) or version in software else f"{software} {version}"
    state = str(document.get("state", "?"))
    moment = document.get("time")
    clock = time.strftime("%H:%M:%S", time.localtime(moment)) if is_number(moment) else ""
    about = [name, state, f"generation {whole(document.get('generation'))}"]
    about.append(f"up {duration(document.get('uptime_seconds'))}")
    if "master_pid" in document:
        about.append(f"master {document['master_pid']}")
    if "pid" in document:
        about.append(f"answered by pid {document['pid']}")
    about.append(str(document.get("concurrency", "")))
    history = part(document, "history")
    connections = part(document, "connections")
    traffic = [
        f"workers {len(entries(document, 'workers'))}/{whole(document.get('workers_target'))}",
        f"{rate(last(history, 'requests_per_second'))} req/s",
        *(f"{name} {milliseconds(last(history, name))}" for name in ("p50", "p95", "p99")),
        f"in flight {whole(document.get('in_flight'))}",
    ]
    sockets = [f"connections open {whole(connections.get('open'))}"]
    sockets += [f"{name} {whole(connections.get(name))}" for name in ("idle", "active", "accepted")]
    return [
        (" | ".join(item for item in about if item) + (f"   {clock}" if clock else ""), STATE_STYLES.get(state, "bad")),
        (" | ".join(traffic), "title"),
        (" | ".join(sockets), "title"),
    ]


def worker_rows(document: Document, now: float) -> list[Line]:
    workers = entries(document, "workers")
    if not workers:
        return []
    rows = []
    for worker in workers:
        connections = part(worker, "connections")
        started = worker.get("started")
        threads = worker.get("threads")
        busy = entries(worker, "busy")
        rows.append(
            [
                whole(worker.get("pid")),
                whole(worker.get("generation")),
                str(worker.get("state", "-")),
                whole(worker.get("requests")),
                size(worker.get("rss_bytes")),
                f"{len(busy)}/{whole(threads)}" if is_number(threads) and threads else "-",
                whole(worker.get("children")),
                "/".join(whole(connections.get(name)) for name in ("open", "idle", "active")),
                duration(now - started) if is_number(started) else "-",
            ]
        )
    headings = ["PID", "GEN", "STATE", "REQUESTS", "RSS", "THREADS", "CHILDREN", "CONNS O/I/A", "UP"]
    lines = table(headings, rows, left=frozenset({2}))
    styled = [(text, STATE_STYLES.get(row[2], "dim")) for (text, _), row in zip(lines[1:], rows, strict=True)]
    return [lines[0], *styled]


def busy_rows(document: Document) -> list[Line]:
    """The requests being served, oldest first; the path last, where the terminal may cut it."""
    found = [(worker.get("pid"), busy) for worker in entries(document, "workers") for busy in entries(worker, "busy")]
    if not found:
        return []
    found.sort(key=lambda item: item[1]["age_seconds"] if is_number(item[1].get("age_seconds")) else 0, reverse=True)
    rows = [
        [
            whole(pid),
            str(busy.get("thread", "-")),
            str(busy.get("method", "-")),
            f"{busy['age_seconds']:.1f}s" if is_number(busy.get("age_seconds")) else "-",
            str(busy.get("client", "-")),
            str(busy.get("path", "-")),
        ]
        for pid, busy in found
    ]
    return table(["PID", "THREAD", "METHOD", "AGE", "CLIENT", "PATH"], rows, left=frozenset({1, 2, 4, 5}))


def frame(document: Document, now: float) -> list[Line]:
    """Everything ``porch top`` shows of one snapshot."""
    lines = header(document)
    for section in (worker_rows(document, now), busy_rows(document)):
        if section:
            lines += [("", "plain"), *section]
    return lines


def fit(lines: list[Line], width: int, height: int) -> list[Line]:
    """Cut to the terminal: lines to its width, and what does not fit below into a last line."""
    if len(lines) > height:
        hidden = len(lines) - height + 1
        lines = [*lines[: height - 1], (f"... {hidden} more lines", "dim")]
    return [(text[:width], style) for text, style in lines]


def draw(lines: list[Line], colour: bool) -> str:
    if not colour:
        return "".join(text + "\n" for text, _ in lines)
    return "".join(f"{STYLES[style]}{text}{RESET}\n" if STYLES[style] else text + "\n" for text, style in lines)


# --- running --------------------------------------------------------------------------------------


@dataclass
class Screen:
    """Where frames go: on a terminal, fitted, coloured and redrawn in place; elsewhere, appended."""

    out: TextIO
    terminal: bool

    @classmethod
    def of(cls, out: TextIO) -> Screen:
        return cls(out, out.isatty())

    @property
    def colour(self) -> bool:
        return self.terminal and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"

    def show(self, lines: list[Line], *, redraw: bool) -> None:
        if self.terminal:
            width, height = shutil.get_terminal_size()
            lines = fit(lines, width, height)
        text = draw(lines, self.colour)
        if redraw and self.terminal:
            # No newline after the last line: on the terminal's last row it would scroll the top off.
            text = CLEAR + text.removesuffix("\n")
        self.out.write(text)
        self.out.flush()


def watch(target: Target, interval: float, screen: Screen) -> NoReturn:
    """Redraw until interrupted; while the server does not answer, say so over its last frame."""
    previous: list[Line] = []
    while True:
        try:
            previous = frame(fetch(target), time.time())
            lines = previous
        except Unreachable as error:
            problem = f"cannot reach {target.url}: {error} (trying again every {interval:g} s)"
            lines = [(problem, "bad"), *previous]
        screen.show(lines, redraw=True)
        time.sleep(interval)


def run_top(url: str | None, config_path: str | None, interval: float, once: bool) -> int:
    """``porch top``: 0 when done (``--once``, Ctrl-C), 1 when the status mount cannot be found or,
    with ``--once``, reached."""
    try:
        target = find_target(url, config_path)
    except ConfigError as error:
        for problem in error.problems:
            print(f"porch: {problem}", file=sys.stderr)  # noqa: T201 -- the command's own output
        return 1
    except TopError as error:
        print(f"porch: {error}", file=sys.stderr)  # noqa: T201 -- as above
        return 1
    screen = Screen.of(sys.stdout)
    try:
        if once:
            try:
                document = fetch(target)
            except Unreachable as error:
                print(f"porch: cannot reach {target.url}: {error}", file=sys.stderr)  # noqa: T201 -- as above
                return 1
            screen.show(frame(document, time.time()), redraw=False)
            return 0
        if screen.terminal:
            screen.out.write(ENTER_SCREEN)
        try:
            watch(target, interval, screen)
        finally:
            if screen.terminal:
                screen.out.write(LEAVE_SCREEN)
                screen.out.flush()
    except KeyboardInterrupt:  # how the refreshing mode ends: quietly, and successfully
        return 0
