"""Unit tests of the request parser (porch.http.head, porch.http.body) and the response head and
chunk writers (porch.http.response): tables of byte strings in, RequestHead or ProtocolError out."""

from __future__ import annotations

import io
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import pytest

from porch.config.settings import Limits
from porch.http import head as head_module
from porch.http.body import ChunkedBody, ContentLengthBody, EmptyBody, body_reader
from porch.http.errors import PayloadTooLarge, ProtocolError
from porch.http.grammar import MAX_REMEMBERED_NAMES
from porch.http.head import RequestHead, find_head_end, parse_head
from porch.http.response import LAST_CHUNK, encode_chunk, serialize_response_head

LIMITS = Limits()
BAD = HTTPStatus.BAD_REQUEST


def request(line: str | bytes, *fields: str | bytes, host: str | None = "example.com") -> bytes:
    """A complete head: request line, Host (unless None), then ``fields``."""
    lines = [line.encode("latin-1") if isinstance(line, str) else line]
    if host is not None:
        lines.append(b"Host: " + host.encode())
    lines += [f.encode("latin-1") if isinstance(f, str) else f for f in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse(data: bytes, limits: Limits = LIMITS) -> RequestHead:
    """What the connection does: find the end, then parse exactly the head."""
    end = find_head_end(data, limits)
    assert end == len(data), f"head end {end} != {len(data)}"
    return parse_head(data, limits)


def rejected(data: bytes, limits: Limits = LIMITS) -> HTTPStatus:
    with pytest.raises(ProtocolError) as info:
        parse(data, limits)
    return info.value.status


def source(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))


# ---------------------------------------------------------------------------------------------
# Request line and target

REQUEST_LINE_ERRORS: list[tuple[str, bytes, HTTPStatus]] = [
    ("method-not-token", request("G@T / HTTP/1.1"), BAD),
    ("method-with-slash", request("GET/ / HTTP/1.1"), BAD),
    ("leading-space", request(" GET / HTTP/1.1"), BAD),
    ("double-space", request("GET  / HTTP/1.1"), BAD),
    ("trailing-space", request("GET / HTTP/1.1 "), BAD),
    ("tab-separators", request("GET\t/\tHTTP/1.1"), BAD),
    ("two-parts", request("GET /"), BAD),
    ("four-parts", request("GET / x HTTP/1.1"), BAD),
    ("http-2-0", request("GET / HTTP/2.0"), HTTPStatus.HTTP_VERSION_NOT_SUPPORTED),
    ("http-1-2", request("GET / HTTP/1.2"), HTTPStatus.HTTP_VERSION_NOT_SUPPORTED),
    ("http-0-9", request("GET / HTTP/0.9"), HTTPStatus.HTTP_VERSION_NOT_SUPPORTED),
    ("httx", request("GET / HTTX/1.1"), BAD),
    ("version-suffix", request("GET / HTTP/1.1x"), BAD),
    ("version-lowercase", request("GET / http/1.1"), BAD),
    ("version-no-minor", request("GET / HTTP/2"), BAD),
    ("version-two-digit-major", request("GET / HTTP/11.1"), BAD),
    ("target-utf8", request(b"GET /caf\xc3\xa9 HTTP/1.1"), BAD),
    ("target-del", request(b"GET /\x7f HTTP/1.1"), BAD),
    ("target-ctl", request(b"GET /\x01 HTTP/1.1"), BAD),
    ("target-fragment", request("GET /a#b HTTP/1.1"), BAD),
    ("asterisk-with-get", request("GET * HTTP/1.1"), BAD),
    ("authority-form-with-get", request("GET example.com:80 HTTP/1.1"), BAD),
    ("relative-target", request("GET a/b HTTP/1.1"), BAD),
    ("connect-origin-form", request("CONNECT /x HTTP/1.1"), BAD),
    ("connect-absolute-form", request("CONNECT http://a.example:80/ HTTP/1.1"), BAD),
    ("connect-no-port", request("CONNECT a.example HTTP/1.1"), BAD),
    ("connect-userinfo", request("CONNECT u@a.example:80 HTTP/1.1"), BAD),
    ("connect-port-too-big", request("CONNECT a.example:65536 HTTP/1.1"), BAD),
    ("absolute-ftp", request("GET ftp://a.example/ HTTP/1.1"), BAD),
    ("absolute-no-slashes", request("GET http:a.example/ HTTP/1.1"), BAD),
    ("absolute-userinfo", request("GET http://u:p@a.example/ HTTP/1.1"), BAD),
    ("absolute-empty-host", request("GET http:///x HTTP/1.1"), BAD),
    ("absolute-bad-port", request("GET http://a.example:x/ HTTP/1.1"), BAD),
]


@pytest.mark.parametrize("data, status", [c[1:] for c in REQUEST_LINE_ERRORS], ids=[c[0] for c in REQUEST_LINE_ERRORS])
def test_request_line_errors(data: bytes, status: HTTPStatus) -> None:
    assert rejected(data) == status


TARGETS: list[tuple[str, dict[str, Any]]] = [
    ("/", dict(raw_path="/", path="/", query="")),
    ("/a/b?x=1&y=%20", dict(raw_path="/a/b", path="/a/b", query="x=1&y=%20")),
    ("/a?", dict(raw_path="/a", query="")),
    ("/a?b?c", dict(raw_path="/a", query="b?c")),
    ("/a?q=%zz", dict(query="q=%zz")),  # the query is passed on raw; the application decodes it
    ("/a/./b/../c", dict(raw_path="/a/c", path="/a/c")),
    ("/a/b/.", dict(raw_path="/a/b/", path="/a/b/")),
    ("/a/b/..", dict(raw_path="/a/", path="/a/")),
    ("/.", dict(raw_path="/", path="/")),
    ("/a/..", dict(raw_path="/", path="/")),
    ("/a//../b", dict(raw_path="/a/b")),
    ("/./a/./", dict(raw_path="/a/")),
    ("/.well-known/...", dict(raw_path="/.well-known/...", path="/.well-known/...")),
    ("/a..b/.c/c.", dict(path="/a..b/.c/c.")),
    ("/%7Euser", dict(raw_path="/%7Euser", path="/~user")),
    ("/caf%C3%A9", dict(path="/caf\u00e9")),
    ("/%FF%fe", dict(raw_path="/%FF%fe", path="/\udcff\udcfe")),  # surrogateescape keeps the bytes
    ("/a%2Fb", dict(raw_path="/a%2Fb", path="/a/b")),
    ("/a%20b/../c", dict(raw_path="/c", path="/c")),
    ("/x/%25", dict(path="/x/%")),
    ("//double", dict(path="//double")),
    ("/~!$&'()*+,;=:@-._", dict(path="/~!$&'()*+,;=:@-._")),
]


@pytest.mark.parametrize("target, expected", TARGETS, ids=[t for t, _ in TARGETS])
def test_origin_form_targets(target: str, expected: dict[str, Any]) -> None:
    head = parse(request(f"GET {target} HTTP/1.1"))
    assert head.target == target
    for key, value in expected.items():
        assert getattr(head, key) == value, key


PATH_ERRORS = [
    "/%zz",
    "/%",
    "/a%",
    "/a%4",
    "/%4g",
    "/%00",
    "/a%00b",
    "/..",
    "/../a",
    "/a/../..",
    "/a/b/../../../c",
    "/%2e%2e",
    "/%2E%2E/etc",
    "/a/.%2e/b",
    "/a/%2e./b",
    "/%2e",
    "/a/%2e/b",
    "/a/..%2f..%2fetc",
    "/a%2f..%2f..",
    "/a/..%2F",
]


@pytest.mark.parametrize("target", PATH_ERRORS)
def test_path_errors(target: str) -> None:
    assert rejected(request(f"GET {target} HTTP/1.1")) == BAD


def test_decoded_path_never_holds_a_dot_segment() -> None:
    for target, _ in TARGETS:
        path = parse(request(f"GET {target} HTTP/1.1")).path
        assert not {".", ".."} & set(path.split("/")), target


def test_absolute_form_replaces_host() -> None:
    head = parse(request("GET http://origin.example:8080/p?q=1 HTTP/1.1", "Accept: */*", host="proxy.example"))
    assert (head.path, head.raw_path, head.query) == ("/p", "/p", "q=1")
    assert head.headers.get_all("host") == ["origin.example:8080"]
    assert head.headers.items()[0] == ("Host", "origin.example:8080")  # replaced in place


def test_absolute_form_adds_host_to_http10() -> None:
    head = parse(request("GET HTTPS://Example.ORG HTTP/1.0", host=None))
    assert head.headers.get_all("Host") == ["Example.ORG"]
    assert (head.path, head.query) == ("/", "")


def test_absolute_form_still_needs_host_in_http11() -> None:
    """RFC 9112 3.2: a 1.1 request without Host is a 400, whatever the target form."""
    assert rejected(request("GET http://a.example/ HTTP/1.1", host=None)) == BAD


def test_absolute_form_userinfo_is_named() -> None:
    """RFC 9110 4.2.4: userinfo in an http(s) URI is an error, and we say so."""
    with pytest.raises(ProtocolError, match="userinfo"):
        parse(request("GET http://user@a.example/ HTTP/1.1"))


def test_absolute_form_query_without_path() -> None:
    head = parse(request("GET http://a.example?x=1 HTTP/1.1"))
    assert (head.path, head.query) == ("/", "x=1")


def test_asterisk_form() -> None:
    head = parse(request("OPTIONS * HTTP/1.1"))
    assert (head.target, head.path, head.raw_path, head.query) == ("*", "*", "*", "")


def test_authority_form() -> None:
    head = parse(request("CONNECT a.example:443 HTTP/1.1", host="a.example:443"))
    assert (head.method, head.target, head.path, head.raw_path) == ("CONNECT", "a.example:443", "", "")
    head = parse(request("CONNECT [::1]:8443 HTTP/1.1", host="[::1]:8443"))
    assert head.target == "[::1]:8443"


@pytest.mark.parametrize("method", ["GET", "get", "M-SEARCH", "X.Y_Z~!", "PROPFIND"])
def test_method_is_any_token_kept_as_sent(method: str) -> None:
    assert parse(request(f"{method} / HTTP/1.1")).method == method


def test_versions() -> None:
    assert parse(request("GET / HTTP/1.1")).version == "HTTP/1.1"
    assert parse(request("GET / HTTP/1.0", host=None)).version == "HTTP/1.0"


def test_leading_empty_lines_are_skipped() -> None:
    data = b"\r\n\r\n" + request("GET /x HTTP/1.1")
    assert find_head_end(data, LIMITS) == len(data)
    assert parse_head(data, LIMITS).path == "/x"


# ---------------------------------------------------------------------------------------------
# Header fields

FIELD_ERRORS: list[tuple[str, bytes | str]] = [
    ("space-before-colon", "Transfer-Encoding : chunked"),
    ("tab-before-colon", "X-A\t: b"),
    ("obs-fold-space", "X-A: b\r\n c"),
    ("obs-fold-tab", "X-A: b\r\n\tc"),
    ("no-colon", "X-A b"),
    ("empty-name", ": b"),
    ("name-with-space", "X A: b"),
    ("name-with-paren", "X(A): b"),
    ("name-non-ascii", b"X-\xe9: b"),
    ("value-nul", b"X-A: a\x00b"),
    ("value-ctl", b"X-A: a\x1bb"),
    ("value-del", b"X-A: a\x7fb"),
    ("value-vertical-tab", b"X-A: \x0bb"),
    ("value-form-feed", b"X-A: b\x0c"),
]


@pytest.mark.parametrize("field", [c[1] for c in FIELD_ERRORS], ids=[c[0] for c in FIELD_ERRORS])
def test_field_errors(field: bytes | str) -> None:
    assert rejected(request("GET / HTTP/1.1", field)) == BAD


@pytest.mark.parametrize("fold", [b" folded", b"\tfolded", b" X-Name: looks like a field"])
def test_obs_fold_is_named_as_such(fold: bytes) -> None:
    """RFC 9112 5.2: a line starting with SP/HTAB continues the previous one; we refuse it."""
    with pytest.raises(ProtocolError, match="folding"):
        parse(request("GET / HTTP/1.1", "X-A: b", fold))


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
    ],
    ids=["cr-in-value", "lf-in-value", "lf-after-request-line", "lf-blank-line", "cr-cr-lf", "cr-on-blank-line"],
)
def test_bare_line_breaks_rejected_by_both_stages(data: bytes) -> None:
    """find_head_end catches them early; parse_head alone must still refuse them."""
    with pytest.raises(ProtocolError) as early:
        find_head_end(data, LIMITS)
    assert early.value.status == BAD
    with pytest.raises(ProtocolError) as late:
        parse_head(data if data.endswith(b"\r\n\r\n") else data + b"\r\n\r\n", LIMITS)
    assert late.value.status == BAD


def test_field_values_and_names() -> None:
    head = parse(
        request(
            "GET / HTTP/1.1",
            "X-Pad: \t  two  words \t",
            "X-Empty:",
            "x-CASE: Kept",
            b"X-Latin: caf\xe9",
            "X-Tab: a\tb",
            "X-Rep: 1",
            "X-Rep: 2",
        )
    )
    headers = head.headers
    assert headers.get("x-pad") == "two  words"
    assert headers.get("X-EMPTY") == ""
    assert ("x-CASE", "Kept") in headers.items()
    assert headers.get("x-latin") == "caf\u00e9"
    assert headers.get("x-tab") == "a\tb"
    assert headers.get_all("x-rep") == ["1", "2"]
    assert [name for name, _ in headers][:2] == ["Host", "X-Pad"]


def test_field_count_limit() -> None:
    limits = Limits(headers=3)
    assert len(parse(request("GET / HTTP/1.1", "A: 1", "B: 2"), limits).headers) == 3
    assert (
        rejected(request("GET / HTTP/1.1", "A: 1", "B: 2", "C: 3"), limits)
        == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    )


def test_head_size_limit() -> None:
    data = request("GET / HTTP/1.1", "X: " + "v" * 50)
    assert parse(data, Limits(header_bytes=len(data))).path == "/"
    assert rejected(data, Limits(header_bytes=len(data) - 1)) == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_request_line_limit() -> None:
    data = request("GET /abcdef HTTP/1.1")
    line_length = len("GET /abcdef HTTP/1.1")
    assert parse(data, Limits(request_line=line_length)).path == "/abcdef"
    assert rejected(data, Limits(request_line=line_length - 1)) == HTTPStatus.REQUEST_URI_TOO_LONG


# ---------------------------------------------------------------------------------------------
# Host


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "example.com:8080",
        "EXAMPLE.com",
        "127.0.0.1",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:8080",
        "[2001:db8::1]",
        "xn--bcher-kva.example",
        "under_score.example",
        "a.example:",
        "a.example:65535",
        "%41.example",
    ],
)
def test_valid_hosts(host: str) -> None:
    assert parse(request("GET / HTTP/1.1", host=host)).headers.get("host") == host


@pytest.mark.parametrize(
    "host",
    [
        "",
        "exa mple.com",
        "a/b",
        "a@b",
        "a?b",
        "a#b",
        "[::1",
        "::1",
        "[::g]",
        "[1.2.3.4]",
        "a:b",
        "a:80:80",
        "a:65536",
        "a:123456",
        "a\\b",
        "%zz.example",
        'a"b',
    ],
)
def test_invalid_hosts(host: str) -> None:
    assert rejected(request("GET / HTTP/1.1", host=host)) == BAD


def test_remembered_hosts_are_bounded_and_admit_no_bad_one() -> None:
    """Host values that passed are remembered (at most MAX_REMEMBERED_NAMES); others are checked."""
    for n in range(MAX_REMEMBERED_NAMES + 5):
        assert parse(request("GET / HTTP/1.1", host=f"h{n}.example")).headers.get("host") == f"h{n}.example"
    assert len(head_module._VALID_HOSTS) <= MAX_REMEMBERED_NAMES
    assert parse(request("GET / HTTP/1.1", host="h0.example"))  # remembered, still served
    for host in ("h0.example:99999", "h0.example/x", "h1.example:x"):
        assert rejected(request("GET / HTTP/1.1", host=host)) == BAD


def test_host_rules() -> None:
    assert rejected(request("GET / HTTP/1.1", host=None)) == BAD
    assert rejected(request("GET / HTTP/1.1", "Host: b.example")) == BAD
    assert rejected(request("GET / HTTP/1.0", "Host: a", "host: b", host=None)) == BAD
    assert rejected(request("GET / HTTP/1.0", host="bad host")) == BAD
    assert "host" not in parse(request("GET / HTTP/1.0", host=None)).headers


# ---------------------------------------------------------------------------------------------
# Framing: Content-Length and Transfer-Encoding (RFC 9112 6)

CONTENT_LENGTHS: list[tuple[list[str], int]] = [
    (["0"], 0),
    (["5"], 5),
    (["00012"], 12),
    (["5, 5"], 5),
    (["5", "5"], 5),
    (["5,5", " 5 "], 5),
    (["1" * 20], int("1" * 20)),
]


@pytest.mark.parametrize("values, length", CONTENT_LENGTHS)
def test_content_length(values: list[str], length: int) -> None:
    head = parse(request("POST / HTTP/1.1", *[f"Content-Length: {v}" for v in values]))
    assert (head.content_length, head.chunked) == (length, False)


@pytest.mark.parametrize(
    "values",
    [
        ["5, 6"],
        ["5", "6"],
        ["05", "5"],
        ["-1"],
        ["+5"],
        ["0x10"],
        ["1e3"],
        ["1 0"],
        [""],
        ["5,"],
        [",5"],
        ["1" * 21],
        ["\u00b2"],
        ["5;"],
        ["five"],
    ],
)
def test_invalid_content_length(values: list[str]) -> None:
    assert rejected(request("POST / HTTP/1.1", *[f"Content-Length: {v}" for v in values])) == BAD


def test_no_framing_means_no_body() -> None:
    head = parse(request("POST / HTTP/1.1"))
    assert (head.content_length, head.chunked) == (None, False)
    assert isinstance(body_reader(head, source(b"ignored"), 10, limits=LIMITS), EmptyBody)


@pytest.mark.parametrize("values", [["chunked"], ["Chunked"], ["CHUNKED"], [" chunked "], [", chunked"]])
def test_chunked(values: list[str]) -> None:
    head = parse(request("POST / HTTP/1.1", *[f"Transfer-Encoding: {v}" for v in values]))
    assert (head.content_length, head.chunked) == (None, True)


TRANSFER_ENCODING_ERRORS: list[tuple[list[str], HTTPStatus]] = [
    (["gzip, chunked"], HTTPStatus.NOT_IMPLEMENTED),
    (["identity"], HTTPStatus.NOT_IMPLEMENTED),
    (["chunked;x"], HTTPStatus.NOT_IMPLEMENTED),
    (["xchunked"], HTTPStatus.NOT_IMPLEMENTED),
    (["chunked, gzip"], HTTPStatus.NOT_IMPLEMENTED),
    (["gzip"], HTTPStatus.NOT_IMPLEMENTED),
    (["chunked, chunked"], BAD),
    (["chunked", "chunked"], BAD),
    ([""], BAD),
    ([" , "], BAD),
]


@pytest.mark.parametrize("values, status", TRANSFER_ENCODING_ERRORS)
def test_transfer_encoding_errors(values: list[str], status: HTTPStatus) -> None:
    assert rejected(request("POST / HTTP/1.1", *[f"Transfer-Encoding: {v}" for v in values])) == status


@pytest.mark.parametrize(
    "fields",
    [
        ["Content-Length: 5", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: chunked", "Content-Length: 5"],
        ["Transfer-Encoding: chunked", "Content-Length: 0"],
    ],
)
def test_content_length_with_transfer_encoding_is_smuggling(fields: list[str]) -> None:
    assert rejected(request("POST / HTTP/1.1", *fields)) == BAD


def test_transfer_encoding_in_http10() -> None:
    assert rejected(request("POST / HTTP/1.0", "Transfer-Encoding: chunked", host=None)) == BAD


# ---------------------------------------------------------------------------------------------
# Connection and Expect

KEEP_ALIVE = [
    ("HTTP/1.1", [], True),
    ("HTTP/1.1", ["close"], False),
    ("HTTP/1.1", ["Close"], False),
    ("HTTP/1.1", ["keep-alive, CLOSE"], False),
    ("HTTP/1.1", ["Upgrade", "close"], False),
    ("HTTP/1.1", ["keep-alive"], True),
    ("HTTP/1.1", ["closed"], True),
    ("HTTP/1.0", [], False),
    ("HTTP/1.0", ["keep-alive"], True),
    ("HTTP/1.0", ["Keep-Alive"], True),
    ("HTTP/1.0", ["te, keep-alive"], True),
    ("HTTP/1.0", ["keep-alive", "close"], False),
]


@pytest.mark.parametrize("version, values, keep_alive", KEEP_ALIVE)
def test_keep_alive(version: str, values: list[str], keep_alive: bool) -> None:
    head = parse(request(f"GET / {version}", *[f"Connection: {v}" for v in values]))
    assert head.keep_alive is keep_alive


@pytest.mark.parametrize(
    "version, value, expected",
    [
        ("HTTP/1.1", None, False),
        ("HTTP/1.1", "100-continue", True),
        ("HTTP/1.1", "100-Continue", True),
        ("HTTP/1.1", " 100-CONTINUE ", True),
        ("HTTP/1.0", "100-continue", False),  # RFC 9110 10.1.1: ignored in 1.0
    ],
)
def test_expect_continue(version: str, value: str | None, expected: bool) -> None:
    fields = [f"Expect: {value}"] if value is not None else []
    assert parse(request(f"POST / {version}", *fields)).expect_continue is expected


@pytest.mark.parametrize("value", ["200-ok", "100-continue, x", "100-continuex", "100-continue; x=1"])
def test_unknown_expectation(value: str) -> None:
    assert rejected(request("POST / HTTP/1.1", f"Expect: {value}")) == HTTPStatus.EXPECTATION_FAILED


# ---------------------------------------------------------------------------------------------
# find_head_end: incremental and early rejection


def test_find_head_end_waits_for_the_blank_line() -> None:
    data = request("GET / HTTP/1.1", "Accept: */*")
    for cut in range(len(data)):
        assert find_head_end(data[:cut], LIMITS) == -1, cut
    assert find_head_end(data + b"BODY", LIMITS) == len(data)
    assert find_head_end(bytearray(data), LIMITS) == len(data)


def test_find_head_end_returns_the_first_head_of_a_pipeline() -> None:
    first = request("GET /1 HTTP/1.1")
    assert find_head_end(first + request("GET /2 HTTP/1.1"), LIMITS) == len(first)


EARLY: list[tuple[str, bytes, Limits, HTTPStatus]] = [
    ("request-line-too-long", b"GET /" + b"a" * 100, Limits(request_line=50), HTTPStatus.REQUEST_URI_TOO_LONG),
    (
        "head-too-large",
        b"GET / HTTP/1.1\r\nX: " + b"v" * 200,
        Limits(header_bytes=100),
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
    ),
    ("only-empty-lines", b"\r\n" * 60, Limits(header_bytes=100), HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE),
    ("bare-lf", b"GET / HTTP/1.1\nHo", LIMITS, BAD),
    ("bare-lf-first", b"\n", LIMITS, BAD),
    ("bare-cr", b"GET / HTTP/1.1\rHo", LIMITS, BAD),
    ("nul-in-target", b"GET /\x00", LIMITS, BAD),
    ("nul-in-header", b"GET / HTTP/1.1\r\nX: \x00", LIMITS, BAD),
]


@pytest.mark.parametrize("data, limits, status", [c[1:] for c in EARLY], ids=[c[0] for c in EARLY])
def test_find_head_end_rejects_early(data: bytes, limits: Limits, status: HTTPStatus) -> None:
    """Raised without waiting for the end of the head, and at the first byte that proves it."""
    with pytest.raises(ProtocolError) as info:
        find_head_end(data, limits)
    assert info.value.status == status
    first = next(cut for cut in range(len(data) + 1) if raises(data[:cut], limits))
    for cut in range(first, len(data) + 1):
        with pytest.raises(ProtocolError) as again:
            find_head_end(data[:cut], limits)
        assert again.value.status == status


def raises(data: bytes, limits: Limits) -> bool:
    try:
        find_head_end(data, limits)
    except ProtocolError:
        return True
    return False


def test_dangling_cr_is_only_incomplete() -> None:
    assert find_head_end(b"GET / HTTP/1.1\r", LIMITS) == -1
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", LIMITS) == -1
    assert find_head_end(b"\r", LIMITS) == -1


def test_request_line_limit_counts_the_line_without_crlf() -> None:
    limits = Limits(request_line=20)
    line = b"GET /" + b"a" * 6 + b" HTTP/1.1"  # exactly 20 bytes
    assert find_head_end(line + b"\r", limits) == -1
    assert find_head_end(line + b"\r\nHost: a\r\n\r\n", limits) > 0
    with pytest.raises(ProtocolError):
        find_head_end(line + b"a\r", limits)


def test_earliest_error_wins_whatever_the_split() -> None:
    """A bare LF early and an oversize later: the same error whole or byte by byte."""
    data = b"GET / HTTP/1.1\nX: " + b"v" * 300
    limits = Limits(header_bytes=100)
    with pytest.raises(ProtocolError) as whole:
        find_head_end(data, limits)
    assert whole.value.status == BAD
    data = b"GET / HTTP/1.1\r\nX: " + b"v" * 300 + b"\n"
    with pytest.raises(ProtocolError) as whole:
        find_head_end(data, limits)
    assert whole.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


def test_parse_head_rejects_incomplete_or_empty_heads() -> None:
    for data in (b"", b"\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n", b"GET / HTTP/1.1\r\n\r\nX: y\r\n\r\n"):
        with pytest.raises(ProtocolError):
            parse_head(data, LIMITS)


# ---------------------------------------------------------------------------------------------
# Body readers


def body_for(
    fields: list[str],
    payload: bytes,
    limit: int | None = None,
    *,
    on_first_read: Callable[[], None] | None = None,
    limits: Limits = LIMITS,
) -> Any:
    head = parse(request("POST / HTTP/1.1", *fields))
    return body_reader(head, source(payload), limit, on_first_read, limits=limits)


def test_content_length_body() -> None:
    body = body_for(["Content-Length: 11"], b"hello world and more")
    assert isinstance(body, ContentLengthBody) and body.length == 11 and not body.done
    assert body.read(5) == b"hello"
    assert body.read(100) == b" world"
    assert body.done and body.read() == b"" and body.readline() == b""


def test_content_length_readline() -> None:
    body = body_for(["Content-Length: 14"], b"one\ntwo\nthree\nNEXT")
    assert [body.readline(), body.readline(2), body.readline(), body.readline()] == [
        b"one\n",
        b"tw",
        b"o\n",
        b"three\n",
    ]
    assert body.readline() == b""


def test_content_length_truncated() -> None:
    body = body_for(["Content-Length: 10"], b"short")
    with pytest.raises(ProtocolError, match="incomplete body") as info:
        body.read()
    assert info.value.status == BAD
    body = body_for(["Content-Length: 10"], b"ab\ncd")
    assert body.readline() == b"ab\n"
    with pytest.raises(ProtocolError, match="incomplete body"):
        body.readline()


def test_content_length_over_limit_at_first_read() -> None:
    calls: list[str] = []
    body = body_for(["Content-Length: 11"], b"hello world", limit=10, on_first_read=lambda: calls.append("100"))
    with pytest.raises(PayloadTooLarge):
        body.read(1)
    assert calls == [], "no 100 Continue for a body that will be refused"
    assert body_for(["Content-Length: 10"], b"0123456789", limit=10).read() == b"0123456789"


def test_limit_may_be_lowered_after_creation() -> None:
    body = body_for(["Content-Length: 10"], b"0123456789", limit=100)
    body.limit = 5
    with pytest.raises(PayloadTooLarge):
        body.read()
    chunked = body_for(["Transfer-Encoding: chunked"], b"a\r\n0123456789\r\n0\r\n\r\n", limit=100)
    chunked.limit = 5
    with pytest.raises(PayloadTooLarge):
        chunked.read()


class RecordingSource:
    """Logs every pull, to prove the first-read hook runs before the first byte is taken."""

    def __init__(self, data: bytes, log: list[str]) -> None:
        self._inner = source(data)
        self._log = log

    def read1(self, size: int) -> bytes:
        self._log.append("read1")
        return self._inner.read1(size)

    def readline(self, size: int) -> bytes:
        self._log.append("readline")
        return self._inner.readline(size)


@pytest.mark.parametrize(
    "fields, payload",
    [
        (["Content-Length: 3"], b"abc"),
        (["Transfer-Encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n"),
    ],
)
def test_on_first_read_runs_once_before_any_pull(fields: list[str], payload: bytes) -> None:
    log: list[str] = []
    head = parse(request("POST / HTTP/1.1", "Expect: 100-continue", *fields))
    body = body_reader(head, RecordingSource(payload, log), 100, lambda: log.append("continue"), limits=LIMITS)
    assert log == []
    assert body.read(0) == b"" and log == []
    assert body.read(1) == b"a"
    assert log[0] == "continue"
    assert body.read() == b"bc"
    assert log.count("continue") == 1


def test_empty_body_never_reads() -> None:
    calls: list[str] = []
    head = parse(request("POST / HTTP/1.1", "Content-Length: 0", "Expect: 100-continue"))
    body = body_reader(
        head, RecordingSource(b"NEXT REQUEST", calls), 10, lambda: calls.append("continue"), limits=LIMITS
    )
    assert isinstance(body, EmptyBody)
    assert (body.read(), body.readline(), body.done, body.length, len(body.trailers)) == (b"", b"", True, 0, 0)
    assert calls == []


CHUNKED_OK: list[tuple[str, bytes, bytes, list[tuple[str, str]]]] = [
    ("simple", b"5\r\nhello\r\n0\r\n\r\n", b"hello", []),
    ("several", b"3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n", b"abcd", []),
    ("empty", b"0\r\n\r\n", b"", []),
    ("hex-case", b"A\r\n0123456789\r\nb\r\nabcdefghijk\r\n0\r\n\r\n", b"0123456789abcdefghijk", []),
    ("leading-zeros", b"0003\r\nabc\r\n000\r\n\r\n", b"abc", []),
    ("extension-token", b"3;name=value\r\nabc\r\n0;x\r\n\r\n", b"abc", []),
    ("extension-quoted", b'3;a="q \\" ;x"\r\nabc\r\n0\r\n\r\n', b"abc", []),
    ("extension-bws", b"3 ; a = b ;c\r\nabc\r\n0\r\n\r\n", b"abc", []),
    ("extension-many", b'3;a;b=1;c=""\r\nabc\r\n0\r\n\r\n', b"abc", []),
    ("trailers", b"3\r\nabc\r\n0\r\nX-Sum:  123 \r\nx-sum: 4\r\n\r\n", b"abc", [("X-Sum", "123"), ("x-sum", "4")]),
    ("binary", b"4\r\n\r\n\x00\n\r\n0\r\n\r\n", b"\r\n\x00\n", []),
    ("16-digit-size", b"0000000000000003\r\nabc\r\n0\r\n\r\n", b"abc", []),
]


@pytest.mark.parametrize("payload, data, trailers", [c[1:] for c in CHUNKED_OK], ids=[c[0] for c in CHUNKED_OK])
def test_chunked_body(payload: bytes, data: bytes, trailers: list[tuple[str, str]]) -> None:
    body = body_for(["Transfer-Encoding: chunked"], payload + b"NEXT")
    assert isinstance(body, ChunkedBody) and body.length is None and not body.done
    assert body.read() == data
    assert body.done and body.trailers.items() == trailers
    assert body.read() == b""
    again = body_for(["Transfer-Encoding: chunked"], payload)
    assert b"".join(iter(lambda: again.read(1), b"")) == data


def test_chunked_trailers_stay_out_of_headers() -> None:
    head = parse(request("POST / HTTP/1.1", "Transfer-Encoding: chunked"))
    body = body_reader(head, source(b"0\r\nHost: evil.example\r\nContent-Length: 5\r\n\r\n"), None, limits=LIMITS)
    assert body.read() == b""
    assert body.trailers.get_all("host") == ["evil.example"]
    assert head.headers.get_all("host") == ["example.com"] and "content-length" not in head.headers


def test_chunked_readline_across_chunks() -> None:
    payload = b"4\r\non\ne\r\n3\r\n li\r\n5\r\nne\ntw\r\n1\r\no\r\n0\r\n\r\n"
    body = body_for(["Transfer-Encoding: chunked"], payload)
    assert body.readline() == b"on\n"
    assert body.readline() == b"e line\n"
    assert body.readline(1) == b"t"
    assert body.readline() == b"wo"
    assert body.readline() == b"" and body.done


def test_chunked_read_sizes_span_chunks() -> None:
    body = body_for(["Transfer-Encoding: chunked"], b"2\r\nab\r\n2\r\ncd\r\n2\r\nef\r\n0\r\n\r\n")
    assert [body.read(3), body.read(3), body.read(3)] == [b"abc", b"def", b""]


CHUNKED_ERRORS: list[tuple[str, bytes, HTTPStatus]] = [
    ("0x-prefix", b"0x5\r\nhello\r\n0\r\n\r\n", BAD),
    ("negative", b"-1\r\nx\r\n0\r\n\r\n", BAD),
    ("plus", b"+5\r\nhello\r\n0\r\n\r\n", BAD),
    ("leading-space", b" 5\r\nhello\r\n0\r\n\r\n", BAD),
    ("trailing-space", b"5 \r\nhello\r\n0\r\n\r\n", BAD),
    ("leading-tab", b"\t5\r\nhello\r\n0\r\n\r\n", BAD),
    ("empty-size", b"\r\nhello\r\n0\r\n\r\n", BAD),
    ("not-hex", b"5g\r\nhello\r\n0\r\n\r\n", BAD),
    ("17-digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n", BAD),
    ("size-lf-only", b"5\nhello\r\n0\r\n\r\n", BAD),
    ("data-lf-only", b"5\r\nhello\n0\r\n\r\n", BAD),
    ("data-no-crlf", b"5\r\nhelloXX0\r\n\r\n", BAD),
    ("data-too-long", b"3\r\nhello\r\n0\r\n\r\n", BAD),
    ("last-chunk-lf-only", b"5\r\nhello\r\n0\n\n", BAD),
    ("size-bare-cr", b"5\rx\r\nhello\r\n0\r\n\r\n", BAD),
    ("extension-no-name", b"5;=x\r\nhello\r\n0\r\n\r\n", BAD),
    ("extension-bad-quote", b'5;a="x\r\nhello\r\n0\r\n\r\n', BAD),
    ("extension-ctl", b"5;a=\x01\r\nhello\r\n0\r\n\r\n", BAD),
    ("extension-line-too-long", b"5;a=" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n", BAD),
    ("trailer-obs-fold", b"0\r\nX: a\r\n b\r\n\r\n", BAD),
    ("trailer-space-before-colon", b"0\r\nX : a\r\n\r\n", BAD),
    ("trailer-no-colon", b"0\r\nX\r\n\r\n", BAD),
    ("trailer-ctl", b"0\r\nX: \x01\r\n\r\n", BAD),
    ("trailer-bare-lf", b"0\r\nX: a\n\r\n", BAD),
    ("trailer-bare-cr", b"0\r\nX: a\rb\r\n\r\n", BAD),
    ("eof-in-size", b"5", BAD),
    ("eof-in-data", b"5\r\nhel", BAD),
    ("eof-before-crlf", b"5\r\nhello", BAD),
    ("eof-half-crlf", b"5\r\nhello\r", BAD),
    ("eof-before-last-chunk", b"5\r\nhello\r\n", BAD),
    ("eof-in-trailers", b"5\r\nhello\r\n0\r\nX: a\r\n", BAD),
    ("eof-nothing", b"", BAD),
]


@pytest.mark.parametrize("payload, status", [c[1:] for c in CHUNKED_ERRORS], ids=[c[0] for c in CHUNKED_ERRORS])
def test_chunked_errors(payload: bytes, status: HTTPStatus) -> None:
    for read in (lambda body: body.read(), lambda body: b"".join(iter(body.readline, b""))):
        body = body_for(["Transfer-Encoding: chunked"], payload)
        with pytest.raises(ProtocolError) as info:
            read(body)
        assert info.value.status == status


def test_chunked_limit() -> None:
    payload = b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"
    assert body_for(["Transfer-Encoding: chunked"], payload, limit=10).read() == b"helloworld"
    body = body_for(["Transfer-Encoding: chunked"], payload, limit=9)
    assert body.read(5) == b"hello"
    with pytest.raises(PayloadTooLarge):
        body.read(1)  # raised when the second chunk announces its size, before its data
    huge = body_for(["Transfer-Encoding: chunked"], b"ffffffffffffffff\r\nhello", limit=10**6)
    with pytest.raises(PayloadTooLarge):
        huge.read()


def test_chunked_extension_and_trailer_budget() -> None:
    limits = Limits(header_bytes=40, headers=2)
    ok = b"1;" + b"e" * 20 + b"\r\na\r\n0;" + b"f" * 17 + b"\r\n\r\n"  # 39 extension bytes
    assert body_for(["Transfer-Encoding: chunked"], ok, limits=limits).read() == b"a"
    over = b"1;" + b"e" * 20 + b"\r\na\r\n0;" + b"f" * 19 + b"\r\n\r\n"
    with pytest.raises(ProtocolError, match="extensions"):
        body_for(["Transfer-Encoding: chunked"], over, limits=limits).read()
    big_trailer = b"0\r\nX: " + b"t" * 40 + b"\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        body_for(["Transfer-Encoding: chunked"], big_trailer, limits=limits).read()
    assert info.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    many = b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        body_for(["Transfer-Encoding: chunked"], many, limits=limits).read()
    assert info.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    two = body_for(["Transfer-Encoding: chunked"], b"0\r\nA: 1\r\nB: 2\r\n\r\n", limits=limits)
    assert two.read() == b"" and len(two.trailers) == 2


# ---------------------------------------------------------------------------------------------
# Responses


def test_serialize_response_head() -> None:
    assert (
        serialize_response_head("HTTP/1.1", 200, None, [("Content-Type", "text/plain"), ("Content-Length", "2")])
        == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n"
    )
    assert serialize_response_head("HTTP/1.0", HTTPStatus.NOT_FOUND, None, []) == b"HTTP/1.0 404 Not Found\r\n\r\n"
    assert serialize_response_head("HTTP/1.1", 299, None, []) == b"HTTP/1.1 299 \r\n\r\n"
    assert serialize_response_head("HTTP/1.1", 200, "Fine\tThanks", []) == b"HTTP/1.1 200 Fine\tThanks\r\n\r\n"
    assert (
        serialize_response_head("HTTP/1.1", 200, "", [("X-Latin", "caf\u00e9"), ("X-Empty", "")])
        == b"HTTP/1.1 200 \r\nX-Latin: caf\xe9\r\nX-Empty: \r\n\r\n"
    )


def test_serialized_head_parses_back() -> None:
    """What we write is what a strict parser reads (http.client here)."""
    import http.client

    raw = serialize_response_head(
        "HTTP/1.1",
        201,
        None,
        [("Location", "/x"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Length", "0")],
    )
    response = http.client.HTTPResponse(FakeSocket(raw))  # type: ignore[arg-type]
    response.begin()
    assert (response.status, response.reason) == (201, "Created")
    assert response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]


class FakeSocket:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return source(self._data)


@pytest.mark.parametrize(
    "version, status, reason, headers",
    [
        ("HTTP/1.1", 200, None, [("X-Evil", "a\r\nSet-Cookie: pwned=1")]),
        ("HTTP/1.1", 200, None, [("X-Evil", "a\nb")]),
        ("HTTP/1.1", 200, None, [("X-Evil", "a\rb")]),
        ("HTTP/1.1", 200, None, [("X-Evil", "a\x00b")]),
        ("HTTP/1.1", 200, None, [("X-Evil\r\nSet-Cookie", "x")]),
        ("HTTP/1.1", 200, None, [("Bad Name", "x")]),
        ("HTTP/1.1", 200, None, [("Bad:Name", "x")]),
        ("HTTP/1.1", 200, None, [("", "x")]),
        ("HTTP/1.1", 200, None, [("X-Snowman", "\u2603")]),
        ("HTTP/1.1", 200, "OK\r\nSet-Cookie: pwned=1", []),
        ("HTTP/1.1", 200, "OK\n", []),
        ("HTTP/1.1", 200, "OK\x00", []),
        ("HTTP/1.1", 99, None, []),
        ("HTTP/1.1", 1000, None, []),
        ("HTTP/2", 200, None, []),
        ("HTTP/1.1\r\nX: y", 200, None, []),
    ],
)
def test_serialize_refuses_injection(
    version: str, status: int, reason: str | None, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(ValueError):
        serialize_response_head(version, status, reason, headers)


def test_encode_chunk() -> None:
    assert encode_chunk(b"") == b""
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 4096) == b"1000\r\n" + b"x" * 4096 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    wire = encode_chunk(b"one\n") + encode_chunk(b"") + encode_chunk(b"two") + LAST_CHUNK
    body = ChunkedBody(source(wire), None, limits=LIMITS)
    assert body.read() == b"one\ntwo" and body.done
