"""The CGI response parser (porch.handlers.cgi.output): tables of script output plus a fuzz invariant."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porch.handlers.cgi.output import (
    CGIHead,
    HeaderBlockReader,
    MalformedOutput,
    ResponseKind,
    parse_cgi_head,
    parse_nph_head,
)


def read_all(output: bytes, limit: int = 65536, step: int | None = None) -> tuple[bytes, bytes] | None:
    """Feed ``output`` to a reader whole or ``step`` bytes at a time; the (block, rest) found."""
    reader = HeaderBlockReader(limit)
    if step is None:
        return reader.feed(output)
    for start in range(0, len(output), step):
        found = reader.feed(output[start : start + step])
        if found is not None:
            block, rest = found
            return block, rest + output[start + step :]
    return None


class TestHeaderBlockReader:
    @pytest.mark.parametrize(
        "output, block, rest",
        [
            (b"Content-Type: text/plain\n\nbody", b"Content-Type: text/plain\n", b"body"),
            (b"Content-Type: text/plain\r\n\r\nbody", b"Content-Type: text/plain\r\n", b"body"),
            (b"A: 1\r\nB: 2\n\r\nx\n\ny", b"A: 1\r\nB: 2\n", b"x\n\ny"),  # mixed newlines
            (b"\nbody", b"", b"body"),  # an empty block: found here, refused by the parser
            (b"Status: 204\n\n", b"Status: 204\n", b""),
        ],
    )
    def test_finds_the_blank_line(self, output: bytes, block: bytes, rest: bytes) -> None:
        assert read_all(output) == (block, rest)
        assert read_all(output, step=1) == (block, rest)

    def test_waits_for_more(self) -> None:
        reader = HeaderBlockReader(100)
        assert reader.feed(b"Content-Type: text/plain\r") is None
        assert reader.feed(b"\n") is None
        assert reader.received == 26
        assert reader.feed(b"\r\nrest") == (b"Content-Type: text/plain\r\n", b"rest")

    @pytest.mark.parametrize("output", [b"X" * 101, b"A: " + b"b" * 200 + b"\n\n", b"A: b\n" * 30 + b"\n"])
    def test_limit(self, output: bytes) -> None:
        with pytest.raises(MalformedOutput):
            read_all(output, limit=100)
        with pytest.raises(MalformedOutput):
            read_all(output, limit=100, step=7)

    def test_block_of_exactly_the_limit_is_accepted(self) -> None:
        output = b"Content-Type: a/b\n\n"
        assert read_all(output, limit=len(output)) is not None


class TestParseCGIHead:
    def test_document(self) -> None:
        head = parse_cgi_head(b"Content-Type: text/html\r\nX-Custom:  spaced value \t\r\n")
        assert head.status is None and head.reason is None
        assert head.fields == [("Content-Type", "text/html"), ("X-Custom", "spaced value")]
        assert head.kind() is ResponseKind.DOCUMENT and head.response_status() == 200

    def test_status_with_and_without_reason(self) -> None:
        assert parse_cgi_head(b"Status: 201 Created\nContent-Type: a/b\n").status == 201
        assert parse_cgi_head(b"Status: 201 Created\nContent-Type: a/b\n").reason == "Created"
        head = parse_cgi_head(b"status: 404\n")
        assert (head.status, head.reason, head.fields) == (404, None, [])

    def test_repeated_other_fields_are_kept_in_order(self) -> None:
        head = parse_cgi_head(b"Content-Type: a/b\nSet-Cookie: a=1\nSet-Cookie: b=2\n")
        assert [v for n, v in head.fields if n == "Set-Cookie"] == ["a=1", "b=2"]

    @pytest.mark.parametrize(
        "block, kind, status",
        [
            (b"Location: /other/path?q=1\n", ResponseKind.LOCAL_REDIRECT, 302),
            (b"Location: http://example.org/\n", ResponseKind.CLIENT_REDIRECT, 302),
            (b"Location: //evil.example/\n", ResponseKind.CLIENT_REDIRECT, 302),  # a network path
            (b"Location: /x\nSet-Cookie: a=1\n", ResponseKind.CLIENT_REDIRECT, 302),
            (b"Location: /x\nContent-Type: text/html\n", ResponseKind.CLIENT_REDIRECT, 302),
            (b"Status: 301 Moved\nLocation: http://e.org/\nContent-Type: a/b\n", ResponseKind.DOCUMENT, 301),
            (b"Status: 201 Created\nLocation: /new/7\n", ResponseKind.DOCUMENT, 201),
        ],
    )
    def test_response_kinds(self, block: bytes, kind: ResponseKind, status: int) -> None:
        head = parse_cgi_head(block)
        assert head.kind() is kind
        assert head.response_status() == status

    def test_null_values_count_as_absent(self) -> None:
        # RFC 3875 6.3: "A NULL field value is equivalent to a field not being sent."
        head = parse_cgi_head(b"Status:\nContent-Type: a/b\nX-Empty:\n")
        assert head.status is None and head.fields == [("Content-Type", "a/b")]
        with pytest.raises(MalformedOutput):
            parse_cgi_head(b"Content-Type:\n")

    def test_server_owned_and_extension_fields_are_dropped(self) -> None:
        head = parse_cgi_head(b"Content-Type: a/b\nDate: yesterday\nServer: x\nX-CGI-Thing: 1\n")
        assert head.fields == [("Content-Type", "a/b")]

    def test_length_matches(self) -> None:
        assert parse_cgi_head(b"Content-Type: a/b\n").length_matches(123)  # none declared
        head = parse_cgi_head(b"Content-Type: a/b\nContent-Length: 5\n")
        assert head.length_matches(5) and not head.length_matches(4)

    @pytest.mark.parametrize(
        "lengths",
        [
            b"Content-Length: 5\nContent-Length: 5\n",
            b"Content-Length: 5, 5\n",
            b"content-length: 5\nContent-Length:5 ,\t5\n",
        ],
    )
    def test_identical_lengths_are_folded_into_one(self, lengths: bytes) -> None:
        # RFC 9110 8.6: a repeated identical length is one length, given once where the first was.
        for head in (
            parse_cgi_head(b"Content-Type: a/b\n" + lengths + b"X-After: 1\n"),
            parse_nph_head(b"HTTP/1.1 200 OK\nContent-Type: a/b\n" + lengths + b"X-After: 1\n"),
        ):
            assert [(n.lower(), v) for n, v in head.fields] == [
                ("content-type", "a/b"),
                ("content-length", "5"),
                ("x-after", "1"),
            ]
            assert head.length_matches(5) and not head.length_matches(55)

    @pytest.mark.parametrize(
        "lengths, reason",
        [
            (b"Content-Length: \xb2\n", "invalid Content-Length"),  # latin-1 "\u00b2": "\u00b2".isdigit()
            (b"Content-Length: \xb9\xb3\n", "invalid Content-Length"),
            (b"Content-Length: 5\nContent-Length: \xb2\n", "invalid Content-Length"),
            (b"Content-Length: +5\n", "invalid Content-Length"),
            (b"Content-Length: 0x5\n", "invalid Content-Length"),
            (b"Content-Length: 5 5\n", "invalid Content-Length"),
            (b"Content-Length: 5,\n", "invalid Content-Length"),
            (b"Content-Length: " + b"9" * 21 + b"\n", "invalid Content-Length"),  # beyond any int() limit too
            (b"Content-Length: 5\nContent-Length: 6\n", "differing Content-Length values 5 and 6"),
            (b"Content-Length: 5\nX-A: 1\ncontent-length: 6\n", "differing Content-Length values 5 and 6"),
            (b"Content-Length: 5, 6\n", "differing Content-Length values 5 and 6"),
            (b"Content-Length: 5\nContent-Length: 05\n", "differing Content-Length values 05 and 5"),
        ],
    )
    def test_bad_or_differing_lengths_are_malformed(self, lengths: bytes, reason: str) -> None:
        for parse, block in (
            (parse_cgi_head, b"Content-Type: a/b\n" + lengths),
            (parse_nph_head, b"HTTP/1.1 200 OK\n" + lengths),
        ):
            with pytest.raises(MalformedOutput, match=reason):
                parse(block)

    def test_latin1_values_survive(self) -> None:
        head = parse_cgi_head(b"Content-Type: a/b\nX-Name: caf\xe9\n")
        assert head.get("x-name") == "caf\xe9"

    @pytest.mark.parametrize(
        "block",
        [
            b"",  # no CGI field at all (RFC 3875 6.3: at least one)
            b"X-Only: other\n",
            b"not a header\n",
            b": no name\n",
            b"Content-Type : a/b\n",  # whitespace before the colon
            b"Content-Type: a/b\n folded continuation\n",
            b"Content-Type: a/b\nContent-Type: c/d\n",  # a CGI field twice
            b"Status: 200\nStatus: 201\n",
            b"Location: /a\nLocation: /b\n",
            b"Status: abc\n",
            b"Status: 20\n",
            b"Status: 2000 Big\n",
            b"Status: 100 Continue\n",  # not a final status
            b"Status: 600 Beyond\n",
            b"Content-Type: a/b\nX-Bad: a\x00b\n",
            b"Content-Type: a/b\nX-Bad: a\rb\n",
            b"Content-Type: a/b\nX-Bad: a\x7fb\n",
            b"Content-Type: a/b\nContent-Length: 12x\n",
            b"HTTP/1.1 200 OK\nContent-Type: a/b\n",  # an NPH head from a non-NPH script
            b"Bad\x80Name: a\nContent-Type: a/b\n",
        ],
    )
    def test_malformed(self, block: bytes) -> None:
        with pytest.raises(MalformedOutput):
            parse_cgi_head(block)


class TestParseNPHHead:
    def test_status_line_and_fields(self) -> None:
        head = parse_nph_head(b"HTTP/1.1 299 Very Custom\r\nContent-Type: a/b\r\nStatus: kept\r\n")
        assert (head.status, head.reason) == (299, "Very Custom")
        assert head.fields == [("Content-Type", "a/b"), ("Status", "kept")]

    def test_reason_optional(self) -> None:
        assert parse_nph_head(b"HTTP/1.0 204\n").reason is None

    @pytest.mark.parametrize(
        "block",
        [
            b"",
            b"Content-Type: a/b\n",
            b"HTTP/1.1 OK\n",
            b"HTTP/1.1  200 OK\n",
            b"HTTP/11 200 OK\n",
            b"HTTP/1.1 101 Switching\n",
            b"HTTP/1.1 200 O\x01K\n",
            b"HTTP/1.1 200 OK\nbad line\n",
        ],
    )
    def test_malformed(self, block: bytes) -> None:
        with pytest.raises(MalformedOutput):
            parse_nph_head(block)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_header_block_parses_or_is_malformed(block: bytes) -> None:
    for parse in (parse_cgi_head, parse_nph_head):
        try:
            head = parse(block)
        except MalformedOutput:
            continue
        assert isinstance(head, CGIHead)
        for name, value in head.fields:
            assert name and "\r" not in value and "\n" not in value and "\x00" not in value
        lengths = [value for name, value in head.fields if name.lower() == "content-length"]
        assert len(lengths) <= 1 and all(value.isascii() and value.isdigit() for value in lengths)
        assert head.status is None or 200 <= head.status <= 599


field_line = st.one_of(
    st.sampled_from(
        [b"Content-Type: text/plain", b"Status: 201 Created", b"Location: /x", b"X-A: 1", b"bad", b"Set-Cookie: a=b"]
    ),
    st.binary(max_size=20).filter(lambda line: b"\n" not in line),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(field_line, max_size=6),
    st.sampled_from([b"\n", b"\r\n"]),
    st.binary(max_size=40),
    st.integers(min_value=1, max_value=17),
)
def test_reading_in_pieces_equals_reading_whole(lines: list[bytes], newline: bytes, body: bytes, step: int) -> None:
    output = b"".join(line + newline for line in lines) + newline + body
    try:
        whole = read_all(output, limit=200)
    except MalformedOutput:
        with pytest.raises(MalformedOutput):
            read_all(output, limit=200, step=step)
        return
    assert read_all(output, limit=200, step=step) == whole
