"""The options of a ``type: cgi`` mount, in a module of their own: the config loader reads their
declared types, which the compiled build keeps only for interpreted classes (this module is never
compiled; the handler is)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from porch.config.settings import existing_directory, existing_file, positive, setting


@dataclass(frozen=True)
class CGIOptions:
    """Options of a ``cgi`` mount."""

    root: Path | None = setting(
        None, doc="directory of scripts served below the mount path (give root or script)", check=existing_directory
    )
    script: Path | None = setting(
        None, doc="one program answering everything below the mount path, which becomes PATH_INFO", check=existing_file
    )
    extensions: tuple[str, ...] = setting(
        (),
        doc='with root: run only files with these extensions (e.g. [".cgi"]) and serve the other files as static files',
    )
    interpreters: dict[str, str] = setting(
        default_factory=dict,
        doc="program per file extension, e.g. {.py: python3, .pl: perl}; such scripts need no executable bit",
    )
    env: dict[str, str] = setting(default_factory=dict, doc="extra environment variables for every script")
    pass_env: tuple[str, ...] = setting((), doc="names of the server's own environment variables passed to scripts")
    pass_auth: bool = setting(
        False, doc="pass Authorization and Proxy-Authorization as HTTP_* variables (RFC 3875 4.1.18)"
    )
    document_root: Path | None = setting(
        None,
        doc="DOCUMENT_ROOT, onto which PATH_TRANSLATED maps PATH_INFO; default: root "
        "(the script's directory for a single-script mount)",
        check=existing_directory,
    )
    timeout: float = setting(
        60.0, doc="seconds a script may run in all; then it is killed (504 if nothing was sent yet)", check=positive
    )
    max_concurrent: int | None = setting(
        None,
        doc="scripts of this mount running at once per worker process (its forked connection "
        "children included); beyond: 503 with Retry-After",
        check=positive,
    )
    cpu_seconds: int | None = setting(None, doc="CPU-time limit per script (RLIMIT_CPU)", check=positive)
    address_space: int | None = setting(None, doc="address-space limit per script in bytes (RLIMIT_AS)", check=positive)
    open_files: int | None = setting(None, doc="open-file limit per script (RLIMIT_NOFILE)", check=positive)
    max_header_bytes: int = setting(
        65536, doc="largest CGI header block a script may write (larger: 502)", check=positive
    )
    follow_symlinks: bool = setting(
        False, doc="follow symbolic links that lead out of root (links inside it are always followed)"
    )
