"""The document tree the static handler tests serve, and a secret next to it that must never leak.

``make_tree(base)`` creates ``base/root`` (the document root) and ``base/outside/secret.txt``
(reachable only by escaping the root) and returns a ``Tree`` naming both.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

SECRET = b"TOP-SECRET-7f3a9c-NEVER-SERVE-ME"
HIDDEN = b"hidden-dotfile-content-51e2"
HELLO = b"hello, static world\n"
PAGE = b"<!DOCTYPE html><title>page</title><p>" + b"compress me " * 200 + b"</p>\n"
DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable modulo 256
BIG_BYTES = 10 * 1024 * 1024
OLD_MTIME = 1_000_000_000  # 2001-09-09T01:46:40Z


@dataclass(frozen=True)
class Tree:
    root: Path
    outside: Path
    big: Path | None


def make_tree(base: Path, big: bool = False) -> Tree:
    """Every kind of entry the tests need: files, index, listing names, links, a FIFO, dotfiles."""
    root, outside = base / "root", base / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (root / "index.html").write_bytes(b"<!DOCTYPE html><title>home</title><h1>home page</h1>\n")
    (root / "hello.txt").write_bytes(HELLO)
    (root / "data.bin").write_bytes(DATA)
    (root / "empty.txt").write_bytes(b"")
    (root / "notes.md").write_bytes(b"# notes\n")
    (root / "script.js").write_bytes(b"console.log('hi');\n")
    (root / "style.css").write_bytes(b"body { color: black }\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "unknown.zzqx").write_bytes(b"what am I\n")
    (root / "archive.tar.gz").write_bytes(gzip.compress(b"not really a tar"))
    (root / "page.html").write_bytes(PAGE)
    (root / "page.html.gz").write_bytes(gzip.compress(PAGE))
    (root / "old.txt").write_bytes(b"old file\n")
    os.utime(root / "old.txt", (OLD_MTIME, OLD_MTIME))
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"<h1>sub index</h1>\n")
    (root / "sub" / "deeper").mkdir()
    (root / "sub" / "deeper" / "leaf.txt").write_bytes(b"leaf\n")
    listed = root / "list"
    listed.mkdir()
    (listed / "<script>.txt").write_bytes(b"script name\n")
    (listed / "a&b.txt").write_bytes(b"ampersand\n")
    (listed / "z last.txt").write_bytes(b"z\n")
    (listed / "B-upper.txt").write_bytes(b"B\n")
    (listed / "adir").mkdir()
    (listed / "zdir").mkdir()
    (listed / ".hidden").write_bytes(HIDDEN)
    (listed / "link-out").symlink_to(outside / "secret.txt")
    (root / "empty-dir").mkdir()
    (root / ".secret").write_bytes(HIDDEN)
    (root / ".hiddendir").mkdir()
    (root / ".hiddendir" / "file.txt").write_bytes(HIDDEN)
    (root / ".well-known").mkdir()
    (root / ".well-known" / "acme.txt").write_bytes(b"challenge-token\n")
    (root / "link-in").symlink_to("hello.txt")
    (root / "dirlink-in").symlink_to("sub")
    (root / "link-out").symlink_to(outside / "secret.txt")
    (root / "rel-link-out").symlink_to("../outside/secret.txt")
    (root / "dirlink-out").symlink_to(outside)
    (root / "link-hidden").symlink_to(".secret")
    (root / "dangling").symlink_to("does-not-exist")
    os.mkfifo(root / "fifo")
    (root / "pct%2e%2e").write_bytes(b"a file literally named pct%2e%2e\n")
    big_path = None
    if big:
        big_path = root / "big.bin"
        with open(big_path, "wb") as out:
            out.write(os.urandom(BIG_BYTES))
    return Tree(root, outside, big_path)
