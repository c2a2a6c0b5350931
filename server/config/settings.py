"""The settings porch understands, each declared once: type, default, check and a one-line doc.

Every setting is a dataclass field declared with ``setting(default, doc=..., check=...)``: its
type comes from the annotation, its default and doc from the declaration.  The loader
(``porch.config.load``), ``porch check``, the README reference and every error message come from
these declarations.  Handlers declare their own options the same way (see ``porch.handlers.base``).
"""

from __future__ import annotations

import functools
import grp
import ipaddress
import os
import pwd
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a config file, located as precisely as the YAML allows."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found while loading a config, so the user can fix them all in one go."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


CIDR = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_DRAIN_DELAY = 3.0  # seconds: a balancer probing every second marks the instance down meanwhile
ProxyHeader = Literal["forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"]
LOOPBACK: tuple[CIDR, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def setting(
    default: Any = MISSING,
    *,
    doc: str,
    check: Callable[[Any], None] | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
    aliases: Mapping[str, Callable[[], Any]] | None = None,
    internal: bool = False,
) -> Any:
    """Declare one setting: default, a one-line doc, and a check that raises ValueError(reason).

    ``aliases`` maps words accepted in place of a value to a function computing it (``workers:
    auto``).  An ``internal`` field is filled in by the loader: it cannot be written in a file
    and is left out of the reference.
    """
    metadata = {"doc": doc, "check": check, "aliases": aliases, "internal": internal}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def positive(value: float) -> None:
    """Check: the value must be greater than zero."""
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value}")


def not_negative(value: float) -> None:
    """Check: the value must be zero or more."""
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")


def existing_directory(value: Path) -> None:
    """Check: the path must name an existing directory."""
    if Path(value).exists() and not Path(value).is_dir():
        raise ValueError(f"'{value}' is not a directory")
    if not Path(value).is_dir():
        raise ValueError(f"directory '{value}' does not exist")


def existing_file(value: Path) -> None:
    """Check: the path must name an existing regular file."""
    if not Path(value).is_file():
        raise ValueError(f"file '{value}' does not exist")


def printable_text(value: str) -> None:
    """Check: text that goes into a response header: no control characters."""
    if not value.isprintable():
        raise ValueError(f"must not contain control characters, got {value!r}")


def octal_umask(value: str) -> None:
    """Check: a umask written in octal digits, 000 to 777 (unquoted 027 is read as the text 027)."""
    if not re.fullmatch(r"[0-7]{1,4}", value) or int(value, 8) > 0o777:
        raise ValueError(f"expected an octal mask from 000 to 777 like 027, got '{value}'")


@dataclass(frozen=True)
class Limits:
    """Size limits; the defaults are safe for the open internet."""

    request_line: int = setting(8192, doc="longest request line in bytes (longer: 414)", check=positive)
    header_bytes: int = setting(65536, doc="largest header block in bytes (larger: 431)", check=positive)
    headers: int = setting(100, doc="most header fields in one request (more: 431)", check=positive)
    body: int = setting(10485760, doc="largest request body in bytes (larger: 413)", check=not_negative)
    connections_per_client: int = setting(
        0,
        doc="global only: connections one client address may hold open at once, across the workers of "
        "this instance; more are closed at once (and logged); 0 = no limit",
        check=not_negative,
    )
    buffered_body: int = setting(
        1048576,
        doc="request bodies up to this size (Content-Length, no Expect: 100-continue) are received whole "
        "before a thread (or child) takes the request, so a slow upload holds none; larger and chunked ones "
        "are read as the handler asks; 0 = never",
        check=not_negative,
    )
    discard_body: int = setting(
        65536,
        doc="global only: bytes of a request body the handler left unread that may still be to come and are "
        "read and discarded after the response, to keep the connection; more: the response says "
        "Connection: close (then `timeouts.linger`)",
        check=not_negative,
    )
    response_buffer: int = setting(
        262144,
        doc="global only: bytes of a streamed response that may wait in memory for a slow client before the "
        "thread producing it waits for the client too; what is left when the body ends is sent without a thread",
        check=not_negative,
    )


@dataclass(frozen=True)
class Timeouts:
    """Timeouts in seconds; there is one for every wait."""

    header: float = setting(10.0, doc="seconds a client has to send a complete request head", check=positive)
    keepalive: float = setting(5.0, doc="seconds an idle keep-alive connection is kept open", check=positive)
    body: float = setting(
        30.0, doc="seconds of silence allowed while reading a request body or writing a response", check=positive
    )
    body_min_rate: float = setting(
        500.0,
        doc="least bytes a second a request body must arrive at, and a response be taken at, over each "
        "`timeouts.body` seconds spent waiting for the client (slower: 408, or the response is cut off); "
        "0 = no minimum",
        check=not_negative,
    )
    linger: float = setting(
        2.0,
        doc="global only: seconds a connection closed while the client may still be sending (an unread body) "
        "reads and discards what comes, its own side shut, so the client reads the response rather than a "
        "reset (nginx lingering_time); 0 = close at once",
        check=not_negative,
    )
    graceful: float = setting(
        30.0, doc="seconds in-flight requests get to finish on stop or reload", check=not_negative
    )


@dataclass(frozen=True)
class AuthSettings:
    """HTTP Basic authentication of a mount against an Apache htpasswd file."""

    realm: str = setting(
        doc="the name browsers show in their login prompt (WWW-Authenticate realm)", check=printable_text
    )
    htpasswd: Path = setting(
        doc="Apache htpasswd file: bcrypt ($2y$, needs the bcrypt extra), SHA-512 or SHA-256 crypt "
        "($6$, $5$), or {SHA} with `allow_sha1`; re-read when it changes",
        check=existing_file,
    )
    allow_sha1: bool = setting(False, doc="accept {SHA} entries (unsalted SHA-1: weak, for old files only)")
    pass_credentials: bool = setting(
        False, doc="pass the Authorization header on to the handler (HTTP_AUTHORIZATION for CGI and WSGI)"
    )


@dataclass(frozen=True)
class RateLimit:
    """Requests a second per client address, a token bucket shared by every worker of the instance."""

    rate: float = setting(doc="requests a second one client address may make on average", check=positive)
    burst: int = setting(
        0, doc="requests above the rate a client may make at once (the bucket holds 1 + burst)", check=not_negative
    )


@dataclass(frozen=True)
class AccessRules:
    """Who may connect.  A client is admitted when it matches no ``deny`` and some ``allow``."""

    allow: tuple[CIDR, ...] = setting(
        default_factory=lambda: (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
        doc="networks (CIDR or address) that may connect; default everyone",
    )
    deny: tuple[CIDR, ...] = setting(default_factory=tuple, doc="networks refused with 403; deny wins over allow")

    @functools.cached_property
    def admits_everyone(self) -> bool:
        """True for the default rules, so the per-request check can be skipped."""
        return not self.deny and {str(net) for net in self.allow} >= {"0.0.0.0/0", "::/0"}


@dataclass(frozen=True)
class LogSettings:
    """Where the access and error logs go and how they look."""

    access: str | Literal[False] = setting("-", doc='access log: "-" for stdout, a file path, or false for none')
    access_format: Literal["combined", "common", "json"] = setting(
        "combined", doc="combined (Apache, plus request time and id), common, or json (one object per line)"
    )
    error: str = setting("-", doc='error log: "-" for stderr, or a file path')
    level: Literal["debug", "info", "warning", "error"] = setting("info", doc="lowest level written to the error log")
    format: Literal["text", "json"] = setting(
        "text",
        doc="error log lines: text (`[time] [pid] [level] [request id] logger: message`, warnings and errors "
        "in colour on a terminal) or json (one object a line: time, pid, level, request_id, logger, message, "
        "traceback)",
    )


def octal_mode(value: str) -> None:
    """Check: permission bits written in octal, like "0660"."""
    if not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError(f"expected permission bits in octal like \"0660\", got '{value}'")


def user_entry(user: str) -> pwd.struct_passwd:
    """The passwd entry of a user written as a name or a numeric uid; KeyError if there is none.

    The one lookup behind every user setting: the check below, the socket owner, the workers' user.
    """
    return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)


def group_entry(group: str) -> grp.struct_group:
    """The group entry of a group written as a name or a numeric gid; KeyError if there is none."""
    return grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)


def known_user(value: str) -> None:
    """Check: a user name or numeric uid this machine knows."""
    try:
        user_entry(value)
    except KeyError:
        raise ValueError(f"no user '{value}' on this machine") from None


def known_group(value: str) -> None:
    """Check: a group name or numeric gid this machine knows."""
    try:
        group_entry(value)
    except KeyError:
        raise ValueError(f"no group '{value}' on this machine") from None


@dataclass(frozen=True)
class Certificate:
    """One certificate of an HTTPS listener that serves several, chosen by the name the client asks for (SNI)."""

    cert: Path = setting(doc="PEM certificate chain file (the server's certificate first)", check=existing_file)
    key: Path = setting(doc="PEM private key file (without passphrase)", check=existing_file)
    # Where the loader read it ("porch.yaml:7: listen[0].tls.certificates[1]"), so that an error
    # found when the certificate is loaded at start-up names its line.
    location: str = setting("", doc="where the certificate is configured", internal=True)


@dataclass(frozen=True)
class TLSSettings:
    """Certificates, key and protocol choices for an HTTPS listener.

    A file gives one certificate (``cert`` and ``key``) or several (``certificates``), never both.
    ``cert`` and ``key`` are always the default certificate -- with several, the loader sets them to
    the first -- so code that knows of one certificate only still sees the one most clients get.
    """

    cert: Path = setting(
        doc="PEM certificate chain file (the server's certificate first); required unless `certificates` is given",
        check=existing_file,
    )
    key: Path = setting(
        doc="PEM private key file (without passphrase); required unless `certificates` is given", check=existing_file
    )
    certificates: tuple[Certificate, ...] = setting(
        (),
        doc="instead of `cert` and `key`: several certificates, each sent to the clients asking (SNI) for a DNS "
        "name in its subjectAltName (`*.example.org` covers one label); the first one to every other client",
    )
    ca: Path | None = setting(
        None,
        doc="PEM file of the CAs that sign client certificates; when set, clients are asked for a certificate",
        check=existing_file,
    )
    verify_client: Literal["required", "optional"] = setting(
        "required",
        doc="with `ca`: required (no valid client certificate, no connection) or optional "
        "(a certificate sent must be valid)",
    )
    min_version: Literal["TLSv1.2", "TLSv1.3"] = setting("TLSv1.2", doc="oldest TLS version accepted")

    @property
    def pairs(self) -> tuple[Certificate, ...]:
        """Every certificate, the default one first, whichever form the file used."""
        return self.certificates or (Certificate(self.cert, self.key),)


@dataclass(frozen=True)
class Listener:
    """One address to listen on: ``host:port``, ``[v6]:port`` or ``unix:/path``, optionally with TLS."""

    address: str = setting(doc='"host:port", "[::1]:port" or "unix:/path"')
    tls: TLSSettings | None = setting(None, doc="serve HTTPS on this listener")
    backlog: int = setting(
        1024,
        doc="connections the kernel queues before porch accepts them (capped by net.core.somaxconn)",
        check=positive,
    )
    reuse_port: bool = setting(
        False,
        doc="TCP only: SO_REUSEPORT, so that other processes may bind the same "
        "address (the kernel spreads connections among them)",
    )
    v6only: bool = setting(True, doc="[v6] addresses only: IPV6_V6ONLY; false lets [::]:port accept IPv4 too")
    mode: str | None = setting(
        None, doc='unix: only: permissions of the socket file in octal, like "0660"', check=octal_mode
    )
    owner: str | None = setting(
        None, doc="unix: only: user (name or uid) that owns the socket file; needs root", check=known_user
    )
    group: str | None = setting(None, doc="unix: only: group (name or gid) of the socket file", check=known_group)
    proxy_protocol: bool = setting(
        False,
        doc="every connection starts with a PROXY protocol header (v1 or v2, from HAProxy, nginx, a cloud "
        "balancer), accepted from `trusted_proxies` only; it gives the client address",
    )

    @property
    def unix_path(self) -> str | None:
        return self.address[5:] if self.address.startswith("unix:") else None

    @property
    def host_port(self) -> tuple[str, int]:
        """``(host, port)`` of a TCP listener, brackets removed from IPv6 hosts."""
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Mount:
    """A handler at a URL path prefix (and optionally a virtual host).

    ``limits``, ``timeouts`` and ``access`` are the effective values for this mount: the global
    ones narrowed by whatever the mount sets (timeouts are replaced instead, so a CGI mount may
    allow a slow script longer).  ``options`` is the handler's own ``Options``.
    """

    path: str = setting(doc='URL prefix, e.g. "/" or "/app"; the longest matching prefix wins')
    type: str = setting(doc='handler type: static, cgi, wsgi, xmlrpc, status, or "package.module:Class"')
    host: tuple[str, ...] = setting(
        (),
        doc="virtual host names this mount answers for (one or a list): exact names and `*.example.org` "
        "wildcards (one or more labels); every host when absent",
    )
    options: Any = setting(None, doc="the handler's own options (every other key of the mount)", internal=True)
    limits: Limits = setting(default_factory=Limits, doc="limits narrowing the global ones (the smaller value wins)")
    timeouts: Timeouts = setting(
        default_factory=Timeouts,
        doc="timeouts for this mount's requests, replacing the global ones (longer is allowed)",
    )
    access: AccessRules = setting(
        default_factory=AccessRules,
        doc="access rules: `allow` replaces the global allow, `deny` adds to the global deny",
    )
    auth: AuthSettings | None = setting(None, doc="HTTP Basic authentication against an htpasswd file")
    rate_limit: RateLimit | None = setting(
        None, doc="requests a second per client address; more are answered 429 with Retry-After"
    )
    location: str = setting("", doc="where this mount was declared (file:line), for messages", internal=True)
    lines: tuple[tuple[str, int | None], ...] = setting(
        default_factory=tuple, doc='line of each key below the mount ("root", "functions.add")', internal=True
    )


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration."""

    listen: tuple[Listener, ...] = setting(
        default_factory=lambda: (Listener("127.0.0.1:8000"),),
        doc='addresses to listen on: "host:port", "[::1]:port", "unix:/path" or {address, tls}',
    )
    concurrency: Literal["threading", "forking"] = setting(
        "threading", doc="threading (pooled threads) or forking (a process per connection)"
    )
    workers: int = setting(
        1,
        doc='pre-forked worker processes; "auto" = CPU count',
        check=positive,
        aliases={"auto": lambda: os.cpu_count() or 1},
    )
    threads: int = setting(32, doc="worker threads per process in threading mode", check=positive)
    max_children: int = setting(64, doc="concurrent child processes per worker in forking mode", check=positive)
    max_requests: int = setting(
        0, doc="requests after which a worker is replaced gracefully; 0 = never", check=not_negative
    )
    max_requests_jitter: int = setting(
        0, doc="random 0..N added to max_requests per worker, so workers do not restart together", check=not_negative
    )
    worker_timeout: float = setting(
        30.0, doc="seconds without a heartbeat after which a worker is killed and replaced", check=positive
    )
    drain_delay: float | None = setting(
        None,
        doc="on SIGTERM, seconds `ready` answers 503 (and every response says Connection: close) while "
        "the listeners still accept, so a load balancer stops sending before they close; default 3 when "
        "a `ready` mount exists, else 0; SIGINT (Ctrl-C) and reloads do not wait",
        check=not_negative,
    )
    respawn_timeout: float = setting(
        60.0,
        doc="after start-up, seconds every worker may be down and unable to boot (retried with a growing "
        "delay) before the master stops with exit status 1",
        check=positive,
    )
    limits: Limits = setting(default_factory=Limits, doc="size limits")
    timeouts: Timeouts = setting(default_factory=Timeouts, doc="timeouts in seconds")
    log: LogSettings = setting(default_factory=LogSettings, doc="access and error logs")
    access: AccessRules = setting(default_factory=AccessRules, doc="who may connect, globally")
    trusted_proxies: tuple[CIDR, ...] = setting(
        default_factory=tuple,
        doc="addresses of the proxies in front of porch: only from them are `proxy_headers`, X-Request-ID "
        "and PROXY protocol headers believed",
    )
    proxy_headers: tuple[ProxyHeader, ...] = setting(
        ("x-forwarded-for", "x-forwarded-proto"),
        doc="which headers of a trusted proxy give the client's address, scheme, host and port: forwarded "
        "(RFC 7239), x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-forwarded-port",
    )
    server_header: str = setting("porch", doc="value of the Server response header; empty for none")
    request_id_header: bool = setting(
        False,
        doc="send each request's id (the one in the access and error logs, `porch.request_id` to WSGI, "
        "`REQUEST_ID` to CGI) back in an `X-Request-ID` response header",
    )
    metrics: bool = setting(
        True,
        doc="count requests, latencies, connections and scripts for the `status` and `metrics` mounts; "
        "false saves the counting (about a microsecond a request)",
    )
    pidfile: Path | None = setting(
        None,
        doc="file naming the master's pid, locked while it runs; required by --daemon, read by "
        "porch stop/reload/status/reopen/upgrade",
    )
    user: str | None = setting(
        None, doc="user (name or uid) the workers switch to after the master has bound the listeners", check=known_user
    )
    group: str | None = setting(
        None, doc="group (name or gid) of the workers; default the user's primary group", check=known_group
    )
    allow_root: bool = setting(
        False,
        doc="let workers run as root on network addresses when no `user` is set (loopback and "
        "unix listeners are always allowed)",
    )
    umask: str | None = setting(
        None,
        doc='file-creation mask in octal ("027"), set before logs, sockets and the pidfile are '
        "created; default inherited",
        check=octal_umask,
    )
    mounts: tuple[Mount, ...] = setting(default_factory=tuple, doc="handlers by path prefix; longest match wins")
    source: Path | None = setting(None, doc="the file this config was read from (set by the loader)", internal=True)
    warnings: tuple[ConfigProblem, ...] = setting(
        default_factory=tuple, doc="things that work but are probably not meant (set by the loader)", internal=True
    )

    @property
    def drain_seconds(self) -> float:
        """``drain_delay`` as it applies: unset, a few seconds when a ``ready`` probe can tell a
        balancer the instance is leaving, else none (nothing could see it)."""
        if self.drain_delay is not None:
            return self.drain_delay
        return DEFAULT_DRAIN_DELAY if any(mount.type == "ready" for mount in self.mounts) else 0.0
