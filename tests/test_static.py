"""Static files over real sockets, under both concurrency models, with requests and http.client.

One server per concurrency model for the whole module; its mounts serve the same tree with
different options.  Traversal attempts are sent as raw bytes so no client library can
normalise them first, and the secret placed next to the root must never appear in an answer.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
import requests
from conftest import CONCURRENCY_MODELS
from porchtest import PorchServer
from static_tree import BIG_BYTES, DATA, HELLO, HIDDEN, OLD_MTIME, PAGE, SECRET, Tree, make_tree

WWW = Path(__file__).parent.parent / "www"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return make_tree(tmp_path_factory.mktemp("static-tree"), big=True)


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def server(
    request: pytest.FixtureRequest, tree: Tree, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PorchServer]:
    root = str(tree.root)
    config = {
        "concurrency": request.param,
        "mounts": [
            {"path": "/", "type": "static", "root": root},
            {"path": "/listed", "type": "static", "root": root, "listing": True},
            {"path": "/follow", "type": "static", "root": root, "follow_symlinks": True},
            {"path": "/dots", "type": "static", "root": root, "dotfiles": True},
            {
                "path": "/tuned",
                "type": "static",
                "root": root,
                "cache_control": "public, max-age=600",
                "mime_types": {".md": "text/x-notes", ".zzqx": "application/x-zzqx"},
                "charset": "iso-8859-1",
            },
            {"path": "/plain", "type": "static", "root": root, "precompressed": False},
            {"path": "/www", "type": "static", "root": str(WWW)},
        ],
    }
    srv = PorchServer.start(config, tmp_path_factory.mktemp(f"static-{request.param}"))
    yield srv
    srv.stop()


def status_of(raw: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", raw)
    assert match, raw[:200]
    return int(match.group(1))


def raw_get(server: PorchServer, target: bytes, method: bytes = b"GET") -> bytes:
    return server.raw(method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")


class TestFiles:
    def test_index_and_types(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/", timeout=5)
        assert response.status_code == 200 and b"home page" in response.content
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Accept-Ranges"] == "bytes"

    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("/notes.md", "text/markdown; charset=utf-8"),
            ("/script.js", "text/javascript; charset=utf-8"),
            ("/image.png", "image/png"),
            ("/unknown.zzqx", "application/octet-stream"),
            ("/tuned/notes.md", "text/x-notes; charset=iso-8859-1"),
            ("/tuned/hello.txt", "text/plain; charset=iso-8859-1"),
            ("/tuned/unknown.zzqx", "application/x-zzqx"),
        ],
    )
    def test_mime_types(self, server: PorchServer, path: str, expected: str) -> None:
        response = requests.get(server.url + path, timeout=5)
        assert response.status_code == 200 and response.headers["Content-Type"] == expected

    def test_cache_control(self, server: PorchServer) -> None:
        assert (
            requests.get(server.url + "/tuned/hello.txt", timeout=5).headers["Cache-Control"] == "public, max-age=600"
        )
        assert "Cache-Control" not in requests.get(server.url + "/hello.txt", timeout=5).headers

    def test_empty_file(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/empty.txt", timeout=5)
        assert response.status_code == 200 and response.content == b""
        assert response.headers["Content-Length"] == "0"

    def test_big_file_arrives_intact(self, server: PorchServer, tree: Tree) -> None:
        assert tree.big is not None
        expected = hashlib.sha256(tree.big.read_bytes()).hexdigest()
        with requests.get(server.url + "/big.bin", stream=True, timeout=30) as response:
            assert response.headers["Content-Length"] == str(BIG_BYTES)
            digest = hashlib.sha256()
            for chunk in response.iter_content(1 << 20):
                digest.update(chunk)
        assert digest.hexdigest() == expected
        middle = requests.get(server.url + "/big.bin", headers={"Range": "bytes=5000000-5000999"}, timeout=10)
        assert middle.status_code == 206 and middle.content == tree.big.read_bytes()[5000000:5001000]

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
    def test_other_methods_are_405_with_allow(self, server: PorchServer, method: str) -> None:
        for path in ("/hello.txt", "/sub/"):
            response = requests.request(method, server.url + path, data=b"x", timeout=5)
            assert response.status_code == 405 and response.headers["Allow"] == "GET, HEAD, OPTIONS"
        assert requests.request(method, server.url + "/missing", data=b"x", timeout=5).status_code == 404

    def test_options(self, server: PorchServer) -> None:
        response = requests.options(server.url + "/hello.txt", timeout=5)
        assert response.status_code == 204 and response.headers["Allow"] == "GET, HEAD, OPTIONS"


class TestKeepAlive:
    def test_head_then_get_on_one_connection(self, server: PorchServer) -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
        try:
            connection.request("HEAD", "/data.bin")
            head = connection.getresponse()
            assert head.status == 200 and head.read() == b""
            assert head.getheader("Content-Length") == str(len(DATA))
            assert head.getheader("ETag") and head.getheader("Last-Modified")
            sock = connection.sock
            connection.request("GET", "/hello.txt")
            again = connection.getresponse()
            assert again.status == 200 and again.read() == HELLO
            connection.request("GET", "/hello.txt", headers={"If-None-Match": again.getheader("ETag") or ""})
            unchanged = connection.getresponse()
            assert unchanged.status == 304 and unchanged.read() == b""
            connection.request("GET", "/data.bin", headers={"Range": "bytes=-4"})
            tail = connection.getresponse()
            assert tail.status == 206 and tail.read() == DATA[-4:]
            assert connection.sock is sock  # never reconnected
        finally:
            connection.close()

    def test_requests_session(self, server: PorchServer) -> None:
        with requests.Session() as session:
            head = session.head(server.url + "/page.html", timeout=5)
            assert head.status_code == 200 and head.content == b""
            get = session.get(server.url + "/page.html", timeout=5)
            assert get.status_code == 200 and get.content == PAGE


class TestDirectories:
    def test_redirect_keeps_the_query(self, server: PorchServer) -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
        try:  # http.client sends the target as is (requests would decode %75 first)
            connection.request("GET", "/s%75b?a=1&b=%20")
            response = connection.getresponse()
            response.read()
            assert response.status == 301 and response.getheader("Location") == "/s%75b/?a=1&b=%20"
        finally:
            connection.close()
        followed = requests.get(server.url + "/sub?a=1", timeout=5)
        assert followed.status_code == 200 and followed.content == b"<h1>sub index</h1>\n"
        mounted = requests.get(server.url + "/listed", allow_redirects=False, timeout=5)
        assert mounted.status_code == 301 and mounted.headers["Location"] == "/listed/"

    def test_no_listing_is_403(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/list/", timeout=5).status_code == 403

    def test_listing(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/listed/list/", timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        text = response.text
        assert "<script>" not in text
        assert '<a href="%3Cscript%3E.txt">&lt;script&gt;.txt</a>' in text
        assert '<a href="a%26b.txt">a&amp;b.txt</a>' in text
        assert '<a href="../">../</a>' in text
        assert ".hidden" not in text and "link-out" not in text
        assert text.index('href="adir/"') < text.index('href="zdir/"') < text.index('href="a%26b.txt"')
        linked = requests.get(server.url + "/listed/list/%3Cscript%3E.txt", timeout=5)
        assert linked.content == b"script name\n"


class TestConditional:
    def test_etag_and_last_modified(self, server: PorchServer) -> None:
        first = requests.get(server.url + "/old.txt", timeout=5)
        etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
        assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"', etag)
        assert last_modified == formatdate(OLD_MTIME, usegmt=True)
        not_modified = requests.get(server.url + "/old.txt", headers={"If-None-Match": etag}, timeout=5)
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert not_modified.headers["ETag"] == etag
        by_date = requests.get(server.url + "/old.txt", headers={"If-Modified-Since": last_modified}, timeout=5)
        assert by_date.status_code == 304

    def test_if_none_match_wins_over_if_modified_since(self, server: PorchServer) -> None:
        last_modified = formatdate(OLD_MTIME, usegmt=True)
        response = requests.get(
            server.url + "/old.txt", timeout=5, headers={"If-None-Match": '"stale"', "If-Modified-Since": last_modified}
        )
        assert response.status_code == 200 and response.content == b"old file\n"

    def test_cache_control_on_304(self, server: PorchServer) -> None:
        etag = requests.get(server.url + "/tuned/hello.txt", timeout=5).headers["ETag"]
        response = requests.get(server.url + "/tuned/hello.txt", headers={"If-None-Match": etag}, timeout=5)
        assert response.status_code == 304 and response.headers["Cache-Control"] == "public, max-age=600"

    def test_precondition_failed(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/old.txt", headers={"If-Match": '"nope"'}, timeout=5).status_code == 412
        since = formatdate(OLD_MTIME - 3600, usegmt=True)
        assert (
            requests.get(server.url + "/old.txt", headers={"If-Unmodified-Since": since}, timeout=5).status_code == 412
        )


class TestRanges:
    @pytest.mark.parametrize(
        ("header", "start", "end"),
        [
            ("bytes=0-99", 0, 99),
            ("bytes=-100", 924, 1023),
            ("bytes=1000-", 1000, 1023),
        ],
    )
    def test_single(self, server: PorchServer, header: str, start: int, end: int) -> None:
        response = requests.get(server.url + "/data.bin", headers={"Range": header}, timeout=5)
        assert response.status_code == 206
        assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
        assert response.content == DATA[start : end + 1]

    def test_unsatisfiable(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/data.bin", headers={"Range": "bytes=5000-"}, timeout=5)
        assert response.status_code == 416 and response.headers["Content-Range"] == f"bytes */{len(DATA)}"

    def test_malformed_is_ignored(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/data.bin", headers={"Range": "bytes=9-2"}, timeout=5)
        assert response.status_code == 200 and response.content == DATA

    def test_multipart(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/data.bin", headers={"Range": "bytes=0-1,500-501"}, timeout=5)
        assert response.status_code == 206
        assert response.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
        assert b"Content-Range: bytes 500-501/1024\r\n\r\n" + DATA[500:502] in response.content

    def test_if_range_mismatch_sends_everything(self, server: PorchServer) -> None:
        response = requests.get(
            server.url + "/data.bin", headers={"Range": "bytes=0-1", "If-Range": '"old"'}, timeout=5
        )
        assert response.status_code == 200 and response.content == DATA


class TestPrecompressed:
    def test_gzip_variant_with_http_client(self, server: PorchServer) -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
        try:
            connection.request("GET", "/page.html", headers={"Accept-Encoding": "gzip"})
            packed = connection.getresponse()
            body = packed.read()
            assert packed.getheader("Content-Encoding") == "gzip"
            assert packed.getheader("Vary") == "Accept-Encoding"
            assert packed.getheader("Content-Type") == "text/html; charset=utf-8"
            assert packed.getheader("Content-Length") == str(len(body)) and gzip.decompress(body) == PAGE
            connection.request("GET", "/page.html", headers={"Accept-Encoding": "gzip;q=0"})
            plain = connection.getresponse()
            assert plain.read() == PAGE and plain.getheader("Content-Encoding") is None
            assert plain.getheader("Vary") == "Accept-Encoding"
        finally:
            connection.close()

    def test_requests_decodes_it(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/page.html", timeout=5)
        assert response.headers["Content-Encoding"] == "gzip" and response.content == PAGE

    def test_disabled(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/plain/page.html", timeout=5)
        assert "Content-Encoding" not in response.headers and "Vary" not in response.headers
        assert response.content == PAGE

    def test_no_variant_no_vary(self, server: PorchServer) -> None:
        assert "Vary" not in requests.get(server.url + "/hello.txt", timeout=5).headers


TRAVERSALS = [
    b"/../outside/secret.txt",
    b"/%2e%2e/outside/secret.txt",
    b"/%2E%2e%2foutside/secret.txt",
    b"/..%2foutside/secret.txt",
    b"/%2foutside/secret.txt",
    b"/sub%2f..%2f..%2foutside/secret.txt",
    b"/%5c..%5coutside%5csecret.txt",
    b"/..\\outside\\secret.txt",
    b"/%2e%2e%5coutside/secret.txt",
    b"/%00../outside/secret.txt",
    b"/hello.txt%00.html",
    b"/%252e%252e/outside/secret.txt",
    b"/%252e%252e%252foutside%252fsecret.txt",
    b"/./hello.txt",
    b"/sub/./../../outside/secret.txt",
    b"/sub/../../outside/secret.txt",
    b"//../outside/secret.txt",
    b"/....//outside/secret.txt",
    b"/link-out",
    b"/rel-link-out",
    b"/dirlink-out/secret.txt",
    b"/listed/list/link-out",
    b"/listed/../../outside/secret.txt",
    b"/listed/%2e%2e/%2e%2e/outside/secret.txt",
    b"/dots/../outside/secret.txt",
    b"/dots/..%2f..%2foutside/secret.txt",
    b"/follow/../outside/secret.txt",
    b"/follow/%2e%2e/outside/secret.txt",
    b"http://a/../outside/secret.txt",
    b"/fifo",
    b"/follow/fifo",
]
HIDDEN_PATHS = [
    b"/.secret",
    b"/.hiddendir/file.txt",
    b"/list/.hidden",
    b"/link-hidden",
    b"/%2esecret",
    b"/listed/.secret",
    b"/follow/.secret",
    b"/tuned/.hiddendir/file.txt",
]


class TestTraversal:
    @pytest.mark.parametrize("target", TRAVERSALS, ids=lambda t: t.decode("latin-1"))
    def test_never_leaves_the_root(self, server: PorchServer, target: bytes) -> None:
        for method in (b"GET", b"HEAD", b"POST"):
            answer = raw_get(server, target, method)
            assert 400 <= status_of(answer) < 500, (method, answer[:200])
            assert SECRET not in answer and HIDDEN not in answer

    @pytest.mark.parametrize("target", HIDDEN_PATHS, ids=lambda t: t.decode("latin-1"))
    def test_dotfiles_are_hidden(self, server: PorchServer, target: bytes) -> None:
        answer = raw_get(server, target)
        assert status_of(answer) == 404 and HIDDEN not in answer

    def test_dotfiles_shown_when_allowed(self, server: PorchServer) -> None:
        answer = raw_get(server, b"/dots/.secret")
        assert status_of(answer) == 200 and answer.endswith(HIDDEN)
        assert requests.get(server.url + "/dots/.hiddendir/file.txt", timeout=5).content == HIDDEN

    def test_symlinks(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/link-in", timeout=5).content == HELLO
        assert requests.get(server.url + "/dirlink-in/deeper/leaf.txt", timeout=5).content == b"leaf\n"
        followed = raw_get(server, b"/follow/link-out")  # allowed by follow_symlinks: true
        assert status_of(followed) == 200 and followed.endswith(SECRET)
        assert requests.get(server.url + "/follow/dirlink-out/secret.txt", timeout=5).content == SECRET

    def test_well_known(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/.well-known/acme.txt", timeout=5).content == b"challenge-token\n"

    def test_double_encoding_is_a_literal_name(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/pct%252e%252e", timeout=5)
        assert response.status_code == 200 and response.content.startswith(b"a file literally named")


class TestDefaultSite:
    """The bundled www/ landing page and its assets."""

    def test_landing_page(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/www/", timeout=5)
        assert response.status_code == 200 and response.headers["Content-Type"] == "text/html; charset=utf-8"
        for link in (
            'href="/cgi-bin/env.cgi"',
            'href="/cgi-bin/form.py"',
            'href="/cgi-bin/stream.sh"',
            'href="/app/"',
            "/RPC2",
            'href="style.css"',
            'href="favicon.svg"',
        ):
            assert link in response.text, link

    @pytest.mark.parametrize(
        ("name", "expected"), [("style.css", "text/css; charset=utf-8"), ("favicon.svg", "image/svg+xml")]
    )
    def test_assets(self, server: PorchServer, name: str, expected: str) -> None:
        response = requests.get(server.url + "/www/" + name, timeout=5)
        assert response.status_code == 200 and response.headers["Content-Type"] == expected
        assert response.content == (WWW / name).read_bytes()


class TestSmallFilesInMemory:
    """Small files are kept in memory per worker; a change on disk is seen on the next request."""

    @pytest.fixture
    def site(self, porch, tmp_path: Path, concurrency: str) -> tuple[PorchServer, Path]:
        root = tmp_path / "site"
        root.mkdir()
        (root / "note.txt").write_bytes(b"first version")
        return porch(
            {"concurrency": concurrency, "threads": 1, "mounts": [{"path": "/", "type": "static", "root": str(root)}]}
        ), root

    def test_rewritten_in_place_with_the_same_size(self, site: tuple[PorchServer, Path]) -> None:
        srv, root = site
        with requests.Session() as session:
            assert session.get(srv.url + "/note.txt").content == b"first version"
            (root / "note.txt").write_bytes(b"later version")
            assert session.get(srv.url + "/note.txt").content == b"later version"

    def test_replaced_by_a_file_with_the_same_size_and_time(self, site: tuple[PorchServer, Path]) -> None:
        srv, root = site
        note = root / "note.txt"
        with requests.Session() as session:
            assert session.get(srv.url + "/note.txt").content == b"first version"
            stat = note.stat()
            spare = root / "spare.tmp"
            spare.write_bytes(b"other version")
            os.utime(spare, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            os.replace(spare, note)  # a new inode: the only thing that tells them apart
            response = session.get(srv.url + "/note.txt")
            assert response.content == b"other version"
            assert response.headers["Content-Length"] == "13"

    def test_a_gz_sibling_added_later_is_used_within_a_second(self, site: tuple[PorchServer, Path]) -> None:
        srv, root = site
        with requests.Session() as session:
            assert "Content-Encoding" not in session.get(srv.url + "/note.txt").headers
            (root / "note.txt.gz").write_bytes(gzip.compress(b"first version"))
            time.sleep(1.1)
            response = session.get(srv.url + "/note.txt")
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.content == b"first version"  # requests decodes it

    def test_removed_file_is_404(self, site: tuple[PorchServer, Path]) -> None:
        srv, root = site
        with requests.Session() as session:
            assert session.get(srv.url + "/note.txt").status_code == 200
            (root / "note.txt").unlink()
            assert session.get(srv.url + "/note.txt").status_code == 404
