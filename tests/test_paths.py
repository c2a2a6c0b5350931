"""Walking a root safely (porch.handlers.paths): the rules the static and the CGI handler share.

Every traversal attempt runs against a real static handler and a real CGI handler over the same
temporary tree of real, executable scripts: a refusal must be the same status from both, and
nothing outside the root, hidden, or reached by a resolved dot-segment may be served or run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import pytest

from porch.config.settings import Mount
from porch.handlers.base import HandlerContext
from porch.handlers.cgi.handler import CGIHandler
from porch.handlers.cgi.options import CGIOptions
from porch.handlers.paths import Root, check_target, refusal
from porch.handlers.static.handler import StaticHandler
from porch.handlers.static.options import StaticOptions
from porch.http.body import ContentLengthBody
from porch.http.errors import Forbidden, HTTPError, NotFound
from porch.http.messages import FileRegion, Headers, Request

SECRET = b"SECRET-outside-the-root-4d1c"
HIDDEN = b"HIDDEN-dotfile-9b07"
RAN = '#!/bin/sh\nprintf \'Content-Type: text/plain\\n\\nran %s%s\' "$SCRIPT_NAME" "$PATH_INFO"\n'


class Answers(Protocol):
    def handle(self, request: Request) -> Any: ...


def script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def make_tree(base: Path) -> Path:
    """``base/root`` full of scripts, links in and out, hidden names; ``base/outside`` beside it."""
    root, outside = base / "root", base / "outside"
    (root / "sub" / ".hidden").mkdir(parents=True)
    (root / ".well-known").mkdir()
    outside.mkdir()
    secret = f"#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n{SECRET.decode()}'\n"
    hidden = f"#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n{HIDDEN.decode()}'\n"
    script(outside / "secret.sh", secret)
    script(root / "ok.sh", RAN)
    script(root / "sub" / "ok.sh", RAN)
    script(root / "sub" / ".hidden" / "x.sh", hidden)
    script(root / ".hidden.sh", hidden)
    script(root / ".well-known" / "acme.sh", RAN)
    (root / "link-in.sh").symlink_to("ok.sh")
    (root / "dirlink-in").symlink_to("sub")
    (root / "link-out.sh").symlink_to("../outside/secret.sh")
    (root / "abs-link-out.sh").symlink_to(outside / "secret.sh")
    (root / "dirlink-out").symlink_to(outside)
    (root / "link-hidden.sh").symlink_to(".hidden.sh")
    (root / "link-hidden-dir").symlink_to("sub/.hidden")
    (root / "dangling.sh").symlink_to("missing.sh")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("paths"))


def static(root: Path, **options: Any) -> StaticHandler:
    return StaticHandler(Mount(path="/", type="static", options=StaticOptions(root=root, **options)), HandlerContext())


def cgi(root: Path, **options: Any) -> CGIHandler:
    return CGIHandler(
        Mount(path="/", type="cgi", options=CGIOptions(root=root, **options)), HandlerContext(software="porch/test")
    )


def request(target: str, resolved: str | None = None) -> Request:
    """A request for ``target`` as sent; ``resolved``: the path a parser made of it (RFC 3986 5.2.4)."""
    raw_path, _, query = target.partition("?")
    if resolved is not None:
        raw_path = resolved
    return Request(
        method="GET",
        target=target,
        raw_path=raw_path,
        path=unquote(raw_path, errors="surrogateescape"),
        query=query,
        version="HTTP/1.1",
        headers=Headers([("Host", "example.com")]),
        body=ContentLengthBody(0, io.BytesIO(), None),  # type: ignore[arg-type]
        client=("127.0.0.1", 40000),
        server=("127.0.0.1", 8080),
    )


def answer(handler: Answers, req: Request) -> tuple[int, bytes]:
    """Status and whole body, the body consumed and closed as the connection would."""
    try:
        response = handler.handle(req)
    except HTTPError as error:
        return int(error.status), error.body()
    body = response.body
    if isinstance(body, FileRegion):
        with body.file:
            body.file.seek(body.offset)
            return response.status, body.file.read(body.length)
    if isinstance(body, (bytes, bytearray)):
        return response.status, bytes(body)
    try:
        return response.status, b"".join(body)
    finally:
        body.close()


# (target as sent, the path a resolving parser would pass on or None, status from both handlers)
REFUSED = [
    ("/../outside/secret.sh", None, 404),  # a parser that did not resolve it
    ("/sub/../ok.sh", "/ok.sh", 404),  # resolved by the parser: refused for what was sent
    ("/sub/./ok.sh", "/sub/ok.sh", 404),
    ("http://example.com/sub/../ok.sh", "/ok.sh", 404),  # absolute-form
    ("/%2e%2e/outside/secret.sh", None, 404),
    ("/sub/%2E%2e/ok.sh", "/ok.sh", 404),
    ("/sub/.%2e/ok.sh", "/ok.sh", 404),
    ("/sub%2fok.sh", None, 404),  # an encoded "/" would name sub/ok.sh
    ("/sub%2F..%2F..%2Foutside/secret.sh", None, 404),
    ("/sub%5cok.sh", None, 404),
    ("/sub\\ok.sh", None, 404),
    ("/ok.sh%00.txt", None, 404),
    ("/.hidden.sh", None, 404),
    ("/%2ehidden.sh", None, 404),
    ("/sub/.hidden/x.sh", None, 404),
    ("/link-out.sh", None, 404),
    ("/abs-link-out.sh", None, 404),
    ("/dirlink-out/secret.sh", None, 404),
    ("/link-hidden.sh", None, 404),  # a link must not reveal what its own name would not
    ("/link-hidden-dir/x.sh", None, 404),
    ("/dangling.sh", None, 404),
    ("/missing.sh", None, 404),
    ("/sub/missing/ok.sh", None, 404),
]


@pytest.mark.parametrize(("target", "resolved", "status"), REFUSED)
def test_refused_alike_by_static_and_cgi(root: Path, target: str, resolved: str | None, status: int) -> None:
    for handler in (static(root), cgi(root)):
        got, body = answer(handler, request(target, resolved))
        assert got == status, (type(handler).__name__, target, got, body)
        assert SECRET not in body and HIDDEN not in body and b"ran " not in body


@pytest.mark.parametrize("target", ["/ok.sh", "/sub/ok.sh", "/link-in.sh", "/dirlink-in/ok.sh", "//ok.sh"])
def test_legitimate_files_are_served_and_scripts_run(root: Path, target: str) -> None:
    status, body = answer(static(root), request(target))
    assert (status, body) == (200, RAN.encode())
    status, body = answer(cgi(root), request(target))
    assert status == 200 and body == b"ran " + target.encode()


def test_dots_inside_names_and_the_query_are_fine(root: Path) -> None:
    assert answer(static(root), request("/ok.sh?next=/../x"))[0] == 200
    assert answer(cgi(root), request("/ok.sh?next=/../x")) == (200, b"ran /ok.sh")


def test_well_known_is_public_for_static_files_only(root: Path) -> None:
    """RFC 8615 names are public files; hidden names are never scripts."""
    assert answer(static(root), request("/.well-known/acme.sh")) == (200, RAN.encode())
    assert answer(cgi(root), request("/.well-known/acme.sh"))[0] == 404


def test_after_the_script_hidden_names_are_path_info_but_dot_segments_are_not(root: Path) -> None:
    """Not shared: below a file the static handler finds nothing; a script gets it as PATH_INFO."""
    handler = cgi(root)
    assert answer(handler, request("/ok.sh/")) == (200, b"ran /ok.sh/")
    assert answer(handler, request("/ok.sh/.config/x")) == (200, b"ran /ok.sh/.config/x")
    assert answer(handler, request("/ok.sh/a/../b", "/ok.sh/b"))[0] == 404
    assert answer(handler, request("/ok.sh/%2e%2e/b", "/ok.sh/b"))[0] == 404
    assert answer(handler, request("/ok.sh/a%2Fb"))[0] == 404  # RFC 3875 4.1.5: PATH_INFO is decoded
    for target in ("/ok.sh/", "/ok.sh/.config/x"):
        assert answer(static(root), request(target))[0] == 404


def test_follow_symlinks_serves_and_runs_what_links_lead_to(root: Path) -> None:
    source = (root.parent / "outside" / "secret.sh").read_bytes()
    for target in ("/link-out.sh", "/dirlink-out/secret.sh", "/link-hidden.sh"):
        expected = HIDDEN if target == "/link-hidden.sh" else SECRET
        status, body = answer(static(root, follow_symlinks=True), request(target))
        assert status == 200 and expected in body
        assert answer(cgi(root, follow_symlinks=True), request(target)) == (200, expected)
    assert answer(static(root, follow_symlinks=True), request("/link-out.sh"))[1] == source
    for target, resolved in [("/../outside/secret.sh", None), ("/sub/../ok.sh", "/ok.sh"), ("/.hidden.sh", None)]:
        assert answer(static(root, follow_symlinks=True), request(target, resolved))[0] == 404
        assert answer(cgi(root, follow_symlinks=True), request(target, resolved))[0] == 404


@pytest.mark.parametrize("follow_symlinks", [False, True])
def test_a_mixed_tree_never_serves_a_script_source_through_a_link(tmp_path: Path, follow_symlinks: bool) -> None:
    script(tmp_path / "run.cgi", RAN)
    (tmp_path / "page.txt").write_text("plain\n")
    (tmp_path / "innocent.txt").symlink_to("run.cgi")
    handler = cgi(tmp_path, extensions=(".cgi",), follow_symlinks=follow_symlinks)
    assert answer(handler, request("/run.cgi")) == (200, b"ran /run.cgi")
    assert answer(handler, request("/page.txt")) == (200, b"plain\n")
    assert answer(handler, request("/innocent.txt"))[0] == 403


# -- Root itself --------------------------------------------------------------------------------


def test_root_is_resolved_once(root: Path, tmp_path: Path) -> None:
    (tmp_path / "www").symlink_to(root)
    tree = Root(tmp_path / "www", follow_symlinks=False, dotfiles=False, well_known=False)
    assert tree.directory == os.path.realpath(root) and tree.prefix == tree.directory + "/"
    assert tree.locate("/link-in.sh")[0] == os.path.join(tree.directory, "ok.sh")


@pytest.mark.parametrize(
    ("target", "resolved", "whole_path", "dotfiles", "well_known", "refused"),
    [
        ("/a/b", None, True, False, False, False),
        ("/a/.b", None, True, False, False, True),
        ("/a/.b", None, False, False, False, False),  # a CGI mount asks hidden() name by name
        ("/a/.b", None, True, True, False, False),
        ("/.well-known/x", None, True, False, True, False),
        ("/.well-known/x", None, True, False, False, True),
        ("/a/.well-known", None, True, False, True, True),  # only directly below the origin's root
        ("/a/../b", None, False, True, True, True),  # dot-segments: whatever the options
        ("/a/../b", "/b", False, True, True, True),
        ("/a/%2e/b", "/a/b", False, True, True, True),
        ("/a%2Fb", None, False, True, True, True),
        ("/a%5Cb", None, False, True, True, True),
        ("/a\\b", None, False, True, True, True),
        ("/a%00b", None, False, True, True, True),
        ("/a%252e%252e", None, True, False, False, False),  # "%2e%2e" once decoded: a plain name
        ("/a?x=/../y", None, True, False, False, False),  # the query is no path
    ],
)
def test_check(
    target: str, resolved: str | None, whole_path: bool, dotfiles: bool, well_known: bool, refused: bool, tmp_path: Path
) -> None:
    tree = Root(tmp_path, follow_symlinks=False, dotfiles=dotfiles, well_known=well_known)
    req = request(target, resolved)
    if refused:
        with pytest.raises(NotFound):
            tree.check(req, req.path, whole_path=whole_path)
    else:
        tree.check(req, req.path, whole_path=whole_path)


def test_path_info_below_a_mount_must_start_with_a_slash(tmp_path: Path) -> None:
    tree = Root(tmp_path, follow_symlinks=False, dotfiles=False, well_known=False)
    with pytest.raises(NotFound):
        tree.check(request("/appx"), "x")  # "/app" mounted, "/appx" asked
    tree.check(request("/app"), "")


def test_hidden() -> None:
    tree = Root("/", follow_symlinks=False, dotfiles=False, well_known=True)
    assert tree.hidden(".git", 0) and tree.hidden(".well-known", 1) and not tree.hidden(".well-known", 0)
    assert not tree.hidden("a.b", 0) and not tree.hidden("", 0)
    assert not Root("/", follow_symlinks=False, dotfiles=True, well_known=False).hidden(".git", 3)


@pytest.mark.parametrize(
    ("name", "follow_symlinks", "dotfiles", "expected"),
    [
        ("ok.sh", False, False, "ok.sh"),
        ("link-in.sh", False, False, "ok.sh"),  # a link: where it leads
        ("dirlink-in", False, False, "sub"),
        ("link-out.sh", False, False, NotFound),
        ("dirlink-out", False, False, NotFound),
        ("link-hidden.sh", False, False, NotFound),
        ("link-hidden.sh", False, True, ".hidden.sh"),
        ("link-out.sh", True, False, "../outside/secret.sh"),
        ("link-hidden.sh", True, False, ".hidden.sh"),  # follow_symlinks: wherever links lead
        ("missing.sh", False, False, FileNotFoundError),
        ("dangling.sh", False, False, FileNotFoundError),
        ("dangling.sh", True, False, FileNotFoundError),
    ],
)
def test_entry(root: Path, name: str, follow_symlinks: bool, dotfiles: bool, expected: str | type) -> None:
    tree = Root(root, follow_symlinks=follow_symlinks, dotfiles=dotfiles, well_known=False)
    if isinstance(expected, type):
        with pytest.raises(expected):
            tree.entry(tree.prefix + name)
        return
    path, info = tree.entry(tree.prefix + name)
    assert path == os.path.normpath(tree.prefix + expected)
    assert (info.st_dev, info.st_ino) == (os.stat(path).st_dev, os.stat(path).st_ino)


def test_locate(root: Path) -> None:
    tree = Root(root, follow_symlinks=False, dotfiles=False, well_known=False)
    assert tree.locate("")[0] == tree.locate("/")[0] == tree.directory
    assert tree.locate("/dirlink-in/ok.sh")[0] == tree.prefix + "sub/ok.sh"
    assert tree.locate("/sub/")[0] == tree.prefix + "sub"
    with pytest.raises(NotFound):
        tree.locate("/dirlink-out/secret.sh")
    with pytest.raises(NotADirectoryError):
        tree.locate("/ok.sh/x")
    followed = Root(root, follow_symlinks=True, dotfiles=False, well_known=False)
    assert followed.locate("/dirlink-out/secret.sh")[0] == followed.prefix + "dirlink-out/secret.sh"


def counted(monkeypatch: pytest.MonkeyPatch, names: Iterable[str]) -> dict[str, int]:
    """Count the calls of the named ``os`` functions from now on."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(os, name)

        def counting(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(os, name, counting)
    return calls


def test_without_links_a_walk_costs_one_lstat_per_segment(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = Root(root, follow_symlinks=False, dotfiles=False, well_known=False)
    followed = Root(root, follow_symlinks=True, dotfiles=False, well_known=False)
    calls = counted(monkeypatch, ("lstat", "stat", "readlink"))
    tree.locate("/sub/ok.sh")
    assert calls == {"lstat": 2, "stat": 0, "readlink": 0}
    followed.locate("/dirlink-out/secret.sh")  # follow_symlinks: one stat of the full path
    assert calls == {"lstat": 2, "stat": 1, "readlink": 0}


@pytest.mark.parametrize(
    ("error", "answer_type"),
    [
        (PermissionError(13, "denied"), Forbidden),
        (FileNotFoundError(2, "missing"), NotFound),
        (NotADirectoryError(20, "not a directory"), NotFound),
        (OSError(36, "name too long"), NotFound),
        (ValueError("embedded null byte"), NotFound),
    ],
)
def test_refusal(error: OSError | ValueError, answer_type: type) -> None:
    assert type(refusal(error)) is answer_type


@pytest.mark.parametrize(
    ("target", "refused"),
    [
        ("/a/b/c", False),
        ("/a/./b", True),
        ("/a/..", True),
        ("/a/%2E%2e/b", True),
        ("/a/%2e/b", True),
        ("/a/...", False),
        ("/a/b?x=/../y", False),
        ("http://h/a/../b", True),
        ("http://h", False),
        ("*", False),
    ],
)
def test_check_target(target: str, refused: bool) -> None:
    if refused:
        with pytest.raises(NotFound):
            check_target(target)
    else:
        check_target(target)
