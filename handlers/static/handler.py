"""Static files: safe path resolution, validators and 304s, byte ranges, precompressed variants.

How this works::

    path_info ─reject (404): NUL, "\\", "." or ".." segments (also in the target as sent,
              should the parser have resolved them), %2F / %5C in the raw path,
              hidden segments (".name") unless dotfiles       (porch.handlers.paths.Root.check)
      → locate under the root, never "cleaning" the path: one lstat per segment below the
        (start-up resolved) root; a symlink is resolved with os.path.realpath and must land
        inside the root unless follow_symlinks (then a single os.stat does it all); only
        regular files and directories are served                 (Root.locate, Root.entry)
      → method: GET/HEAD are served, OPTIONS answers 204 with Allow, anything else 405
      → directory: 301 to add the slash, else the first index file, else a listing or 403
      → file: the ".gz" variant when the client accepts gzip → ETag/Last-Modified
        → preconditions in RFC 9110 section 13.2.2 order (412 / 304)
        → Range (206 single part, multipart/byteranges, 416) → a FileRegion the connection
          sends with sendfile; HEAD gets the headers and never opens the file

The handler keeps no per-request state on the instance, so one instance serves every thread.
The MIME table is built once, from a private ``mimetypes.MimeTypes`` (the global one is never
touched), into a plain dict from extension to the full Content-Type value.
"""

from __future__ import annotations

import html
import logging
import mimetypes
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote

from porch.handlers.base import Handler, HandlerContext, OptionError
from porch.handlers.paths import Root, refusal
from porch.handlers.static.cache import SmallFiles
from porch.handlers.static.options import StaticOptions
from porch.http.dates import format_http_date, parse_http_date
from porch.http.errors import (
    Forbidden,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
    RangeNotSatisfiable,
)
from porch.http.grammar import TOKEN, accepts_coding
from porch.http.messages import FileRegion, Headers, Request, Response

if TYPE_CHECKING:
    from porch.config.settings import Mount

logger = logging.getLogger(__name__)

ALLOWED_METHODS = ("GET", "HEAD", "OPTIONS")
ALLOW = ", ".join(ALLOWED_METHODS)
DEFAULT_TYPE = "application/octet-stream"
MAX_RANGES = 16  # more parts than this (after coalescing) and the whole file is sent instead
RANGE_MERGE_GAP_BYTES = 80  # about the overhead of one multipart part header (RFC 9110 14.2)
READ_CHUNK_BYTES = 65536

# Modern types, so every Python version answers the same (3.11 still says
# application/javascript; RFC 9239 section 6 makes text/javascript the one to use).
MODERN_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".md": "text/markdown",
    ".webmanifest": "application/manifest+json",
}
# A compressed file requested by its own name is a gzip (etc.) document, not a text file with
# Content-Encoding: mimetypes only knows these as encodings, so give them their own types.
ARCHIVE_TYPES = {
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".bz2": "application/x-bzip2",
    ".xz": "application/x-xz",
    ".zst": "application/zstd",
}
CHARSET_TYPES = frozenset(
    {
        "application/javascript",
        "application/json",
        "application/xml",
        "application/x-javascript",
        "application/ecmascript",
    }
)
# Fields the file path reads, gathered in one pass over the request headers.
FILE_FIELDS = frozenset(
    {"if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "range", "if-range", "accept-encoding"}
)

_T = TOKEN.pattern  # RFC 9110 8.3.1: media-type = type "/" subtype parameters
MEDIA_TYPE = re.compile(rf"{_T}/{_T}(?:[ \t]*;[ \t]*{_T}=(?:{_T}|\"[^\"\x00-\x1f]*\"))*")
ENTITY_TAG = re.compile(r'(W/)?("[^"]*")')  # RFC 9110 section 8.8.3
BYTE_RANGE = re.compile(r"([0-9]{1,19})?-([0-9]{1,19})?")  # RFC 9110 section 14.1.1


class StaticHandler(Handler):
    """Serves the files below ``root``; see the module docstring for the order of decisions."""

    Options = StaticOptions

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, context)
        options: StaticOptions = self.options
        if not os.path.isdir(options.root):
            raise OptionError("root", f"directory '{options.root}' does not exist")
        self.root = Root(
            options.root,
            follow_symlinks=options.follow_symlinks,
            dotfiles=options.dotfiles,
            well_known=mount.path.rstrip("/") == "",
        )  # RFC 8615 names the origin's root
        for name in options.index:
            if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
                raise OptionError("index", f"{name!r} is not a plain file name")
            if name.startswith(".") and not options.dotfiles:
                raise OptionError("index", f"{name!r} is hidden; set dotfiles: true to use it")
        if options.charset and not TOKEN.fullmatch(options.charset):
            raise OptionError("charset", f"{options.charset!r} is not a charset name")
        if options.cache_control is not None and not options.cache_control.isprintable():
            raise OptionError("cache_control", "must not contain control characters")
        self.types = self.content_types(options.mime_types, options.charset)
        self.cache_headers = [("Cache-Control", options.cache_control)] if options.cache_control else []
        self.small_files = SmallFiles()
        # O_NONBLOCK: never hang on a FIFO swapped in after the stat.
        self.open_flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
        if not options.follow_symlinks:
            self.open_flags |= getattr(os, "O_NOFOLLOW", 0)

    @staticmethod
    def content_types(overrides: dict[str, str], charset: str) -> dict[str, str]:
        """Extension → full Content-Type value, from a private MimeTypes plus overrides."""
        table = mimetypes.MimeTypes()
        for ext, mime in (*MODERN_TYPES.items(), *ARCHIVE_TYPES.items()):
            table.add_type(mime, ext)
        for ext, mime in overrides.items():
            if not ext.startswith(".") or "/" in ext or len(ext) < 2:
                raise OptionError("mime_types", f"{ext!r} is not an extension such as '.md'")
            if not MEDIA_TYPE.fullmatch(mime):
                raise OptionError("mime_types", f"{mime!r} is not a media type such as 'text/plain'")
            table.add_type(mime, ext.lower())
        merged = {**table.types_map[False], **table.types_map[True]}
        return {ext: with_charset(mime, charset) for ext, mime in merged.items()}

    # -- the request --------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        path_info = self.path_info(request)
        root = self.root
        root.check(request, path_info)
        try:
            path, info = root.locate(path_info)
        except (OSError, ValueError) as error:
            raise refusal(error) from None
        is_file = stat.S_ISREG(info.st_mode)
        if (not is_file and not stat.S_ISDIR(info.st_mode)) or (is_file and path_info.endswith("/")):
            raise NotFound()  # FIFOs, sockets, devices are never opened; "file/" names nothing
        method = request.method
        if method != "GET" and method != "HEAD":
            if method == "OPTIONS":
                return Response(HTTPStatus.NO_CONTENT, Headers([("Allow", ALLOW)]))
            raise MethodNotAllowed(ALLOWED_METHODS)
        if is_file:
            return self.serve_file(request, path, info, path_info[path_info.rfind("/") + 1 :])
        if not path_info.endswith("/"):
            # RFC 9110 section 15.4.2; the raw path keeps the client's encoding.
            location = "/" + request.raw_path.lstrip("/") + "/"  # never "//host/": no open redirect
            if request.query:
                location += "?" + request.query
            headers = Headers([("Location", location), ("Content-Type", "text/html; charset=utf-8")])
            body = f'<a href="{html.escape(location)}">moved here</a>\n'.encode()
            return Response(HTTPStatus.MOVED_PERMANENTLY, headers, body)
        for name in self.options.index:
            try:
                index_path, index_info = root.entry(path.rstrip("/") + "/" + name)
            except (OSError, ValueError, HTTPError):
                continue
            if stat.S_ISREG(index_info.st_mode):
                return self.serve_file(request, index_path, index_info, name)
        if self.options.listing:
            return self.listing(request, path, path_info)
        raise Forbidden("directory listing is disabled")

    def content_type(self, name: str) -> str:
        ext = os.path.splitext(name)[1]
        return self.types.get(ext) or self.types.get(ext.lower()) or DEFAULT_TYPE

    # -- files ----------------------------------------------------------------------------------

    def serve_file(self, request: Request, path: str, info: os.stat_result, name: str) -> Response:
        """200/206/304 for one regular file (or its .gz variant)."""
        fields: dict[str, str] = {}
        for field_name, value in request.headers:
            key = field_name.lower()
            if key in FILE_FIELDS:
                fields[key] = fields[key] + ", " + value if key in fields else value
        content_type = self.content_type(name)
        extra = self.cache_headers
        if self.options.precompressed:
            sibling = self.small_files.sibling(path, lambda: self.gz_sibling(path))
            if sibling is not None:
                gz_path, gz_info = sibling
                extra = [*extra, ("Vary", "Accept-Encoding")]
                if accepts_coding(fields.get("accept-encoding"), "gzip"):
                    path, info = gz_path, gz_info
                    extra.append(("Content-Encoding", "gzip"))
        size = info.st_size
        modified = min(info.st_mtime_ns // 1_000_000_000, int(time.time()))  # RFC 9110 8.8.2.1
        last_modified = format_http_date(modified)
        etag = f'"{size:x}-{info.st_mtime_ns:x}-{info.st_ino:x}"'
        if self.not_modified(fields, etag, modified, last_modified):
            headers = [("ETag", etag), ("Last-Modified", last_modified), *extra]
            return Response(HTTPStatus.NOT_MODIFIED, Headers(headers))
        headers = [
            ("Content-Type", content_type),
            ("Last-Modified", last_modified),
            ("ETag", etag),
            ("Accept-Ranges", "bytes"),
            ("X-Content-Type-Options", "nosniff"),
            *extra,
        ]
        if request.method == "HEAD":  # RFC 9110 section 14.2: Range is defined for GET only
            headers.append(("Content-Length", str(size)))
            return Response(HTTPStatus.OK, Headers(headers), b"")
        ranges = None
        if "range" in fields and if_range_holds(fields.get("if-range"), etag, modified):
            ranges = byte_ranges(fields["range"], size)
            if ranges is not None and not ranges:
                raise RangeNotSatisfiable(size)
        if not ranges or len(ranges) > MAX_RANGES:
            data = self.small_files.content(path, info, lambda: self.read(path, size))
            if data is not None:
                return Response(HTTPStatus.OK, Headers(headers), data)
            return Response(HTTPStatus.OK, Headers(headers), FileRegion(self.open(path), 0, size))
        file = self.open(path)
        if len(ranges) == 1:
            start, end = ranges[0]
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            return Response(HTTPStatus.PARTIAL_CONTENT, Headers(headers), FileRegion(file, start, end - start + 1))
        body = MultipartRanges(file, ranges, size, content_type)
        headers[0] = ("Content-Type", f"multipart/byteranges; boundary={body.boundary}")
        headers.append(("Content-Length", str(body.length)))
        return Response(HTTPStatus.PARTIAL_CONTENT, Headers(headers), body)

    def not_modified(self, fields: dict[str, str], etag: str, modified: int, last_modified: str) -> bool:
        """Evaluate the preconditions in RFC 9110 section 13.2.2 order; True means 304."""
        if_match = fields.get("if-match")
        if if_match is not None:
            if not etag_in(if_match, etag, weak=False):  # step 1: strong comparison
                raise PreconditionFailed("the resource does not match If-Match")
        elif "if-unmodified-since" in fields:  # step 2
            date = parse_http_date(fields["if-unmodified-since"])
            if date is not None and modified > date:
                raise PreconditionFailed("the resource was modified since If-Unmodified-Since")
        if_none_match = fields.get("if-none-match")
        if if_none_match is not None:  # step 3 (weak comparison); it wins over If-Modified-Since
            return etag_in(if_none_match, etag, weak=True)
        since = fields.get("if-modified-since")
        if since is None:  # step 4
            return False
        if since == last_modified:
            return True
        date = parse_http_date(since)
        return date is not None and modified <= date

    def gz_sibling(self, path: str) -> tuple[str, os.stat_result] | None:
        """The regular file ``path``.gz (resolved as a request for it would be), or None."""
        try:
            gz_path, gz_info = self.root.entry(path + ".gz")
        except (OSError, ValueError, HTTPError):
            return None
        return (gz_path, gz_info) if stat.S_ISREG(gz_info.st_mode) else None

    def read(self, path: str, size: int) -> bytes:
        """The first ``size`` bytes of a small file, opened as ``open`` does."""
        with self.open(path) as file:
            return os.pread(file.fileno(), size, 0)

    def open(self, path: str) -> BinaryIO:
        """Open for sendfile; a file gone (or swapped for a link) since the stat is a 404."""
        try:
            fd = os.open(path, self.open_flags)
        except (OSError, ValueError) as error:
            raise refusal(error) from None
        try:  # from a descriptor, FileIO skips the extra set-inheritable call an opener costs
            return open(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise

    # -- directories ----------------------------------------------------------------------------

    def listing(self, request: Request, path: str, path_info: str) -> Response:
        """An HTML index: directories first, then files, by name; hidden names unless dotfiles."""
        rows: list[tuple[bool, str, int, float]] = []
        try:
            entries = list(os.scandir(path))
        except OSError as error:
            raise refusal(error) from None
        for entry in entries:
            if entry.name.startswith(".") and not self.root.dotfiles:
                continue
            try:
                _, info = self.root.entry(entry.path)
            except (OSError, ValueError, HTTPError):
                continue  # vanished, unreadable, or a link out of the root
            if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
                rows.append((stat.S_ISDIR(info.st_mode), entry.name, info.st_size, info.st_mtime))
        rows.sort(key=lambda row: (not row[0], row[1].casefold(), row[1]))
        title = html.escape(f"Index of {readable(request.path)}")
        lines = [
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{title}</title><style>body{{font:15px/1.5 system-ui,sans-serif;margin:2em}}"
            "table{border-collapse:collapse}td,th{padding:.15em 1.2em .15em 0;text-align:left}"
            "td.n{text-align:right;font-variant-numeric:tabular-nums}a{text-decoration:none}</style>"
            f"</head><body><h1>{title}</h1><table><tr><th>Name</th><th>Size</th><th>Modified (UTC)</th></tr>",
        ]
        if path_info != "/":
            lines.append('<tr><td><a href="../">../</a></td><td class="n">-</td><td></td></tr>')
        for is_dir, name, size, mtime in rows:
            slash = "/" if is_dir else ""
            href = html.escape(quote(os.fsencode(name)) + slash)
            shown = html.escape(readable(name) + slash)
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(mtime))
            amount = "-" if is_dir else f'<span title="{size} bytes">{human_size(size)}</span>'
            lines.append(f'<tr><td><a href="{href}">{shown}</a></td><td class="n">{amount}</td><td>{when}</td></tr>')
        lines.append("</table></body></html>\n")
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("X-Content-Type-Options", "nosniff"),
            *self.cache_headers,
        ]
        return Response(HTTPStatus.OK, Headers(headers), "\n".join(lines).encode("utf-8"))


class MultipartRanges:
    """A multipart/byteranges body (RFC 9110 section 14.6) read with pread; closes the file."""

    def __init__(self, file: BinaryIO, ranges: list[tuple[int, int]], size: int, content_type: str) -> None:
        self.file = file
        self.boundary = secrets.token_hex(16)
        self.parts: list[tuple[bytes, int, int]] = []
        for number, (start, end) in enumerate(ranges):
            head = (
                f"{'' if number == 0 else chr(13) + chr(10)}--{self.boundary}\r\n"
                f"Content-Type: {content_type}\r\nContent-Range: bytes {start}-{end}/{size}\r\n\r\n"
            )
            self.parts.append((head.encode("latin-1"), start, end - start + 1))
        self.closing = f"\r\n--{self.boundary}--\r\n".encode("latin-1")
        self.length = sum(len(head) + length for head, _, length in self.parts) + len(self.closing)

    def __iter__(self) -> Iterator[bytes]:
        fd = self.file.fileno()
        for head, offset, remaining in self.parts:
            yield head
            while remaining > 0:
                chunk = os.pread(fd, min(remaining, READ_CHUNK_BYTES), offset)
                if not chunk:
                    return  # the file shrank: the connection sees the short body and closes
                yield chunk
                offset += len(chunk)
                remaining -= len(chunk)
        yield self.closing

    def close(self) -> None:
        self.file.close()


# -- pure functions ---------------------------------------------------------------------------


def with_charset(mime: str, charset: str) -> str:
    """``mime`` with ``; charset=`` added for textual types that have no parameters yet."""
    if not charset or ";" in mime:
        return mime
    base = mime.lower()
    if (
        base.startswith("text/")
        or base in CHARSET_TYPES
        or (base.startswith("application/") and (base.endswith("+json") or base.endswith("+xml")))
    ):
        return f"{mime}; charset={charset}"
    return mime


def etag_in(field_value: str, etag: str, weak: bool) -> bool:
    """Whether ``etag`` (strong) is in an If-Match / If-None-Match list (RFC 9110 8.8.3.2)."""
    if field_value == etag or field_value.strip() == "*":
        return True
    return any(match.group(2) == etag and (weak or not match.group(1)) for match in ENTITY_TAG.finditer(field_value))


def if_range_holds(value: str | None, etag: str, modified: int) -> bool:
    """RFC 9110 13.1.5: no If-Range, or a strong match of the ETag or the exact date."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False  # a weak tag never matches for ranges
    return parse_http_date(value) == modified


def byte_ranges(value: str, size: int) -> list[tuple[int, int]] | None:
    """Inclusive (first, last) pairs, sorted and coalesced; [] when none is satisfiable.

    None means "ignore the header" (RFC 9110 14.2): another unit, or a syntax error,
    including last < first (14.1.1).
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges: list[tuple[int, int]] = []
    seen = False
    for part in spec.split(","):
        part = part.strip(" \t")
        if not part:
            continue  # RFC 9110 section 5.6.1: empty list elements do not count
        match = BYTE_RANGE.fullmatch(part)
        if match is None or (match.group(1) is None and match.group(2) is None):
            return None
        seen = True
        first, last = match.group(1), match.group(2)
        if first is None:
            suffix = int(last)
            if suffix > 0 and size > 0:
                ranges.append((max(0, size - suffix), size - 1))
            continue
        start = int(first)
        end = int(last) if last is not None else size - 1
        if end < start and last is not None:
            return None
        if start < size:
            ranges.append((start, min(end, size - 1)))
    if not seen:
        return None
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1] + 1 + RANGE_MERGE_GAP_BYTES:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def readable(text: str) -> str:
    """A decoded path or name as valid text (undecodable bytes become U+FFFD)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def human_size(size: int) -> str:
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{size} B"
