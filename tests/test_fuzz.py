"""Mutation fuzzing of the request parser and of the CGI output parser, seeded and bounded.

Each target gets a fixed number of mutants and a time cap, whichever ends first, from a fixed
seed (``tests/fuzzing.py`` mutates the corpus and keeps mutants that reach new lines).  Only
documented outcomes pass:

* a request is either still incomplete, or rejected with ``HTTPError`` of a documented status
  (tests/requests/README.md), or accepted with a head that breaks no rule (token names, no
  control characters in values, never Content-Length with Transfer-Encoding) and that parses the
  same once re-serialised, and a body that is exactly what its framing says: the first
  Content-Length bytes, or what an independent decoding of the chunks gives; the rest is left
  unread.  The outcome is the same whether the bytes come whole or in random pieces.
* a CGI script's output gives a header block, or ``MalformedOutput`` (answered 502), the same
  whole or in pieces; a parsed head holds only valid fields and parses the same re-serialised.

``PORCH_FUZZ_SEED`` replaces the seed, ``PORCH_FUZZ_ITERATIONS`` and ``PORCH_FUZZ_SECONDS``
the budget per target; a failure prints the seed and the input to replay.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import zlib

import pytest
from fuzzing import Check, LineCoverage, fuzz
from test_request_corpus import CORPUS, LIMITS, Outcome, parse_corpus_request

import porch.handlers.cgi.output
import porch.http.body
import porch.http.grammar
import porch.http.head
from porch.handlers.cgi.output import CGIHead, HeaderBlockReader, MalformedOutput, parse_cgi_head, parse_nph_head
from porch.http.grammar import CONTENT_LENGTH, FIELD_FORBIDDEN, TOKEN
from porch.http.head import RequestHead, find_head_end, parse_head

LOG = logging.getLogger(__name__)
SEED = os.environ.get("PORCH_FUZZ_SEED", "20240521")
ITERATIONS = int(os.environ.get("PORCH_FUZZ_ITERATIONS", "5000"))
SECONDS = float(os.environ.get("PORCH_FUZZ_SECONDS", "8"))
# The statuses the wire parser may answer with (tests/requests/README.md, README "The HTTP/1.1 parser").
DOCUMENTED_STATUSES = frozenset({400, 413, 414, 417, 431, 501, 505})
CGI_HEADER_LIMIT = 1024
# Room for a re-serialised head that gained the Host of an absolute-form target.
ROOMY_LIMITS = dataclasses.replace(LIMITS, header_bytes=LIMITS.header_bytes * 2, headers=LIMITS.headers + 1)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")

REQUEST_DICTIONARY: tuple[bytes, ...] = (
    b"\r\n",
    b"\r\n\r\n",
    b"Host: example.com\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding:\x0bchunked\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Expect: 100-continue\r\n",
    b" folded\r\n",
    b"\r\n0\r\n\r\n",
    b"5\r\nhello\r\n",
    b';a="b\\"c"',
    b";a=b",
    b"Trailer: x\r\n",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"HTTP/2.0",
    b"http://a.example:80",
    b"CONNECT ",
    b"OPTIONS * ",
    b"%2e%2e/",
    b"/../",
    b"%00",
    b"[::1]",
    b"chunked",
)
CGI_DICTIONARY: tuple[bytes, ...] = (
    b"\n",
    b"\r\n",
    b"\n\n",
    b"Status: 200 OK\n",
    b"Status: 99\n",
    b"Status: 404\r\n",
    b"Location: /local?q\n",
    b"Location: //host/x\n",
    b"Location: http://example.com/\n",
    b"Content-Type: text/plain\n",
    b"Content-Length: 5\n",
    b"Content-Length: 5, 5\n",
    b"Date: today\n",
    b"X-CGI-Thing: 1\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.0 302 Found\n",
    b" continued\n",
)
CGI_SEEDS: tuple[bytes, ...] = (
    b"Content-Type: text/plain\n\nhello",
    b"Content-Type: text/html; charset=utf-8\r\nContent-Length: 5\r\n\r\nhello",
    b"Status: 404 Not Found\nContent-Type: text/plain\n\nmissing",
    b"Status: 204\n\n",
    b"Location: /other/path?x=1\n\n",
    b"Location: http://example.com/\nContent-Type: text/plain\n\nmoved",
    b"Status: 201 Created\nLocation: /items/7\nContent-Type: application/json\n\n{}",
    b"Content-Type: text/plain\nContent-Length: 3\nContent-Length: 3\nSet-Cookie: a=1\nSet-Cookie: b=2\n\nabc",
    b"Content-Type: text/plain\nX-CGI-Internal: 1\nServer: mine\nDate: now\nX-Empty:\n\nbody",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 503 Service Unavailable\nRetry-After: 5\n\n",
    b"Content-Type: text/plain\n\n\nbody starting with a newline",
)


def request_seeds() -> list[bytes]:
    """Every request of the corpus, valid, invalid and fuzz-only, in a stable order."""
    return [path.read_bytes() for path in sorted(CORPUS.glob("*/*.http"))]


def run_fuzzer(check: Check, seeds: list[bytes], target: str, files: list[str], dictionary: tuple[bytes, ...]) -> None:
    """Fuzz ``check`` within the budget and fail with everything needed to replay what it found."""
    seed = f"{SEED}-{target}"
    report = fuzz(
        check,
        seeds,
        seed=seed,
        iterations=ITERATIONS,
        seconds=SECONDS,
        coverage=LineCoverage(files),
        dictionary=dictionary,
    )
    LOG.info(report.summary())
    assert report.iterations > 0, report.summary()
    if report.findings:
        found = "\n\n".join(
            f"iteration {finding.iteration}, input {finding.data!r}\n{finding.error}" for finding in report.findings
        )
        pytest.fail(f"{report.summary()}; replay with PORCH_FUZZ_SEED={SEED}\n\n{found}", pytrace=False)


# ---------------------------------------------------------------------------------------------
# The request parser


def decode_chunked(data: bytes) -> tuple[bytes, list[tuple[str, str]], int]:
    """(body, trailers, bytes used) of a chunked body that porch accepted, decoded independently."""
    body, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos)
        size_match = _CHUNK_SIZE.match(data, pos, end)
        assert size_match is not None, f"accepted chunk-size line {data[pos:end]!r}"
        size, pos = int(size_match[0], 16), end + 2
        if size == 0:
            break
        body += data[pos : pos + size]
        assert data[pos + size : pos + size + 2] == b"\r\n", "accepted chunk data without its CRLF"
        pos += size + 2
    trailers = []
    while (end := data.index(b"\r\n", pos)) != pos:
        name, _, value = data[pos:end].decode("latin-1").partition(":")
        trailers.append((name, value.strip(" \t")))
        pos = end + 2
    return bytes(body), trailers, pos + 2


def check_fields(fields: list[tuple[str, str]]) -> None:
    """RFC 9110 5.1 and 5.5: token names; values without CTLs but HTAB, without outer OWS."""
    for name, value in fields:
        assert TOKEN.fullmatch(name), f"accepted field name {name!r}"
        assert not FIELD_FORBIDDEN.search(value.encode("latin-1")), f"accepted {name} value {value!r}"
        assert value == value.strip(" \t"), f"{name} value {value!r} keeps its OWS"


def head_facts(head: RequestHead) -> tuple[object, ...]:
    """Everything a head says, comparable (``Headers`` compares by identity)."""
    facts = (getattr(head, field.name) for field in dataclasses.fields(head) if field.name != "headers")
    return (*facts, head.headers.items())


def check_head(head: RequestHead) -> None:
    """The rules an accepted head always keeps, and a parse of its re-serialised form agrees."""
    assert TOKEN.fullmatch(head.method) and head.version in ("HTTP/1.0", "HTTP/1.1"), head
    check_fields(head.headers.items())
    has_length, has_coding = "content-length" in head.headers, "transfer-encoding" in head.headers
    assert not (has_length and has_coding), "accepted Content-Length together with Transfer-Encoding"
    if head.chunked:
        assert has_coding and head.version == "HTTP/1.1" and head.content_length is None, head
    else:
        assert not has_coding, "Transfer-Encoding accepted without chunked framing"
    if head.content_length is not None:
        members = {m.strip(" \t") for value in head.headers.get_all("content-length") for m in value.split(",")}
        assert all(CONTENT_LENGTH.fullmatch(m) for m in members) and {int(m) for m in members} == {
            head.content_length
        }, f"Content-Length {members} read as {head.content_length}"
    else:
        assert not has_length or head.chunked, head
    if head.version == "HTTP/1.1":
        assert len(head.headers.get_all("host")) == 1, "HTTP/1.1 request accepted without exactly one Host"
    assert "\x00" not in head.path and not {".", ".."} & set(head.path.split("/")), head.path
    lines = [f"{head.method} {head.target} {head.version}", *(f"{n}: {v}" for n, v in head.headers)]
    again = parse_head("\r\n".join([*lines, "", ""]).encode("latin-1"), ROOMY_LIMITS)
    assert head_facts(again) == head_facts(head), f"re-serialised head parses differently: {again} != {head}"


def check_outcome(data: bytes, outcome: Outcome) -> None:
    """One documented outcome; an accepted body is exactly what its framing says."""
    if outcome.stage == "incomplete head":
        assert len(data) <= LIMITS.header_bytes, "an over-long head must be refused, not awaited"
        return
    if outcome.status is not None:
        assert outcome.status in DOCUMENTED_STATUSES, f"undocumented status {outcome.status}: {outcome.detail}"
        assert outcome.stage in ("head", "body"), outcome.stage
    if outcome.head is None:
        assert outcome.stage == "head", outcome
        return
    head = outcome.head
    check_head(head)
    if outcome.status is not None:  # a body error needs a body
        assert head.chunked or head.content_length, f"body error {outcome.detail!r} with no body framed"
        return
    rest = data[find_head_end(data, LIMITS) :]
    assert outcome.done, "an accepted body must be read to its end"
    if head.chunked:
        body, trailers, used = decode_chunked(rest)
        assert outcome.body == body, "the chunks hold other bytes"
        assert outcome.trailers == trailers, "the trailer section holds other fields"
        check_fields(outcome.trailers)
    else:
        used = head.content_length or 0
        assert outcome.body == rest[:used], "the body is not the first Content-Length bytes"
        assert not outcome.trailers
    assert outcome.leftover == rest[used:], "the framing did not stop where the body ends"
    assert len(outcome.body) <= LIMITS.body, "a body over the limit was accepted"


def check_request(data: bytes) -> None:
    """Whole and in pieces (split by the input's own checksum), the same documented outcome."""
    whole = parse_corpus_request(data, "whole")
    check_outcome(data, whole)
    pieces = parse_corpus_request(data, f"random-{zlib.crc32(data)}")
    assert (pieces.status, pieces.stage, pieces.detail) == (whole.status, whole.stage, whole.detail), (
        f"whole: {whole.status} {whole.detail!r}, in pieces: {pieces.status} {pieces.detail!r}"
    )
    assert (pieces.body, pieces.trailers, pieces.leftover) == (whole.body, whole.trailers, whole.leftover)


def test_fuzz_request_parser() -> None:
    files = [porch.http.head.__file__, porch.http.body.__file__, porch.http.grammar.__file__]
    run_fuzzer(check_request, request_seeds(), "request", files, REQUEST_DICTIONARY)


# ---------------------------------------------------------------------------------------------
# The CGI output parser


def read_block(data: bytes, sizes: random.Random | None) -> tuple[bytes, bytes] | str | None:
    """The reader's (block, rest), None while waiting, or the MalformedOutput message."""
    reader = HeaderBlockReader(CGI_HEADER_LIMIT)
    pos = 0
    try:
        while True:
            step = sizes.randint(1, 64) if sizes else len(data)
            found = reader.feed(data[pos : pos + step])
            pos += step
            if found is not None:
                return found[0], found[1] + data[pos:]
            if pos >= len(data):
                return None
    except MalformedOutput as error:
        return str(error)


def serialise_cgi(head: CGIHead, *, nph: bool) -> bytes:
    """A header block that says what ``head`` says."""
    reason = f" {head.reason}" if head.reason else ""
    first = [f"HTTP/1.1 {head.status}{reason}"] if nph else [f"Status: {head.status}{reason}"] if head.status else []
    return "".join(f"{line}\r\n" for line in [*first, *(f"{n}: {v}" for n, v in head.fields)]).encode("latin-1")


def check_cgi_head(head: CGIHead, rest: bytes, *, nph: bool) -> None:
    """What a parsed CGI head always holds; it parses the same once re-serialised."""
    assert head.status is None or 200 <= head.status <= 599, head.status
    assert head.status is not None or not nph, "an NPH head without a status"
    assert head.reason is None or (head.reason == head.reason.strip() and head.reason), repr(head.reason)
    check_fields(head.fields)
    names = [name.lower() for name, _ in head.fields]
    assert names.count("content-length") <= 1, "Content-Length not folded"
    if "content-length" in names:
        assert CONTENT_LENGTH.fullmatch(head.get("content-length") or ""), head
    if not nph:
        assert "status" not in names and all(names.count(cgi) <= 1 for cgi in ("location", "content-type")), names
        assert not {"date", "server"} & set(names) and not any(n.startswith("x-cgi-") for n in names), names
    assert 200 <= head.response_status() <= 599
    head.kind()
    head.length_matches(len(rest))
    again = (parse_nph_head if nph else parse_cgi_head)(serialise_cgi(head, nph=nph))
    assert again == head, f"re-serialised head parses differently: {again} != {head}"


def check_cgi_output(data: bytes) -> None:
    """A block or MalformedOutput, the same whole and in pieces; then both parsers on the block."""
    found = read_block(data, None)
    assert read_block(data, random.Random(zlib.crc32(data))) == found, "the outcome depends on the pieces"
    if found is None:
        assert len(data) <= CGI_HEADER_LIMIT and b"\n\n" not in data, "a complete or over-long block was awaited"
        return
    if isinstance(found, str):
        return
    block, rest = found
    assert data.startswith(block) and data.endswith(rest), "the block and the body are not the output"
    for nph, parse in ((False, parse_cgi_head), (True, parse_nph_head)):
        try:
            head = parse(block)
        except MalformedOutput:
            continue
        check_cgi_head(head, rest, nph=nph)


def test_fuzz_cgi_output_parser() -> None:
    seeds = [*CGI_SEEDS, *(b"Content-Type: text/plain\n" + block for block in CGI_SEEDS)]
    run_fuzzer(check_cgi_output, seeds, "cgi-output", [porch.handlers.cgi.output.__file__], CGI_DICTIONARY)
