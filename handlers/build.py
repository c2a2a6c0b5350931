"""Building the handlers of a loaded config, and ``porch check``.

``build_handlers`` constructs each mount's handler before any socket is bound, turning an
``OptionError`` into a problem at that option's line, so a handler that cannot be built is a
config error at start-up.  ``check_config`` (``porch check``) loads the file in this process and
builds the handlers in a child process (``porch.config.check.problems_in_child``), so an
application whose import crashes, exits or hangs cannot take the checker down with it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from porch import SOFTWARE
from porch.config.check import cause_tail, problems_in_child, summary, traceback_tail, warning_line
from porch.config.load import load_config
from porch.config.settings import Config, ConfigError, ConfigProblem, Mount
from porch.config.yaml_nodes import join
from porch.handlers import registry
from porch.handlers.base import Handler, HandlerContext, OptionError

log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 60.0  # how long `porch check` waits for the handlers to build


def handler_context(config: Config) -> HandlerContext:
    """The HandlerContext the server gives handlers built for ``config``."""
    return HandlerContext(concurrency=config.concurrency, workers=config.workers, software=SOFTWARE)


def _where(mount: Mount, config: Config) -> tuple[str, int | None]:
    file, _, line = mount.location.rpartition(":")
    if file and line.isdigit():
        return file, int(line)
    return mount.location or str(config.source or "<config>"), None


def build_handlers(config: Config, context: HandlerContext) -> list[tuple[Mount, Handler]]:
    """Construct every mount's handler, or raise ConfigError with every one that failed.

    An OptionError becomes a problem at that option's line (``mounts[2].root``); any other
    exception one at the mount, with the traceback's last lines when it is not a plain
    ValueError.  If anything failed, the handlers already built are closed again.
    """
    built: list[tuple[Mount, Handler]] = []
    problems: list[ConfigProblem] = []
    for index, mount in enumerate(config.mounts):
        file, line = _where(mount, config)
        key = f"mounts[{index}]"
        try:
            built.append((mount, registry.resolve(mount.type)(mount, context)))
        except OptionError as exc:
            lines = dict(mount.lines)
            base = re.split(r"[.\[]", exc.key, maxsplit=1)[0]
            at = lines.get(exc.key) or lines.get(base) or line
            problems.append(ConfigProblem(file, at, join(key, exc.key), exc.message + cause_tail(exc)))
        except ValueError as exc:
            problems.append(ConfigProblem(file, line, key, str(exc) + cause_tail(exc)))
        except (Exception, SystemExit) as exc:
            problems.append(
                ConfigProblem(
                    file,
                    line,
                    key,
                    f"the {mount.type} handler failed to start: {type(exc).__name__}: {exc}\n" + traceback_tail(exc),
                )
            )
    if problems:
        for mount, handler in built:
            try:
                handler.close()
            except Exception:
                log.exception("closing the %s handler at %s failed", mount.type, mount.path)
        raise ConfigError(problems)
    return built


def handler_problems(path: str | Path) -> list[ConfigProblem]:
    """Load ``path`` and build (then close) every handler in this process; the problems found."""
    try:
        config = load_config(path)
        for _, handler in build_handlers(config, handler_context(config)):
            handler.close()
    except ConfigError as exc:
        return exc.problems
    return []


def check_config(path: str | Path, *, timeout: float = CHECK_TIMEOUT_SECONDS) -> str:
    """What ``porch check -c FILE`` does: the one-line summary (and warnings), or ConfigError.

    The file is loaded here; the handlers are built in a child process, so an application
    that crashes, exits or hangs while being imported is reported instead of hurting the checker.
    """
    config = load_config(path)
    problems = problems_in_child(path, timeout, handler_problems)
    if problems:
        raise ConfigError(problems)
    return "\n".join([summary(config, str(path)), *(warning_line(w) for w in config.warnings)])
