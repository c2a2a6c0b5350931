"""What ``porch check`` adds to loading: building handlers in a child process, and its report.

How this works: ``porch.handlers.build.check_config`` loads the file in its own process, then
calls ``problems_in_child(path, timeout, handler_problems)``, which starts ``python -c`` with
this interpreter's ``sys.path`` and the builder's import name.  The child imports the builder,
runs it on the file (loading it again and building, then closing, every handler), and writes
the problems as JSON on a private copy of its stdout -- its real stdout and
stderr both go to stderr, so whatever an application prints cannot corrupt the report -- then
leaves with ``os._exit`` so that no atexit hook or stray thread of an application can hold it.
An application that crashes the interpreter, calls ``os._exit`` or never finishes importing
becomes a problem here instead of taking ``porch check`` down.  ``summary`` and ``warning_line``
render the result, ``CheckFailed`` the problems with the warnings; ``traceback_tail`` shortens the
traceback of a failed import for a message.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from porch.config.settings import Config, ConfigError, ConfigProblem

Builder = Callable[[str], tuple[list[ConfigProblem], list[ConfigProblem]]]  # path -> (problems, warnings)

TRACEBACK_FRAMES = 3  # innermost frames of a failed import shown in a problem
STDERR_LINES = 10  # lines of a crashed child's stderr shown in the problem

_CHILD_SOURCE = (
    "import json, sys; request = json.loads(sys.stdin.readline()); sys.path[:] = request['sys_path']; "
    "from porch.config.check import child_main; child_main(request)"
)


class CheckFailed(ConfigError):
    """``porch check``'s problems and the warnings of the same run, so that one run shows both."""

    def __init__(self, problems: list[ConfigProblem], warnings: list[ConfigProblem]) -> None:
        super().__init__(problems)
        self.warnings = warnings


def _own_directories() -> tuple[str, ...]:
    """Where porch's own modules are (``porch`` and ``porch.handlers`` may be apart in an editable install)."""
    spec = importlib.util.find_spec("porch.handlers")
    found = {str(Path(__file__).resolve().parents[1])}
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    found.update(str(Path(location).resolve()) for location in locations)
    return tuple(directory + os.sep for directory in found)


def _frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """``exc``'s frames without the frozen import machinery's."""
    return [frame for frame in traceback.extract_tb(exc.__traceback__) if not frame.filename.startswith("<frozen")]


def _user_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """``exc``'s frames of the user's code: neither porch's nor ``importlib``'s (``import_module``)."""
    hidden = (*_own_directories(), str(Path(importlib.__file__).resolve().parent) + os.sep)
    return [frame for frame in _frames(exc) if not os.path.realpath(frame.filename).startswith(hidden)]


def _indented(frames: list[traceback.FrameSummary], exc: BaseException) -> str:
    text = "".join(traceback.format_list(frames[-TRACEBACK_FRAMES:]))
    text += "".join(traceback.format_exception_only(type(exc), exc))
    return "\n".join("    " + line for line in text.rstrip().splitlines())


def traceback_tail(exc: BaseException) -> str:
    """The innermost frames of ``exc``'s traceback, indented: the application's, not porch's.

    Import machinery and porch's own frames tell the user nothing about their code; they are
    kept only when nothing else is left (an error inside porch).
    """
    return _indented(_user_frames(exc) or _frames(exc), exc)


def cause_tail(exc: BaseException) -> str:
    """For an error raised ``from`` another: that one's traceback tail, on following lines.

    ``exc`` already says what porch was loading, so the tail is the user's frames only; with
    none (a missing module or name) it adds nothing, except where a SyntaxError points.
    """
    cause = exc.__cause__
    if cause is None:
        return ""
    frames = _user_frames(cause)
    if not frames and not isinstance(cause, SyntaxError):
        return ""
    return "\n" + _indented(frames, cause)


def child_main(request: dict[str, Any]) -> None:
    """The child's side: build, report the problems as JSON, and exit at once."""
    module, _, name = request["builder"].partition(":")
    builder: Builder = getattr(importlib.import_module(module), name)
    report = os.dup(1)
    os.dup2(2, 1)
    problems, warnings = builder(request["path"])
    with os.fdopen(report, "w", encoding="utf-8") as out:
        json.dump([[dataclasses.asdict(each) for each in found] for found in (problems, warnings)], out)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def problems_in_child(
    path: str | Path, timeout: float, builder: Builder
) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """``builder(path)`` run in a fresh interpreter, (problems, warnings); killed after ``timeout``.

    ``builder`` must be a module-level function: the child imports it by its name.
    """
    display = str(path)
    where = f"{builder.__module__}:{builder.__qualname__}"
    request = json.dumps({"path": display, "sys_path": sys.path, "builder": where}) + "\n"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_SOURCE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(request.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # its own session: whatever it started goes too
        child.communicate()
        message = (
            f"building the handlers took longer than {timeout:g} seconds "
            "(does an application wait for something while being imported?)"
        )
        return [ConfigProblem(display, None, "", message)], []
    try:
        problems, warnings = ([ConfigProblem(**item) for item in found] for found in json.loads(out))
        return problems, warnings
    except (ValueError, TypeError):
        code = child.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        lines = err.decode(errors="replace").rstrip().splitlines()[-STDERR_LINES:]
        tail = "".join("\n    " + line for line in lines)
        return [
            ConfigProblem(display, None, "", f"the process building the handlers {how}" + (":" + tail if tail else ""))
        ], []


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def summary(config: Config, display: str) -> str:
    """``FILE OK: 1 listener (127.0.0.1:8000), threading x1 worker, 2 mounts (/ static, /app wsgi)``."""
    listeners = ", ".join(listener.address + (" tls" if listener.tls else "") for listener in config.listen)
    mounts = ", ".join(f"{','.join(mount.host)}{mount.path} {mount.type}" for mount in config.mounts)
    return (
        f"{display} OK: {_count(len(config.listen), 'listener')}"
        + (f" ({listeners})" if listeners else "")
        + f", {config.concurrency} x{_count(config.workers, 'worker')}, {_count(len(config.mounts), 'mount')}"
        + (f" ({mounts})" if mounts else "")
    )


def warning_line(problem: ConfigProblem) -> str:
    """A warning as compilers write them: ``file:line: warning: key: message``."""
    where = f"{problem.file}:{problem.line}" if problem.line is not None else problem.file
    key = f"{problem.key}: " if problem.key else ""
    return f"{where}: warning: {key}{problem.message}"
