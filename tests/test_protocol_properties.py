"""Properties of the request parser (porch.http.head, porch.http.body) and the chunk encoder,
checked with hypothesis (derandomized, so CI is deterministic).

1. Any bytes -- random, or a valid request mutated -- either parse (head and body) or raise an
   ``HTTPError`` (``ProtocolError`` / ``PayloadTooLarge``), never any other exception.
2. The outcome of ``find_head_end`` does not depend on how the bytes were split into reads.
3. Whatever goes through ``encode_chunk`` + ``LAST_CHUNK`` comes back out of ``ChunkedBody``
   unchanged, however the wire bytes are split and however the body is read.
"""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_request_corpus import VALID, PieceSource

from porch.config.settings import Limits
from porch.http.body import ChunkedBody, body_reader
from porch.http.errors import HTTPError
from porch.http.head import find_head_end, parse_head
from porch.http.response import LAST_CHUNK, encode_chunk

DETERMINISTIC = settings(
    derandomize=True, max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
LIMITS = Limits(request_line=512, header_bytes=2048, headers=20, body=4096)

SEEDS = [case.data for case in VALID] + [
    b"POST /a%20b?x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"GET http://h:80/x HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\r\n",
]
# Bytes that matter to the grammar, so that mutations hit interesting paths more often than noise.
SPECIAL = st.sampled_from(
    [
        b"\r",
        b"\n",
        b"\r\n",
        b" ",
        b"\t",
        b":",
        b";",
        b",",
        b"%",
        b"/",
        b".",
        b"?",
        b"#",
        b"\x00",
        b"\x7f",
        b"\xff",
        b"0",
        b"f",
        b"-",
        b"chunked",
        b"Content-Length: ",
        b"Transfer-Encoding: ",
        b"Host: ",
        b"%2e",
        b"/..",
        b"\r\n\r\n",
    ]
)


def outcome(data: bytes, limits: Limits = LIMITS) -> tuple[str, object]:
    """('error', status) or ('ok', (head, body, trailers)); anything else escapes and fails the test."""
    try:
        end = find_head_end(data, limits)
        if end < 0:
            return "incomplete", None
        head = parse_head(data[:end], limits)
        body = body_reader(head, io.BufferedReader(io.BytesIO(data[end:])), limits.body, limits=limits)
        return "ok", (head, body.read(), body.trailers.items())
    except HTTPError as error:
        return "error", error.status


@DETERMINISTIC
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_http_error(data: bytes) -> None:
    outcome(data)


@DETERMINISTIC
@given(st.binary(max_size=300))
def test_any_bytes_ending_a_head_parse_or_raise_http_error(data: bytes) -> None:
    """parse_head alone, on arbitrary bytes that look like a complete head."""
    try:
        parse_head(b"GET / HTTP/1.1\r\n" + data + b"\r\n\r\n", LIMITS)
        parse_head(data + b"\r\n\r\n", LIMITS)
    except HTTPError:
        pass


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(SPECIAL, st.binary(min_size=1, max_size=3)))
        if kind == "insert":
            data[at:at] = piece
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            data[at : at + len(piece)] = piece
    return bytes(data)


@DETERMINISTIC
@given(mutated_requests())
def test_mutated_requests_parse_or_raise_http_error(data: bytes) -> None:
    outcome(data)


@DETERMINISTIC
@given(mutated_requests(), st.lists(st.integers(1, 40), min_size=1, max_size=60))
def test_outcome_does_not_depend_on_how_bytes_arrive(data: bytes, sizes: list[int]) -> None:
    """Feed the head in pieces as the connection does; the result must equal the whole-buffer one."""
    whole = head_outcome(data, [len(data)])
    assert head_outcome(data, sizes) == whole
    assert head_outcome(data, [1] * len(data)) == whole


def head_outcome(data: bytes, sizes: list[int]) -> tuple[str, object]:
    buffer = bytearray()
    start, index = 0, 0
    while start < len(data):
        size = sizes[index % len(sizes)]
        index += 1
        buffer += data[start : start + size]
        start += size
        try:
            end = find_head_end(buffer, LIMITS)
        except HTTPError as error:
            return "error", (error.status, error.detail)
        if end >= 0:
            return "end", end
    return "incomplete", None


@DETERMINISTIC
@given(
    st.lists(st.binary(max_size=80), max_size=12),
    st.lists(st.integers(1, 30), min_size=1, max_size=20),
    st.sampled_from(["read", "read-n", "readline", "readline-n"]),
    st.integers(1, 50),
)
def test_chunked_round_trip(pieces: list[bytes], splits: list[int], how: str, size: int) -> None:
    wire = b"".join(encode_chunk(piece) for piece in pieces) + LAST_CHUNK + b"NEXT"
    cut, start = [], 0
    for n in splits * (len(wire) // len(splits) + 1):
        if start >= len(wire):
            break
        cut.append(wire[start : start + n])
        start += n
    source = PieceSource(cut)
    body = ChunkedBody(source, limit=sum(map(len, pieces)), limits=LIMITS)
    if how == "read":
        received = body.read()
    else:
        reader = {
            "read-n": lambda: body.read(size),
            "readline": body.readline,
            "readline-n": lambda: body.readline(size),
        }[how]
        chunks = list(iter(reader, b""))
        assert all(len(chunk) <= size for chunk in chunks) or how == "readline"
        received = b"".join(chunks)
    assert received == b"".join(pieces)
    assert body.done and len(body.trailers) == 0
    assert source.rest() == b"NEXT", "the body must stop exactly at its end"


@DETERMINISTIC
@given(st.binary(max_size=200), st.integers(0, 250))
def test_content_length_body_is_exact_or_incomplete(payload: bytes, length: int) -> None:
    head = parse_head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % length, LIMITS)
    body = body_reader(head, io.BufferedReader(io.BytesIO(payload)), None, limits=LIMITS)
    try:
        data = body.read()
    except HTTPError:
        assert len(payload) < length
    else:
        assert data == payload[:length] and body.done
