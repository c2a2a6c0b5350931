"""Loading a config file: YAML text in, a frozen ``Config`` (or every problem at once) out.

The settings themselves are declared once, in ``porch.config.settings``; this module reads a
file into them:

    file --read_yaml--> Node tree (lines kept, ${VAR} expanded)         [porch.config.yaml_nodes]
         --Converter--> typed values, driven by the field annotations    [porch.config.convert]
         --here-------> command-line overrides put in place of the file's values (``OVERRIDABLE``),
                        listeners checked, log paths made absolute, mounts split into their
                        own keys and their handler's Options (``registry.resolve(type)``),
                        limits narrowed, duplicate and shadowing mounts found
         --> a frozen Config (with ``warnings``), or ConfigError listing every problem at once

Each problem names file, line and key path (``config/porch.yaml:14: mounts[2].root: directory
'wwww' does not exist``).  Building the handlers of a loaded config, and ``porch check``, are
``porch.handlers.build``'s.  ``settings_reference`` renders the README table from the same
declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import os
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from porch.config import htpasswd
from porch.config.check import cause_tail, traceback_tail
from porch.config.convert import INVALID, Converter, got, reference_table
from porch.config.settings import (
    LOOPBACK,
    AccessRules,
    AuthSettings,
    Config,
    ConfigError,
    ConfigProblem,
    Limits,
    Listener,
    LogSettings,
    Mount,
    RateLimit,
    Timeouts,
    TLSSettings,
)
from porch.config.yaml_nodes import Node, join, node_from_python, read_yaml
from porch.handlers import registry
from porch.handlers.base import Handler

log = logging.getLogger(__name__)

# --- loading --------------------------------------------------------------------------------

MOUNT_KEYS = ("path", "type", "host", "access", "limits", "timeouts", "auth", "rate_limit")
# Settings a connection applies before any mount is known, or whichever mount its requests go
# to: only the top level may set them.
WHOLE_CONNECTION = "it applies to the connection, whichever mount its requests go to"
TOP_LEVEL_ONLY = {
    "limits.connections_per_client": "connections are counted per client before any mount is known",
    "limits.discard_body": WHOLE_CONNECTION,
    "limits.response_buffer": WHOLE_CONNECTION,
    "timeouts.linger": WHOLE_CONNECTION,
}
HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


# The settings a command-line option can replace, and the option named in its messages.
OVERRIDABLE = {
    "listen": "--bind",
    "workers": "--workers",
    "threads": "--threads",
    "log.access": "--access-logfile",
    "log.error": "--error-logfile",
    "log.level": "--log-level",
    "pidfile": "--pidfile",
    "allow_root": "--allow-root",
}
COMMAND_LINE = "command line"


def load_config(path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read, expand, validate and convert ``path``; ``overrides`` replace settings of the file.

    ``overrides`` maps keys of ``OVERRIDABLE`` to command-line values: "listen" to addresses,
    the others to text converted and checked as a value written in the file would be.
    Raises ConfigError listing every problem found, each with file (as given), line and key,
    or the option for a value from the command line.
    """
    display = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigProblem(display, None, "", f"cannot read the config file: {reason}")]) from None
    node, problems = read_yaml(text, display)
    source = Path(path).resolve()
    return _config(node, problems, display, source.parent, source, overrides or {})


def config_from_mapping(
    data: Mapping[str, Any], *, source: str, base_dir: Path, overrides: Mapping[str, Any] | None = None
) -> Config:
    """``load_config`` for data built in memory (``porch serve DIR``): no lines, no ``${}`` expansion.

    ``source`` names the data in messages; relative paths resolve against ``base_dir``.
    """
    return _config(node_from_python(data), [], source, Path(os.path.abspath(base_dir)), None, overrides or {})


def _config(
    node: Node | None,
    problems: list[ConfigProblem],
    file: str,
    base_dir: Path,
    source: Path | None,
    overrides: Mapping[str, Any],
) -> Config:
    """The one path from a Node tree to a Config, shared by both entry points."""
    conv = Converter(file, base_dir, custom={Listener: _listener, LogSettings: _log_settings, TLSSettings: _tls})
    # What is wrong with a value the command line replaces does not matter.
    conv.problems.extend(problem for problem in problems if _overriding(problem.key, overrides) is None)
    if node is None or node.is_null:  # an empty file (or "---" alone) means every default
        if node is None and conv.problems:
            raise ConfigError(conv.problems)
        node = Node("mapping", {}, None)
    if node.kind != "mapping":
        conv.problem(node.line, "", f"expected a mapping of settings at the top level, got {got(node)}")
        raise ConfigError(conv.problems)
    _apply_overrides(node, overrides)
    values = conv.fields(Config, node, "", skip=frozenset({"listen", "mounts"}))
    if "listen" in overrides:
        values["listen"] = _command_line_listeners(overrides["listen"], conv)
    elif "listen" in node.value:
        values["listen"] = _listeners(conv, node.value["listen"])
    if not values.get("listen", True):
        conv.warn(
            node.key_lines.get("listen"),
            "listen",
            "no addresses: porch serves only sockets it inherits (systemd socket activation)",
        )
    defaults = Config()
    values["mounts"] = _mounts(
        conv,
        node.value.get("mounts"),
        values.get("limits", defaults.limits),
        values.get("timeouts", defaults.timeouts),
        values.get("access", defaults.access),
    )
    if not values["mounts"] and "mounts" not in node.value:
        conv.warn(None, "mounts", "no mounts: every request will be answered 404 Not Found")
    if not values.get("trusted_proxies") and any(listener.proxy_protocol for listener in values.get("listen", ())):
        conv.problem(
            node.key_lines.get("listen"),
            "listen",
            "a listener with proxy_protocol accepts PROXY headers from trusted_proxies only, and none are "
            "listed: every connection would be refused",
        )
    if conv.problems:
        named = [_from_command_line(problem, overrides) for problem in conv.problems]
        raise ConfigError(sorted(named, key=lambda p: p.line or 0))
    return Config(**values, source=source, warnings=tuple(sorted(conv.warnings, key=lambda p: p.line or 0)))


def _overriding(key: str, overrides: Mapping[str, Any]) -> str | None:
    """The overridden setting that ``key`` (a problem's key path) is, or lies below; None if none."""
    for name in overrides:
        if key == name or key.startswith((f"{name}.", f"{name}[")):
            return name
    return None


def _apply_overrides(node: Node, overrides: Mapping[str, Any]) -> None:
    """Put each override (but ``listen``) into the top-level mapping ``node``, replacing the file's value.

    Command-line text is marked as ``${VAR}`` text is, so that "4" converts to an integer where
    one is expected.  A section of the file that is not a mapping keeps its own problem.
    """
    for key, value in overrides.items():
        if key == "listen":
            continue
        *sections, name = key.split(".")
        parent = node
        for section in sections:
            child = parent.value.get(section)
            if child is None or child.is_null:
                child = Node("mapping", {}, None)
                parent.value[section] = child
            parent = child
        if parent.kind != "mapping":
            continue
        override = node_from_python(value)
        override.expanded = isinstance(value, str)
        parent.value[name] = override
        parent.key_lines[name] = None


def _from_command_line(problem: ConfigProblem, overrides: Mapping[str, Any]) -> ConfigProblem:
    """A problem with an overridden setting, told as one with the option that gave its value."""
    name = _overriding(problem.key, overrides)
    if name is None or problem.file == COMMAND_LINE:
        return problem
    return ConfigProblem(COMMAND_LINE, None, OVERRIDABLE[name], problem.message)


def parse_address(address: str, to_path: Callable[[str], Path]) -> str:
    """A listen address checked and normalised; ValueError saying which form was expected.

    Forms: ``host:port`` (IPv4 address or host name), ``[ipv6]:port`` and ``unix:PATH`` (a
    relative PATH is made absolute with ``to_path``).  Ports are 0-65535; 0 picks a free one.
    """
    address = address.strip()
    if "://" in address:  # a URL pasted where its address belongs
        netloc = urlsplit(address).netloc
        write = f": write '{netloc}'" if re.search(r":[0-9]+$", netloc) else " (write host:port)"
        raise ValueError(f"expected an address like 127.0.0.1:8000, not a URL{write}")
    if address.startswith("unix:"):
        if not address[5:]:
            raise ValueError("expected a socket path after 'unix:'")
        return f"unix:{to_path(address[5:])}"
    if address.startswith("["):
        host, bracket, port = address[1:].partition("]:")
        if not bracket:
            raise ValueError(f"expected '[ipv6-address]:port', got '{address}'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{host}' is not an IPv6 address") from None
    else:
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            raise ValueError(f"expected 'host:port', '[ipv6]:port' or 'unix:/path', got '{address}'")
        if ":" in host:
            raise ValueError(f"an IPv6 address needs brackets: '[{host}]:{port}'")
        if host.replace(".", "").isdigit():
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"'{host}' is not an IPv4 address") from None
        elif not HOSTNAME.fullmatch(host):
            raise ValueError(f"'{host}' is not a host name or address")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got '{port}'")
    return f"[{host}]:{int(port)}" if address.startswith("[") else f"{host}:{int(port)}"


def _listener(conv: Converter, node: Node, key: str) -> Any:
    """A Listener from "address" or {address, tls, socket options}; each option fits the address."""
    mark = len(conv.problems)
    values: dict[str, Any] = {}
    address_node, address_key = node, key
    if node.kind == "mapping":
        values = conv.fields(Listener, node, key)
        address_node, address_key = node.value.get("address"), join(key, "address")
        if address_node is None:
            return INVALID
    address = conv.convert(str, address_node, address_key)
    if address is INVALID:
        return INVALID
    try:
        values["address"] = parse_address(address, conv.path)
    except ValueError as exc:
        return conv.problem(address_node.line, address_key, str(exc))
    kind = "unix" if values["address"].startswith("unix:") else "v6" if values["address"].startswith("[") else "v4"
    applies = {"mode": "unix", "owner": "unix", "group": "unix", "reuse_port": "v4 v6", "v6only": "v6"}
    written = node.value if node.kind == "mapping" else {}
    for name in (name for name in written if kind not in applies.get(name, kind)):
        where = {"unix": "unix: listeners", "v6": "[v6] addresses", "v4 v6": "TCP listeners"}[applies[name]]
        conv.problem(node.key_lines.get(name), join(key, name), f"applies only to {where}")
    return INVALID if len(conv.problems) > mark else Listener(**values)


def _tls(conv: Converter, node: Node, key: str) -> Any:
    """TLSSettings: one certificate (cert, key) or several (certificates), never both.

    With several, ``cert`` and ``key`` are set to the first, and each certificate learns its line:
    they are loaded at start-up, and an error there names it.
    """
    mark = len(conv.problems)
    values = conv.fields(TLSSettings, node, key, partial=True)
    written: dict[str, Node] = node.value if node.kind == "mapping" else {}
    listed = written.get("certificates")
    if listed is None:
        for name in ("cert", "key") if node.kind == "mapping" else ():
            if name not in written:
                conv.problem(node.line, join(key, name), "required key missing (or give 'certificates')")
    elif "cert" in written or "key" in written:
        conv.problem(
            node.key_lines.get("certificates"),
            join(key, "certificates"),
            "give 'cert' and 'key' or 'certificates', not both",
        )
    elif listed.is_null or (listed.kind == "list" and not listed.value):
        conv.problem(listed.line, join(key, "certificates"), "expected one certificate at least, {cert, key}")
    if "verify_client" in written and "ca" not in written:
        conv.problem(
            node.key_lines.get("verify_client"),
            join(key, "verify_client"),
            "needs 'ca', the CA certificates that client certificates are checked against",
        )
    if len(conv.problems) > mark:
        return INVALID
    if listed is not None:
        items = listed.value if listed.kind == "list" else [listed]
        located = []
        for index, (certificate, item) in enumerate(zip(values["certificates"], items, strict=True)):
            item_key = join(key, f"certificates[{index}]" if listed.kind == "list" else "certificates")
            where = f"{conv.file}:{item.line}" if item.line else conv.file
            located.append(replace(certificate, location=f"{where}: {item_key}"))
        values.update(cert=located[0].cert, key=located[0].key, certificates=tuple(located))
    return TLSSettings(**values)


def _listeners(conv: Converter, node: Node) -> tuple[Listener, ...]:
    """The ``listen`` list (or one address); the same address twice cannot be bound."""
    if node.is_null:
        return ()
    items = node.value if node.kind == "list" else [node]
    listeners: list[Listener] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        key = f"listen[{index}]" if node.kind == "list" else "listen"
        listener = conv.convert(Listener, item, key)
        if listener is INVALID:
            continue
        if listener.address in seen and not listener.address.endswith(":0"):
            conv.problem(item.line, key, f"'{listener.address}' is already listed as listen[{seen[listener.address]}]")
        seen.setdefault(listener.address, index)
        listeners.append(listener)
    return tuple(listeners)


def _command_line_listeners(addresses: Sequence[str], conv: Converter) -> tuple[Listener, ...]:
    """``--bind`` addresses; relative unix paths are taken from the current directory."""
    listeners = []
    cwd = Path.cwd()
    for address in addresses:
        try:
            listeners.append(Listener(parse_address(address, lambda p: Path(os.path.abspath(cwd / p)))))
        except ValueError as exc:
            conv.problems.append(ConfigProblem(COMMAND_LINE, None, OVERRIDABLE["listen"], f"{address!r}: {exc}"))
    return tuple(listeners)


def _log_settings(conv: Converter, node: Node, key: str) -> Any:
    """LogSettings, with log file paths made absolute against the config's directory."""
    values = conv.dataclass(LogSettings, node, key)
    if values is INVALID:
        return INVALID
    changes = {}
    for name in ("access", "error"):
        value = getattr(values, name)
        if value == "":
            return conv.problem(node.line, join(key, name), "expected '-', a file path (or false for access)")
        if isinstance(value, str) and value != "-":
            changes[name] = str(conv.path(value))
    return replace(values, **changes)


def _mounts(
    conv: Converter, node: Node | None, limits: Limits, timeouts: Timeouts, access: AccessRules
) -> tuple[Mount, ...]:
    """Every mount, then the checks between mounts (same path twice, a static file hidden)."""
    if node is None or node.is_null or node.kind == "invalid":
        return ()
    if node.kind != "list":
        conv.problem(node.line, "mounts", f"expected a list of mounts, got {got(node)}")
        return ()
    built: list[tuple[int, int | None, Mount]] = []
    for index, item in enumerate(node.value):
        mount = _mount(conv, item, f"mounts[{index}]", limits, timeouts, access)
        if mount is not INVALID:
            built.append((index, item.line, mount))
    _check_shadowing(conv, built)
    return tuple(mount for _, _, mount in built)


def _mount(conv: Converter, node: Node, key: str, limits: Limits, timeouts: Timeouts, access: AccessRules) -> Any:
    """One mount: its own keys (MOUNT_KEYS) and every other key as its handler's Options."""
    if node.kind != "mapping":
        return conv.problem(node.line, key, f"expected a mapping with path, type and options, got {got(node)}")
    mark = len(conv.problems)
    entries: dict[str, Node] = node.value
    for name in ("path", "type"):
        if name not in entries:
            conv.problem(node.line, join(key, name), "required key missing")
    path = _mount_path(conv, entries.get("path"), join(key, "path"))
    type_name = conv.convert(str, entries["type"], join(key, "type")) if "type" in entries else INVALID
    host = _mount_host(conv, entries.get("host"), join(key, "host"))
    null = Node("scalar", None, node.line)
    own_access = conv.fields(AccessRules, entries.get("access", null), join(key, "access"), partial=True)
    own_limits = conv.fields(Limits, entries.get("limits", null), join(key, "limits"), partial=True)
    own_timeouts = conv.fields(Timeouts, entries.get("timeouts", null), join(key, "timeouts"), partial=True)
    auth = conv.convert(AuthSettings | None, entries.get("auth", null), join(key, "auth"))
    if isinstance(auth, AuthSettings):  # the users must be readable now, not at the first request
        try:
            htpasswd.read(auth.htpasswd, allow_sha1=auth.allow_sha1)
        except htpasswd.HtpasswdError as error:
            conv.problem(
                entries["auth"].key_lines.get("htpasswd"), join(key, "auth.htpasswd"), f"{auth.htpasswd}: {error}"
            )
    rate_limit = conv.convert(RateLimit | None, entries.get("rate_limit", null), join(key, "rate_limit"))
    options = INVALID
    handler_class: type[Handler] | None = None
    if type_name is not INVALID:
        handler_class = _handler_class(conv, type_name, entries["type"], join(key, "type"))
        options_fields = dataclasses.fields(handler_class.Options) if handler_class else ()
        clash = [f.name for f in options_fields if f.name in MOUNT_KEYS]
        if clash:
            conv.problem(
                entries["type"].line,
                join(key, "type"),
                f"the {type_name} handler declares options named like mount keys: {', '.join(clash)}",
            )
        elif handler_class is not None:
            option_entries = {name: child for name, child in entries.items() if name not in MOUNT_KEYS}
            option_node = Node(
                "mapping",
                option_entries,
                node.line,
                key_lines={name: node.key_lines.get(name) for name in option_entries},
            )
            options = conv.dataclass(
                handler_class.Options, option_node, key, unknown=_unknown_option(type_name, handler_class.Options)
            )
    for section, own in (("limits", own_limits), ("timeouts", own_timeouts)):
        for name in own:
            if reason := TOP_LEVEL_ONLY.get(f"{section}.{name}"):
                conv.problem(
                    entries[section].key_lines.get(name),
                    join(key, f"{section}.{name}"),
                    f"{reason}: set it in the top-level {section}",
                )
    if len(conv.problems) > mark:
        return INVALID
    # A mount narrows the global limits (the smaller value wins); its timeouts replace the global
    # ones, because one slow upload or CGI script may need longer than everything else.
    for name, value in own_limits.items():
        if value > getattr(limits, name):
            conv.warn(
                entries["limits"].key_lines.get(name),
                join(key, f"limits.{name}"),
                f"{value} is above the global limit {getattr(limits, name)}, which applies",
            )
    narrowed = replace(limits, **{name: min(value, getattr(limits, name)) for name, value in own_limits.items()})
    local = handler_class is not None and getattr(handler_class, "local_only", False)
    allow = own_access.get("allow", LOOPBACK if local else access.allow)
    deny = access.deny + tuple(own_access.get("deny", ()))
    return Mount(
        path=path,
        type=type_name,
        host=host,
        options=options,
        limits=narrowed,
        timeouts=replace(timeouts, **own_timeouts),
        access=AccessRules(allow=allow, deny=deny),
        auth=auth,
        rate_limit=rate_limit,
        location=f"{conv.file}:{node.line}" if node.line else conv.file,
        lines=tuple(node.key_paths().items()),
    )


def _mount_path(conv: Converter, node: Node | None, key: str) -> Any:
    """A URL prefix: starts with "/", no trailing "/" (except "/" itself), no dot segments."""
    if node is None:
        return INVALID
    path = conv.convert(str, node, key)
    if path is INVALID:
        return INVALID
    if not path.startswith("/"):
        return conv.problem(node.line, key, f"expected a URL path starting with '/', got '{path}'")
    if any(ch in path for ch in "?#") or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in path):
        return conv.problem(
            node.line, key, f"a mount path cannot contain '?', '#', spaces or control characters, got {path!r}"
        )
    path = path.rstrip("/") or "/"
    # Requests are matched after their dot segments are removed (RFC 3986 section 5.2.4), so a
    # prefix containing them could never match.
    if path != "/" and any(segment in ("", ".", "..") for segment in path[1:].split("/")):
        return conv.problem(node.line, key, f"a mount path cannot contain empty, '.' or '..' segments, got '{path}'")
    return path


def _mount_host(conv: Converter, node: Node | None, key: str) -> Any:
    """The virtual host names of a mount (one or a list) as the Host header carries them: lower-cased,
    without port or trailing dot; ``*.example.org`` stands for one or more labels before
    ``example.org`` (not for ``example.org`` itself).  No names: every host."""
    if node is None or node.is_null:
        return ()
    items = node.value if node.kind == "list" else [node]
    names: list[str] = []
    for index, item in enumerate(items):
        item_key = f"{key}[{index}]" if node.kind == "list" else key
        text = conv.convert(str, item, item_key)
        if text is INVALID:
            continue
        name = text.strip().lower().removesuffix(".")
        if name.startswith("["):
            try:
                ipaddress.IPv6Address(name[1:-1] if name.endswith("]") else "not an address")
            except ValueError:
                conv.problem(item.line, item_key, f"expected '[ipv6-address]', got '{name}'")
                continue
        elif "*" in name:
            if not name.startswith("*.") or not _host_name(name[2:]) or len(name) > 253:
                conv.problem(
                    item.line, item_key, f"expected a wildcard '*.' and a host name (like *.example.org), got '{name}'"
                )
                continue
        elif not _host_name(name):
            conv.problem(item.line, item_key, f"expected a host name without port (like www.example.org), got '{name}'")
            continue
        names.append(name)
    return INVALID if len(names) < len(items) else tuple(dict.fromkeys(names))


def _host_name(name: str) -> bool:
    """A DNS name (an IPv4 address too): labels of letters, digits, '-' and '_', none empty."""
    return bool(HOSTNAME.fullmatch(name)) and not name.endswith(".")


def _handler_class(conv: Converter, type_name: str, node: Node, key: str) -> type[Handler] | None:
    """The class for a mount's ``type``, or None with the problem recorded."""
    try:
        return registry.resolve(type_name)
    except ValueError as exc:
        # A traceback helps when the handler's module failed inside; not when the name is wrong.
        frames = traceback.extract_tb(exc.__cause__.__traceback__) if exc.__cause__ else []
        inside = bool(frames) and frames[-1].filename != registry.__file__ and not frames[-1].filename.startswith("<")
        conv.problem(node.line, key, str(exc) + (cause_tail(exc) if inside else ""))
    except (Exception, SystemExit) as exc:  # a handler module that fails while being imported
        conv.problem(
            node.line, key, f"cannot load handler {type_name!r}: {type(exc).__name__}: {exc}\n" + traceback_tail(exc)
        )
    return None


def _unknown_option(type_name: str, options: type) -> Callable[[str], str]:
    names = [f.name for f in dataclasses.fields(options) if not f.metadata.get("internal")]

    def message(name: str) -> str:
        close = difflib.get_close_matches(name, names + list(MOUNT_KEYS), n=1, cutoff=0.6)
        if close:
            return f"unknown key '{name}' (did you mean '{close[0]}'?)"
        offered = f"{type_name} options: {', '.join(names)}" if names else f"the {type_name} handler takes no options"
        return f"unknown key '{name}' ({offered}; mount keys: {', '.join(MOUNT_KEYS)})"

    return message


def _check_shadowing(conv: Converter, mounts: list[tuple[int, int | None, Mount]]) -> None:
    """The same path twice for the same hosts is an error; for overlapping hosts, or hiding a file, a warning.

    The same hosts: both mounts answer every host, or share a name or an equal wildcard -- the
    second would never be served there.  Overlapping: a name of one is covered by a wildcard of
    the other; the exact name takes that host and the wildcard keeps the rest, which is often the
    point, but worth saying.  "Hiding": a mount nested below another whose handler serves a
    ``root`` directory (static files, CGI scripts) for hosts in common, where that root holds a
    file or directory of the same name -- the longest prefix wins, so that file can no longer be
    reached.
    """
    for position, (index, line, mount) in enumerate(mounts):
        for first, _, other in mounts[:position]:
            if other.path != mount.path or bool(other.host) != bool(mount.host):
                continue
            overlap = _overlap(other.host, mount.host) if mount.host else ("", True)
            if overlap is None:
                continue
            on = f" for host {overlap[0]}" if overlap[0] else ""
            if overlap[1]:
                conv.problem(line, f"mounts[{index}].path", f"'{mount.path}'{on} is already mounted by mounts[{first}]")
            else:
                conv.warn(
                    line,
                    f"mounts[{index}].path",
                    f"'{mount.path}'{on} is also mounted by mounts[{first}]; the exact name is served there",
                )
            break
    for index, line, mount in mounts:
        for outer_index, _, outer in mounts:
            root = getattr(outer.options, "root", None)
            inside = outer.path == "/" or mount.path.startswith(outer.path + "/")
            if (
                not isinstance(root, Path)
                or mount.path == outer.path
                or not inside
                or (outer.host and _overlap(outer.host, mount.host) is None)
            ):
                continue
            hidden = root / mount.path[len(outer.path) :].lstrip("/")
            if hidden.exists() or hidden.is_symlink():
                conv.warn(
                    line,
                    f"mounts[{index}].path",
                    f"'{mount.path}' hides '{hidden}', which mounts[{outer_index}] ('{outer.path}' "
                    f"{outer.type}) would otherwise serve",
                )


def _overlap(earlier: tuple[str, ...], later: tuple[str, ...]) -> tuple[str, bool] | None:
    """A host of ``later`` that ``earlier`` answers too, as messages show it, and whether both name
    it the same way (``later`` then never serves it); None when they have no host in common."""
    same = next((name for name in later if name in earlier), None)
    if same is not None:
        return f"'{same}'", True
    for one in earlier:
        for other in later:
            if _covers(one, other):
                return f"'{other}' (by '{one}')", False
            if _covers(other, one):
                return f"'{other}' (covering '{one}')", False
    return None


def _covers(wildcard: str, name: str) -> bool:
    """Whether ``*.example.org`` stands for ``name`` (one or more labels before example.org)."""
    return wildcard.startswith("*.") and not name.startswith("*.") and name.endswith(wildcard[1:])


# --- the README reference -------------------------------------------------------------------


def settings_reference() -> str:
    """The README's config reference: a markdown table of every key, generated from the fields."""
    return reference_table(
        Config,
        labels={tuple[Listener, ...]: "list of addresses or mappings"},
        extra_rows=["| `mounts[].<option>` | | | every other key of a mount is an option of its handler type |"],
    )
