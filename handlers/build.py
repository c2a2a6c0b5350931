"""Building the handlers of a loaded config, and ``porch check``.

``build_handlers`` constructs each mount's handler before any socket is bound, turning an
``OptionError`` into a problem at that option's line, so a handler that cannot be built is a
config error at start-up.  ``check_config`` (``porch check``) loads the file in this process and
builds the handlers in a child process (``porch.config.check.problems_in_child``), so an
application whose import crashes, exits or hangs cannot take the checker down with it.

One run must find everything, so a file with schema problems is not the end of the check:
``load_leniently`` loads it again without the settings those problems are about (a broken
mount stands in as a mount of ``STUB_TYPE`` at its path, so a second mount at the same path is
still found), and the rest -- the other mounts' handlers, the log files, the pidfile's
directory, TLS files and ports (``porch.config.environment``) -- is checked as usual.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from porch import SOFTWARE
from porch.config.check import CheckFailed, cause_tail, problems_in_child, summary, traceback_tail, warning_line
from porch.config.environment import environment_problems, locator
from porch.config.load import COMMAND_LINE, OVERRIDABLE, config_from_mapping, load_config
from porch.config.settings import Config, ConfigError, ConfigProblem, Mount
from porch.config.yaml_nodes import Node, join, read_yaml
from porch.handlers import registry
from porch.handlers.base import Handler, HandlerContext, OptionError

log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 60.0  # how long `porch check` waits for the handlers to build
STUB_TYPE = "status"  # what a mount with problems stands in as while the rest is checked: it takes no options
PRUNING_ROUNDS = 4  # loads without the broken settings; each may find problems the previous one hid
INDEXED = re.compile(r"(mounts|listen)\[(\d+)\]")


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

    If anything failed, the handlers already built are closed again.
    """
    built: list[tuple[Mount, Handler]] = []
    problems: list[ConfigProblem] = []
    for index, mount in enumerate(config.mounts):
        handler = build_handler(index, mount, config, context)
        if isinstance(handler, ConfigProblem):
            problems.append(handler)
        else:
            built.append((mount, handler))
    if problems:
        close_all(built)
        raise ConfigError(problems)
    return built


def build_handler(index: int, mount: Mount, config: Config, context: HandlerContext) -> Handler | ConfigProblem:
    """The handler of ``config.mounts[index]``, or the problem that stopped it.

    An OptionError becomes a problem at that option's line (``mounts[2].root``); any other
    exception one at the mount, with the traceback's last lines when it is not a plain ValueError.
    """
    file, line = _where(mount, config)
    key = f"mounts[{index}]"
    try:
        return registry.resolve(mount.type)(mount, context)
    except OptionError as exc:
        lines = dict(mount.lines)
        base = re.split(r"[.\[]", exc.key, maxsplit=1)[0]
        at = lines.get(exc.key) or lines.get(base) or line
        return ConfigProblem(file, at, join(key, exc.key), exc.message + cause_tail(exc))
    except ValueError as exc:
        return ConfigProblem(file, line, key, str(exc) + cause_tail(exc))
    except (Exception, SystemExit) as exc:
        message = f"the {mount.type} handler failed to start: {type(exc).__name__}: {exc}\n" + traceback_tail(exc)
        return ConfigProblem(file, line, key, message)


def close_all(built: list[tuple[Mount, Handler]]) -> None:
    for mount, handler in built:
        try:
            handler.close()
        except Exception:
            log.exception("closing the %s handler at %s failed", mount.type, mount.path)


def handler_problems(path: str | Path) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """Build (then close) every handler of ``path`` that its problems leave buildable, in this process.

    (problems, warnings): the handlers' own, not the file's (``load_leniently`` has those).
    """
    checked = load_leniently(path)
    if checked.config is None:
        return [], []
    context = handler_context(checked.config)
    problems: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    built: list[tuple[Mount, Handler]] = []
    for index, mount in enumerate(checked.config.mounts):
        if index in checked.stubs:
            continue
        handler = build_handler(index, mount, checked.config, context)
        if isinstance(handler, ConfigProblem):
            problems.append(handler)
            continue
        built.append((mount, handler))
        file, line = _where(mount, checked.config)
        warnings.extend(ConfigProblem(file, line, f"mounts[{index}]", message) for message in handler.warnings())
    close_all(built)
    return problems, warnings


@dataclasses.dataclass
class Checked:
    """A config file as far as it loads: the config without its broken settings, and the problems."""

    config: Config | None
    problems: list[ConfigProblem]
    stubs: set[int] = dataclasses.field(default_factory=set)  # mounts standing in for broken ones
    listen_keys: list[str] | None = None  # each listener's key in the file, when some were left out


def load_leniently(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Checked:
    """``load_config``, or its problems plus the config that loads without what they are about."""
    try:
        return Checked(load_config(path, overrides=overrides), [])
    except ConfigError as error:
        problems = list(error.problems)
    display = str(path)
    try:
        node, _ = read_yaml(Path(path).read_text(encoding="utf-8"), display)
    except (OSError, UnicodeDecodeError):
        return Checked(None, problems)
    if node is None or node.kind != "mapping":
        return Checked(None, problems)
    lines = node.key_paths()
    pruned = _Pruned(node, dict(overrides or {}))
    found = problems
    for _ in range(PRUNING_ROUNDS):
        if not pruned.leave_out(found):
            break
        try:
            config = config_from_mapping(
                pruned.mapping(), source=display, base_dir=Path(path).resolve().parent, overrides=pruned.overrides
            )
        except ConfigError as error:
            found = [_located(problem, lines) for problem in error.problems]
            problems.extend(p for p in found if (p.key, p.message) not in {(q.key, q.message) for q in problems})
            continue
        mounts = tuple(
            dataclasses.replace(mount, location=f"{display}:{item.line}", lines=tuple(item.key_paths().items()))
            for mount, item in zip(config.mounts, pruned.mount_nodes, strict=True)
        )
        config = dataclasses.replace(config, mounts=mounts, source=Path(path).resolve())
        return Checked(config, problems, pruned.stubs, [f"listen[{index}]" for index in pruned.listen_kept])
    return Checked(None, problems)


def _located(problem: ConfigProblem, lines: dict[str, int | None]) -> ConfigProblem:
    """A problem of a pruned load, given the line its key has in the file."""
    if problem.file == COMMAND_LINE or problem.line is not None:
        return problem
    return dataclasses.replace(problem, line=lines.get(problem.key))


class _Pruned:
    """The file's settings without those that have problems, for ``load_leniently``."""

    def __init__(self, node: Node, overrides: dict[str, Any]) -> None:
        self.top: dict[str, Node] = dict(node.value)
        self.overrides = overrides
        mounts = self.top.get("mounts")
        self.mount_nodes: list[Node] = list(mounts.value) if mounts is not None and mounts.kind == "list" else []
        listen = self.top.get("listen")
        self.listen_nodes: list[Node] = list(listen.value) if listen is not None and listen.kind == "list" else []
        self.listen_kept = list(range(len(self.listen_nodes)))
        self.stubs: set[int] = set()

    def leave_out(self, problems: list[ConfigProblem]) -> bool:
        """Drop what ``problems`` are about; False when nothing could be dropped."""
        changed = False
        options = {option: key for key, option in OVERRIDABLE.items()}
        for problem in problems:
            if problem.file == COMMAND_LINE:
                changed |= self.overrides.pop(options.get(problem.key, ""), None) is not None
            elif match := INDEXED.match(problem.key):
                index = int(match[2])
                if match[1] == "mounts":
                    changed |= self._stub(index, problem.key[match.end() :])
                elif index in self.listen_kept:
                    self.listen_kept.remove(index)
                    changed = True
            elif problem.key:
                changed |= self.top.pop(re.split(r"[.\[]", problem.key, maxsplit=1)[0], None) is not None
        return changed

    def _stub(self, index: int, rest: str) -> bool:
        """Make mount ``index`` a stand-in at its path, or at a path of its own if its path is the problem."""
        if index >= len(self.mount_nodes):
            return False
        item = self.mount_nodes[index]
        entries: dict[str, Node] = item.value if item.kind == "mapping" else {}
        placeholder = Node("scalar", f"/.unbuilt-mount-{index}", item.line)
        path = placeholder if rest.startswith(".path") or "path" not in entries else entries["path"]
        if index in self.stubs and path is item.value.get("path"):
            return False
        stub = {"path": path, "type": Node("scalar", STUB_TYPE, item.line)}
        if "host" in entries and not rest.startswith(".host"):
            stub["host"] = entries["host"]
        self.mount_nodes[index] = Node("mapping", stub, item.line, key_lines=dict.fromkeys(stub, item.line))
        self.stubs.add(index)
        return True

    def mapping(self) -> dict[str, Any]:
        data = {key: child.plain() for key, child in self.top.items()}
        if "mounts" in self.top and self.top["mounts"].kind == "list":
            data["mounts"] = [item.plain() for item in self.mount_nodes]
        if "listen" in self.top and self.top["listen"].kind == "list":
            data["listen"] = [self.listen_nodes[index].plain() for index in self.listen_kept]
        return data


def check_config(
    path: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    running_pid: int | None = None,
    timeout: float = CHECK_TIMEOUT_SECONDS,
) -> str:
    """What ``porch check -c FILE`` does: the one-line summary (and warnings), or CheckFailed with every problem.

    The file is loaded here; the handlers are built in a child process, so an application
    that crashes, exits or hangs while being imported is reported instead of hurting the checker.
    ``running_pid``: the porch of the config's pidfile, whose own ports are no problem.
    """
    checked = load_leniently(path, overrides)
    built_problems, built_warnings = problems_in_child(path, timeout, handler_problems)
    problems = checked.problems + built_problems
    warnings = [*(checked.config.warnings if checked.config and not checked.problems else ()), *built_warnings]
    if checked.config is not None:
        where = locator(str(path), str(path), frozenset(overrides or ()))
        found, cautions = environment_problems(
            checked.config, where, listen_keys=checked.listen_keys, running_pid=running_pid
        )
        problems += found
        warnings += cautions
    if problems:
        raise CheckFailed(problems, warnings)
    assert checked.config is not None
    return "\n".join([summary(checked.config, str(path)), *(warning_line(w) for w in warnings)])
