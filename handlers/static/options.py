"""The options of a ``type: static`` mount, in a module of their own: the config loader reads
their declared types, which the compiled build keeps only for interpreted classes (this module is
never compiled; the handler is)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from porch.config.settings import existing_directory, setting


@dataclass(frozen=True)
class StaticOptions:
    """The options of a ``type: static`` mount."""

    root: Path = setting(doc="directory served; resolved once at start-up", check=existing_directory)
    index: tuple[str, ...] = setting(("index.html",), doc="file names tried, in order, for a directory URL")
    listing: bool = setting(False, doc="list directories without an index file (else 403)")
    follow_symlinks: bool = setting(False, doc="serve symlinks that point outside the root")
    dotfiles: bool = setting(
        False,
        doc="serve hidden names (a path segment starting with '.'); else 404, except /.well-known at the site root",
    )
    mime_types: dict[str, str] = setting(
        default_factory=dict, doc='extension → Content-Type overrides, e.g. {".md": "text/markdown"}'
    )
    cache_control: str | None = setting(
        None, doc='Cache-Control sent with files, 304s and listings, e.g. "public, max-age=3600"'
    )
    precompressed: bool = setting(True, doc='serve "FILE.gz" with Content-Encoding: gzip to clients that accept gzip')
    charset: str = setting("utf-8", doc='charset added to text/*, JavaScript, JSON and XML types; "" for none')
