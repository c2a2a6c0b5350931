"""The static handler called directly: fine-grained cases and the pure functions.

``serve()`` builds a ``Request`` the way the connection does, calls ``handle()`` and turns a
raised ``HTTPError`` into the response the pipeline would send, so each test states one rule.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from static_tree import DATA, HELLO, HIDDEN, OLD_MTIME, PAGE, SECRET, Tree, make_tree

from porch.config.settings import Mount
from porch.handlers.base import HandlerContext, OptionError
from porch.handlers.static.handler import (
    MAX_RANGES,
    MultipartRanges,
    StaticHandler,
    byte_ranges,
    etag_in,
    with_charset,
)
from porch.handlers.static.options import StaticOptions
from porch.http.errors import HTTPError
from porch.http.messages import FileRegion, Headers, Request, Response


class NoBody:
    length: int | None = 0
    limit: int | None = None
    done = True
    trailers = Headers()

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return make_tree(tmp_path_factory.mktemp("static-unit"))


def handler(root: Path, mount: str = "/", **options: Any) -> StaticHandler:
    return StaticHandler(
        Mount(path=mount, type="static", options=StaticOptions(root=root, **options)), HandlerContext()
    )


def request(target: str, method: str = "GET", headers: dict[str, str] | None = None) -> Request:
    raw_path, _, query = target.partition("?")
    return Request(
        method=method,
        target=target,
        raw_path=raw_path,
        path=unquote(raw_path, errors="surrogateescape"),
        query=query,
        version="HTTP/1.1",
        headers=Headers(list((headers or {}).items())),
        body=NoBody(),
        client=("127.0.0.1", 40000),
        server=("127.0.0.1", 8000),
    )


def serve(h: StaticHandler, target: str, method: str = "GET", **headers: str) -> tuple[Response, bytes]:
    """The response and its body bytes, the file (if any) read and closed like the connection does."""
    fields = {name.replace("_", "-"): value for name, value in headers.items()}
    try:
        response = h.handle(request(target, method, fields))
    except HTTPError as error:
        return Response(int(error.status), Headers(error.headers)), error.body()
    body = response.body
    if isinstance(body, FileRegion):
        with body.file:
            body.file.seek(body.offset)
            return response, body.file.read(body.length)
    if isinstance(body, (bytes, bytearray)):
        return response, bytes(body)
    try:
        return response, b"".join(body)
    finally:
        body.close()  # type: ignore[attr-defined]


class TestFiles:
    def test_file_with_validators(self, tree: Tree) -> None:
        response, body = serve(handler(tree.root), "/hello.txt")
        assert response.status == 200 and body == HELLO
        headers = response.headers
        assert headers.get("Content-Type") == "text/plain; charset=utf-8"
        assert headers.get("Accept-Ranges") == "bytes"
        assert headers.get("X-Content-Type-Options") == "nosniff"
        info = os.stat(tree.root / "hello.txt")
        assert headers.get("ETag") == f'"{info.st_size:x}-{info.st_mtime_ns:x}-{info.st_ino:x}"'
        assert headers.get("Last-Modified") == formatdate(int(info.st_mtime), usegmt=True)
        assert "Cache-Control" not in headers and "Vary" not in headers

    def test_small_files_are_bytes_kept_in_memory(self, tree: Tree) -> None:
        files = handler(tree.root)
        first = files.handle(request("/data.bin")).body
        assert first == DATA
        assert files.handle(request("/data.bin")).body is first  # not read again

    def test_bigger_files_are_a_file_region_for_sendfile(self, tmp_path: Path) -> None:
        (tmp_path / "big.bin").write_bytes(DATA * 40)  # 40 KiB: above what is kept in memory
        response = handler(tmp_path).handle(request("/big.bin"))
        assert isinstance(response.body, FileRegion)
        assert (response.body.offset, response.body.length) == (0, len(DATA) * 40)
        response.body.file.close()

    def test_head_never_opens_the_file_and_declares_the_length(self, tree: Tree) -> None:
        response, body = serve(handler(tree.root), "/data.bin", "HEAD")
        assert response.status == 200 and body == b""
        assert response.headers.get("Content-Length") == str(len(DATA))

    def test_empty_file(self, tree: Tree) -> None:
        response, body = serve(handler(tree.root), "/empty.txt")
        assert response.status == 200 and body == b""
        assert response.body == b""

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("notes.md", "text/markdown; charset=utf-8"),
            ("script.js", "text/javascript; charset=utf-8"),
            ("style.css", "text/css; charset=utf-8"),
            ("image.png", "image/png"),
            ("unknown.zzqx", "application/octet-stream"),
            ("archive.tar.gz", "application/gzip"),
            ("index.html", "text/html; charset=utf-8"),
        ],
    )
    def test_content_types(self, tree: Tree, name: str, expected: str) -> None:
        response, _ = serve(handler(tree.root), "/" + name)
        assert response.headers.get("Content-Type") == expected

    def test_overrides_and_charset(self, tree: Tree) -> None:
        h = handler(
            tree.root,
            mime_types={".md": "text/x-notes", ".ZZQX": "application/json", ".png": "image/x-test; q=1"},
            charset="iso-8859-1",
        )
        assert serve(h, "/notes.md")[0].headers.get("Content-Type") == "text/x-notes; charset=iso-8859-1"
        assert serve(h, "/unknown.zzqx")[0].headers.get("Content-Type") == "application/json; charset=iso-8859-1"
        assert serve(h, "/image.png")[0].headers.get("Content-Type") == "image/x-test; q=1"
        plain = handler(tree.root, charset="")
        assert serve(plain, "/hello.txt")[0].headers.get("Content-Type") == "text/plain"

    def test_private_mime_table(self, tree: Tree) -> None:
        import mimetypes

        handler(tree.root, mime_types={".zzqx": "application/x-private"})
        assert mimetypes.guess_type("file.zzqx")[0] is None

    def test_cache_control(self, tree: Tree) -> None:
        h = handler(tree.root, cache_control="public, max-age=60")
        assert serve(h, "/hello.txt")[0].headers.get("Cache-Control") == "public, max-age=60"

    def test_file_with_trailing_slash_is_not_found(self, tree: Tree) -> None:
        assert serve(handler(tree.root), "/hello.txt/")[0].status == 404

    def test_vanished_between_stat_and_open(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "gone.txt").write_bytes(b"x")
        h = handler(tmp_path)
        real_open = os.open

        def vanishing_open(path: str, flags: int, *args: Any) -> int:
            """os.open, after deleting the file the handler has just found by stat."""
            if path.endswith("gone.txt"):
                os.unlink(path)
            return real_open(path, flags, *args)

        monkeypatch.setattr(os, "open", vanishing_open)
        assert serve(h, "/gone.txt")[0].status == 404

    def test_unreadable_file_is_forbidden(self, tmp_path: Path) -> None:
        if os.geteuid() == 0:
            pytest.skip("root reads every file")
        (tmp_path / "locked.txt").write_bytes(b"x")
        (tmp_path / "locked.txt").chmod(0)
        assert serve(handler(tmp_path), "/locked.txt")[0].status == 403


class TestMethods:
    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
    def test_other_methods_on_a_file_or_directory(self, tree: Tree, method: str) -> None:
        for target in ("/hello.txt", "/sub/", "/sub"):
            response, _ = serve(handler(tree.root), target, method)
            assert response.status == 405
            assert response.headers.get("Allow") == "GET, HEAD, OPTIONS"

    def test_missing_path_is_404_whatever_the_method(self, tree: Tree) -> None:
        for method in ("GET", "POST", "PUT", "OPTIONS"):
            assert serve(handler(tree.root), "/nope.txt", method)[0].status == 404

    def test_options(self, tree: Tree) -> None:
        response, body = serve(handler(tree.root), "/hello.txt", "OPTIONS")
        assert response.status == 204 and body == b""
        assert response.headers.get("Allow") == "GET, HEAD, OPTIONS"


class TestDirectories:
    def test_index(self, tree: Tree) -> None:
        response, body = serve(handler(tree.root), "/")
        assert response.status == 200 and b"home page" in body
        assert response.headers.get("Content-Type") == "text/html; charset=utf-8"

    def test_index_order(self, tree: Tree) -> None:
        h = handler(tree.root, index=("missing.html", "hello.txt"))
        response, body = serve(h, "/")
        assert body == HELLO and response.headers.get("Content-Type") == "text/plain; charset=utf-8"

    def test_redirect_keeps_query_and_encoding(self, tree: Tree) -> None:
        response, _ = serve(handler(tree.root), "/s%75b?x=1&y=%20")
        assert response.status == 301
        assert response.headers.get("Location") == "/s%75b/?x=1&y=%20"

    def test_redirect_never_leaves_the_origin(self, tree: Tree) -> None:
        response, _ = serve(handler(tree.root), "//sub")
        assert response.status == 301 and response.headers.get("Location") == "/sub/"

    def test_mount_root_without_slash(self, tree: Tree) -> None:
        h = handler(tree.root, mount="/files")
        response, _ = serve(h, "/files")
        assert response.status == 301 and response.headers.get("Location") == "/files/"
        assert serve(h, "/files/hello.txt")[1] == HELLO

    def test_no_index_no_listing_is_forbidden(self, tree: Tree) -> None:
        assert serve(handler(tree.root), "/list/")[0].status == 403

    def test_listing_escapes_sorts_and_hides(self, tree: Tree) -> None:
        response, body = serve(handler(tree.root, listing=True), "/list/")
        assert response.status == 200
        assert response.headers.get("Content-Type") == "text/html; charset=utf-8"
        text = body.decode()
        assert "<script>" not in text
        assert '<a href="%3Cscript%3E.txt">&lt;script&gt;.txt</a>' in text
        assert '<a href="a%26b.txt">a&amp;b.txt</a>' in text
        assert '<a href="z%20last.txt">' in text
        assert ".hidden" not in text and "link-out" not in text
        assert '<a href="../">' in text
        order = [text.index(name) for name in ('"adir/"', '"zdir/"', '"a%26b.txt"', '"B-upper.txt"', '"z%20last.txt"')]
        assert order == sorted(order)

    def test_listing_of_the_mount_root_has_no_parent_link(self, tree: Tree) -> None:
        _, body = serve(handler(tree.root, listing=True, index=("none.html",)), "/")
        assert b'href="../"' not in body and b'href="sub/"' in body

    def test_listing_shows_dotfiles_when_allowed(self, tree: Tree) -> None:
        _, body = serve(handler(tree.root, listing=True, dotfiles=True), "/list/")
        assert b'href=".hidden"' in body

    def test_listing_of_non_utf8_names(self, tmp_path: Path) -> None:
        os.mkdir(os.fsencode(tmp_path) + b"/d")
        open(os.fsencode(tmp_path) + b"/d/caf\xe9.txt", "wb").close()
        _, body = serve(handler(tmp_path, listing=True), "/d/")
        assert b'href="caf%E9.txt"' in body and "caf\ufffd.txt".encode() in body
        response, _ = serve(handler(tmp_path), "/d/caf%E9.txt")
        assert response.status == 200


class TestSafety:
    @pytest.mark.parametrize(
        "target",
        [
            "/../outside/secret.txt",
            "/%2e%2e/outside/secret.txt",
            "/%2E%2e%2foutside/secret.txt",
            "/..%2foutside/secret.txt",
            "/sub%2F..%2F..%2Foutside/secret.txt",
            "/%5c..%5coutside/secret.txt",
            "/..\\outside\\secret.txt",
            "/%00/../outside/secret.txt",
            "/hello.txt%00.html",
            "/./hello.txt",
            "/sub/./index.html",
            "/sub/../hello.txt",
            "/sub/..",
            "/.",
            "/link-out",
            "/rel-link-out",
            "/dirlink-out/secret.txt",
            "/list/link-out",
            "/.secret",
            "/.hiddendir/file.txt",
            "/sub/.%2e/hello.txt",
            "/link-hidden",
            "/%252e%252e/outside/secret.txt",
            "/fifo",
            "/dangling",
            "*",
        ],
    )
    def test_refused(self, tree: Tree, target: str) -> None:
        for method in ("GET", "HEAD", "POST"):
            response, body = serve(handler(tree.root), target, method)
            assert response.status in (403, 404), (target, method, response.status)
            assert SECRET not in body and HIDDEN not in body

    @pytest.mark.parametrize(
        "target",
        [
            "/sub/../hello.txt",
            "/./hello.txt",
            "http://a/x/../hello.txt",
            "/sub/%2e%2e/hello.txt?x=/./",
            "/sub/%2E%2e/hello.txt",
        ],
    )
    def test_dot_segments_resolved_by_the_parser_are_still_refused(self, tree: Tree, target: str) -> None:
        parsed = request(target)
        normalised = Request(
            **{
                **{field.name: getattr(parsed, field.name) for field in dataclasses.fields(Request)},
                "raw_path": "/hello.txt",
                "path": "/hello.txt",
            }
        )
        with pytest.raises(HTTPError) as raised:
            handler(tree.root).handle(normalised)
        assert raised.value.status == 404

    def test_dots_inside_names_and_queries_are_fine(self, tree: Tree) -> None:
        h = handler(tree.root)
        assert serve(h, "/hello.txt?next=/../x")[1] == HELLO
        assert serve(h, "/sub/deeper/leaf.txt?a=/.")[1] == b"leaf\n"

    def test_encoded_dots_are_a_plain_name(self, tree: Tree) -> None:
        assert serve(handler(tree.root), "/pct%252e%252e")[0].status == 200

    def test_symlinks_inside_the_root(self, tree: Tree) -> None:
        h = handler(tree.root)
        assert serve(h, "/link-in")[1] == HELLO
        assert serve(h, "/dirlink-in/deeper/leaf.txt")[1] == b"leaf\n"

    def test_follow_symlinks(self, tree: Tree) -> None:
        h = handler(tree.root, follow_symlinks=True)
        assert serve(h, "/link-out")[1] == SECRET
        assert serve(h, "/dirlink-out/secret.txt")[1] == SECRET
        assert serve(h, "/../outside/secret.txt")[0].status == 404
        assert serve(h, "/fifo")[0].status == 404

    def test_dotfiles(self, tree: Tree) -> None:
        h = handler(tree.root, dotfiles=True)
        assert serve(h, "/.secret")[1] == HIDDEN
        assert serve(h, "/.hiddendir/file.txt")[1] == HIDDEN
        assert serve(h, "/link-hidden")[1] == HIDDEN
        assert serve(h, "/../outside/secret.txt")[0].status == 404
        assert serve(h, "/./hello.txt")[0].status == 404

    def test_well_known_is_public_at_the_origin_root_only(self, tree: Tree) -> None:
        assert serve(handler(tree.root), "/.well-known/acme.txt")[1] == b"challenge-token\n"
        assert serve(handler(tree.root, mount="/files"), "/files/.well-known/acme.txt")[0].status == 404
        assert serve(handler(tree.root), "/sub/.well-known")[0].status == 404

    def test_root_that_is_a_symlink(self, tree: Tree, tmp_path: Path) -> None:
        (tmp_path / "www").symlink_to(tree.root)
        h = handler(tmp_path / "www")
        assert serve(h, "/hello.txt")[1] == HELLO
        assert serve(h, "/link-in")[1] == HELLO
        assert serve(h, "/link-out")[0].status == 404


class TestConditional:
    def validators(self, tree: Tree, target: str = "/hello.txt") -> tuple[str, str]:
        response, _ = serve(handler(tree.root), target)
        return response.headers.get("ETag") or "", response.headers.get("Last-Modified") or ""

    def test_if_none_match(self, tree: Tree) -> None:
        etag, last_modified = self.validators(tree)
        h = handler(tree.root, cache_control="no-cache")
        for value in (etag, f'"x", {etag}', f"W/{etag}", "*"):
            response, body = serve(h, "/hello.txt", if_none_match=value)
            assert response.status == 304 and body == b"", value
            assert response.headers.get("ETag") == etag
            assert response.headers.get("Last-Modified") == last_modified
            assert response.headers.get("Cache-Control") == "no-cache"
        assert serve(h, "/hello.txt", "HEAD", if_none_match=etag)[0].status == 304
        assert serve(h, "/hello.txt", if_none_match='"other"')[0].status == 200

    def test_if_none_match_wins_over_if_modified_since(self, tree: Tree) -> None:
        etag, last_modified = self.validators(tree)
        h = handler(tree.root)
        assert serve(h, "/hello.txt", if_none_match='"other"', if_modified_since=last_modified)[0].status == 200
        assert serve(h, "/hello.txt", if_none_match=etag, if_modified_since=formatdate(0, usegmt=True))[0].status == 304

    def test_if_modified_since(self, tree: Tree) -> None:
        h = handler(tree.root)
        assert serve(h, "/old.txt", if_modified_since=formatdate(OLD_MTIME, usegmt=True))[0].status == 304
        assert serve(h, "/old.txt", if_modified_since=formatdate(OLD_MTIME + 50, usegmt=True))[0].status == 304
        assert serve(h, "/old.txt", if_modified_since=formatdate(OLD_MTIME - 1, usegmt=True))[0].status == 200
        assert serve(h, "/old.txt", if_modified_since="Sunday, 09-Sep-01 01:46:40 GMT")[0].status == 304
        assert serve(h, "/old.txt", if_modified_since="not a date")[0].status == 200

    def test_if_match_and_if_unmodified_since(self, tree: Tree) -> None:
        etag, _ = self.validators(tree, "/old.txt")
        h = handler(tree.root)
        assert serve(h, "/old.txt", if_match='"nope"')[0].status == 412
        assert serve(h, "/old.txt", if_match=f"W/{etag}")[0].status == 412  # strong comparison
        assert serve(h, "/old.txt", if_match=f'"nope", {etag}')[0].status == 200
        assert serve(h, "/old.txt", if_match="*")[0].status == 200
        assert serve(h, "/old.txt", if_unmodified_since=formatdate(OLD_MTIME - 1, usegmt=True))[0].status == 412
        assert serve(h, "/old.txt", if_unmodified_since=formatdate(OLD_MTIME, usegmt=True))[0].status == 200
        # If-Match present: If-Unmodified-Since is not evaluated (RFC 9110 13.2.2 step 2).
        assert serve(h, "/old.txt", if_match=etag, if_unmodified_since=formatdate(0, usegmt=True))[0].status == 200

    def test_etag_changes_with_the_file(self, tmp_path: Path) -> None:
        target = tmp_path / "f.txt"
        target.write_bytes(b"one")
        h = handler(tmp_path)
        first = serve(h, "/f.txt")[0].headers.get("ETag")
        target.write_bytes(b"three")
        assert serve(h, "/f.txt", if_none_match=first or "")[0].status == 200


class TestRanges:
    @pytest.mark.parametrize(
        ("header", "start", "end"),
        [
            ("bytes=0-9", 0, 9),
            ("bytes=10-", 10, 1023),
            ("bytes=-16", 1008, 1023),
            ("bytes=1000-5000", 1000, 1023),
            ("bytes=-5000", 0, 1023),
            ("BYTES = 5-5", 5, 5),
            ("bytes=0-9, 5-20", 0, 20),
            ("bytes=0-0,1-1", 0, 1),
        ],
    )
    def test_single_range(self, tree: Tree, header: str, start: int, end: int) -> None:
        response, body = serve(handler(tree.root), "/data.bin", range=header)
        assert response.status == 206
        assert response.headers.get("Content-Range") == f"bytes {start}-{end}/1024"
        assert body == DATA[start : end + 1]

    @pytest.mark.parametrize("header", ["bytes=1024-", "bytes=5000-6000", "bytes=-0", "bytes=2000-,3000-"])
    def test_unsatisfiable(self, tree: Tree, header: str) -> None:
        response, _ = serve(handler(tree.root), "/data.bin", range=header)
        assert response.status == 416
        assert response.headers.get("Content-Range") == "bytes */1024"

    def test_any_range_of_an_empty_file_is_unsatisfiable(self, tree: Tree) -> None:
        response, _ = serve(handler(tree.root), "/empty.txt", range="bytes=0-")
        assert response.status == 416 and response.headers.get("Content-Range") == "bytes */0"

    @pytest.mark.parametrize(
        "header",
        [
            "bytes=9-1",
            "bytes=a-b",
            "bytes=",
            "lines=1-2",
            "bytes=1-2-3",
            "bytes 0-1",
            "bytes=--1",
            "bytes=0-1,x",
            "bytes=\u00b9-2",
        ],
    )
    def test_malformed_is_ignored(self, tree: Tree, header: str) -> None:
        response, body = serve(handler(tree.root), "/data.bin", range=header)
        assert response.status == 200 and body == DATA

    def test_head_ignores_range(self, tree: Tree) -> None:
        response, _ = serve(handler(tree.root), "/data.bin", "HEAD", range="bytes=0-1")
        assert response.status == 200 and response.headers.get("Content-Length") == "1024"

    def test_multipart(self, tree: Tree) -> None:
        response, body = serve(handler(tree.root), "/data.bin", range="bytes=900-909,0-9")
        assert response.status == 206
        content_type = response.headers.get("Content-Type") or ""
        assert content_type.startswith("multipart/byteranges; boundary=")
        boundary = content_type.split("boundary=")[1].encode()
        assert response.headers.get("Content-Length") == str(len(body))
        parts = body.split(b"--" + boundary)
        assert parts[0] == b"" and parts[-1] == b"--\r\n"
        first, second = parts[1], parts[2]
        assert b"Content-Range: bytes 0-9/1024\r\n\r\n" + DATA[0:10] + b"\r\n" in first
        assert b"Content-Type: application/octet-stream" in first
        assert second.endswith(b"Content-Range: bytes 900-909/1024\r\n\r\n" + DATA[900:910] + b"\r\n")

    def test_too_many_ranges_send_the_whole_file(self, tree: Tree) -> None:
        header = "bytes=" + ",".join(f"{n * 100}-{n * 100}" for n in range(MAX_RANGES + 1))
        assert len(PAGE) > 100 * MAX_RANGES
        response, body = serve(handler(tree.root), "/page.html", range=header)
        assert response.status == 200 and body == PAGE

    def test_if_range(self, tree: Tree) -> None:
        h = handler(tree.root)
        response, _ = serve(h, "/old.txt")
        etag, last_modified = response.headers.get("ETag") or "", response.headers.get("Last-Modified") or ""
        assert serve(h, "/old.txt", range="bytes=0-2", if_range=etag)[0].status == 206
        assert serve(h, "/old.txt", range="bytes=0-2", if_range=last_modified)[0].status == 206
        assert serve(h, "/old.txt", range="bytes=0-2", if_range='"stale"')[0].status == 200
        assert serve(h, "/old.txt", range="bytes=0-2", if_range=f"W/{etag}")[0].status == 200
        assert serve(h, "/old.txt", range="bytes=0-2", if_range=formatdate(0, usegmt=True))[0].status == 200

    def test_multipart_body_stops_short_when_the_file_shrinks(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        target.write_bytes(b"x" * 1000)
        body = MultipartRanges(open(target, "rb"), [(0, 9), (500, 999)], 1000, "text/plain")
        target.write_bytes(b"x" * 600)
        data = b"".join(body)
        body.close()
        assert len(data) < body.length and body.file.closed


class TestPrecompressed:
    def test_gzip_variant(self, tree: Tree) -> None:
        h = handler(tree.root)
        plain, plain_body = serve(h, "/page.html")
        assert plain_body == PAGE and plain.headers.get("Vary") == "Accept-Encoding"
        assert "Content-Encoding" not in plain.headers
        packed, packed_body = serve(h, "/page.html", accept_encoding="br, gzip;q=0.5")
        assert packed.headers.get("Content-Encoding") == "gzip"
        assert packed.headers.get("Content-Type") == "text/html; charset=utf-8"
        assert packed.headers.get("Vary") == "Accept-Encoding"
        assert gzip.decompress(packed_body) == PAGE
        assert packed.headers.get("ETag") != plain.headers.get("ETag")

    @pytest.mark.parametrize("accept", ["gzip;q=0", "identity", "br", "*;q=0", "gzip;q=0.000, *"])
    def test_refused(self, tree: Tree, accept: str) -> None:
        response, body = serve(handler(tree.root), "/page.html", accept_encoding=accept)
        assert body == PAGE and "Content-Encoding" not in response.headers

    def test_index_gets_its_variant(self, tmp_path: Path) -> None:
        (tmp_path / "index.html").write_bytes(b"<p>i</p>")
        (tmp_path / "index.html.gz").write_bytes(gzip.compress(b"<p>i</p>"))
        response, body = serve(handler(tmp_path), "/", accept_encoding="gzip")
        assert response.headers.get("Content-Encoding") == "gzip" and gzip.decompress(body) == b"<p>i</p>"

    def test_ranges_apply_to_the_variant(self, tree: Tree) -> None:
        packed = (tree.root / "page.html.gz").read_bytes()
        response, body = serve(handler(tree.root), "/page.html", accept_encoding="gzip", range="bytes=0-9")
        assert response.status == 206 and body == packed[:10]
        assert response.headers.get("Content-Range") == f"bytes 0-9/{len(packed)}"

    def test_conditional_on_the_variant(self, tree: Tree) -> None:
        h = handler(tree.root)
        etag = serve(h, "/page.html", accept_encoding="gzip")[0].headers.get("ETag") or ""
        response, _ = serve(h, "/page.html", accept_encoding="gzip", if_none_match=etag)
        assert response.status == 304 and response.headers.get("Vary") == "Accept-Encoding"
        assert serve(h, "/page.html", if_none_match=etag)[0].status == 200

    def test_disabled(self, tree: Tree) -> None:
        response, body = serve(handler(tree.root, precompressed=False), "/page.html", accept_encoding="gzip")
        assert body == PAGE and "Vary" not in response.headers

    def test_variant_that_links_out_is_ignored(self, tmp_path: Path, tree: Tree) -> None:
        (tmp_path / "a.txt").write_bytes(b"plain")
        (tmp_path / "a.txt.gz").symlink_to(tree.outside / "secret.txt")
        response, body = serve(handler(tmp_path), "/a.txt", accept_encoding="gzip")
        assert body == b"plain" and "Vary" not in response.headers


class TestOptions:
    @pytest.mark.parametrize(
        ("options", "key"),
        [
            ({"index": ("a/b.html",)}, "index"),
            ({"index": ("..",)}, "index"),
            ({"index": (".index.html",)}, "index"),
            ({"mime_types": {"md": "text/plain"}}, "mime_types"),
            ({"mime_types": {".md": "not a type"}}, "mime_types"),
            ({"charset": "utf 8"}, "charset"),
            ({"cache_control": "max-age=1\r\nX-Evil: 1"}, "cache_control"),
        ],
    )
    def test_bad_options(self, tree: Tree, options: dict[str, Any], key: str) -> None:
        with pytest.raises(OptionError) as raised:
            handler(tree.root, **options)
        assert raised.value.key == key

    def test_missing_root(self, tmp_path: Path) -> None:
        with pytest.raises(OptionError):
            handler(tmp_path / "nope")


class TestPureFunctions:
    def test_with_charset(self) -> None:
        assert with_charset("application/ld+json", "utf-8") == "application/ld+json; charset=utf-8"
        assert with_charset("image/svg+xml", "utf-8") == "image/svg+xml"
        assert with_charset("text/plain; charset=latin1", "utf-8") == "text/plain; charset=latin1"

    def test_etag_in(self) -> None:
        assert etag_in('"a,b", "c"', '"a,b"', weak=True)
        assert not etag_in('"a", "b"', '"c"', weak=True)
        assert not etag_in('W/"a"', '"a"', weak=False)

    @given(st.text(max_size=60), st.integers(min_value=0, max_value=10_000))
    def test_byte_ranges_never_fail_and_stay_inside(self, header: str, size: int) -> None:
        ranges = byte_ranges(header, size)
        if ranges:
            for start, end in ranges:
                assert 0 <= start <= end < size
            assert ranges == sorted(ranges)

    @given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 2000)), min_size=1, max_size=8))
    def test_byte_ranges_cover_what_was_asked(self, pairs: list[tuple[int, int]]) -> None:
        size = 1500
        header = "bytes=" + ",".join(f"{min(a, b)}-{max(a, b)}" for a, b in pairs)
        ranges = byte_ranges(header, size) or []
        wanted = {n for a, b in pairs for n in range(min(a, b), min(max(a, b), size - 1) + 1)}
        covered = {n for start, end in ranges for n in range(start, end + 1)}
        assert wanted <= covered

    def test_sha256_of_a_whole_file_region(self, tree: Tree) -> None:
        _, body = serve(handler(tree.root), "/data.bin")
        assert hashlib.sha256(body).digest() == hashlib.sha256(DATA).digest()
