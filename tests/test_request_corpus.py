"""The raw request corpus (tests/requests) through the parser and through a real porch server.

Parser level: every ``.http`` file is fed whole, line by line, byte by byte and in pieces cut by
seeded random generators through ``find_head_end`` + ``parse_head`` + ``body_reader`` (the body
read with ``read()``, ``readline()`` and random mixes of both over a source that hands the bytes
out in those same pieces); every split must give the outcome its ``.expect`` names, and invalid
requests must fail with the same status and detail whatever the split.

Live level: the same bytes go to real servers over TCP, whole and byte by byte (TCP_NODELAY).
Against a handler that never reads the body, an invalid request gets its status
-- or, for an error inside the body, possibly a 2xx before the server finds it while draining --
and the connection is then closed with no second response (nothing smuggled); a valid request
gets a 2xx.  Against the core tests' echo handler (which reads the whole body) a body error gets
exactly its status, and a valid request reaches the handler exactly as the parser saw it.
"""

from __future__ import annotations

import io
import json
import random
import re
import select
import socket
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from porchtest import PorchServer

from porch.config.settings import Limits
from porch.http.body import ChunkedBody, body_reader
from porch.http.errors import HTTPError
from porch.http.head import RequestHead, find_head_end, parse_head
from porch.http.messages import Body

CORPUS = Path(__file__).parent / "requests"
LIMITS_CONFIG: dict[str, int] = json.loads((CORPUS / "limits.json").read_text())
LIMITS = Limits(**LIMITS_CONFIG)
SEEDS = (1, 2, 3, 4, 5)
SPLITS = ("whole", "lines", "bytes", *(f"random-{seed}" for seed in SEEDS))
CLIENT_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: dict[str, Any]


def load_cases(kind: str) -> list[Case]:
    folder = CORPUS / kind
    return [
        Case(path.stem, path.read_bytes(), json.loads(path.with_suffix(".expect").read_text()))
        for path in sorted(folder.glob("*.http"))
    ]


VALID = load_cases("valid")
INVALID = load_cases("invalid")


class PieceSource:
    """A body ``Source`` that hands out bytes in the given pieces, the way ``recv`` would."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = deque(bytes(piece) for piece in pieces if piece)

    def _take(self, count: int) -> bytes:
        piece = self._pieces[0]
        if count >= len(piece):
            return self._pieces.popleft()
        self._pieces[0] = piece[count:]
        return piece[:count]

    def read1(self, size: int) -> bytes:
        return self._take(size) if self._pieces and size > 0 else b""

    def readline(self, size: int) -> bytes:
        line = bytearray()
        while self._pieces and len(line) < size:
            newline = self._pieces[0].find(b"\n", 0, size - len(line))
            line += self._take(newline + 1 if newline >= 0 else size - len(line))
            if line.endswith(b"\n"):
                break
        return bytes(line)

    def rest(self) -> bytes:
        return b"".join(self._pieces)


def split(data: bytes, how: str) -> list[bytes]:
    """``data`` cut into pieces: whole, after each LF, single bytes, or seeded random sizes."""
    if how == "whole":
        return [data]
    if how == "lines":
        return re.findall(rb"[^\n]*\n|[^\n]+", data)
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(int(how.removeprefix("random-")))
    pieces, start = [], 0
    while start < len(data):
        size = rng.randint(1, 24)
        pieces.append(data[start : start + size])
        start += size
    return pieces


def read_body(body: Body, how: str) -> bytes:
    """Read a whole body with read(), readline() or a seeded mix of read(n)/readline(n)."""
    if how == "whole":
        return body.read()
    if how in ("lines", "bytes"):
        reader = body.readline if how == "lines" else (lambda: body.read(1))
        return b"".join(iter(reader, b""))
    rng = random.Random(how)
    parts: list[bytes] = []
    while True:
        op = rng.choice(("read", "readline", "readline-n", "read-all"))
        if op == "read":
            piece = body.read(rng.randint(1, 9))
        elif op == "readline":
            piece = body.readline()
        elif op == "readline-n":
            piece = body.readline(rng.randint(1, 9))
        else:
            piece = body.read()
        if not piece:
            return b"".join(parts)
        parts.append(piece)


@dataclass
class Outcome:
    status: int | None = None  # the error status, None when the request was accepted
    stage: str | None = None  # "head" or "body" for errors
    detail: str = ""
    head: RequestHead | None = None
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False
    leftover: bytes = b""


def parse_corpus_request(data: bytes, how: str, limits: Limits = LIMITS) -> Outcome:
    """Run ``data`` through the parser exactly as the connection does, in ``how`` pieces."""
    pieces = deque(split(data, how))
    buffer = bytearray()
    try:
        end = -1
        while pieces and end < 0:
            buffer += pieces.popleft()
            end = find_head_end(buffer, limits)
        if end < 0:
            return Outcome(stage="incomplete head", detail="the head never ended")
        head = parse_head(bytes(buffer[:end]), limits)
    except HTTPError as error:
        return Outcome(status=error.status, stage="head", detail=error.detail)
    source = PieceSource([bytes(buffer[end:]), *pieces])
    body = body_reader(head, source, limits.body, limits=limits)
    try:
        data = read_body(body, how)
        assert body.read() == b"" and body.readline() == b"", "reads past the end must give b''"
    except HTTPError as error:
        return Outcome(status=error.status, stage="body", detail=error.detail, head=head)
    return Outcome(head=head, body=data, trailers=body.trailers.items(), done=body.done, leftover=source.rest())


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("case", VALID, ids=[case.name for case in VALID])
def test_valid_request_parses_to_expected(case: Case, how: str) -> None:
    outcome = parse_corpus_request(case.data, how)
    assert outcome.status is None and outcome.head is not None, f"rejected: {outcome}"
    head, expect = outcome.head, case.expect
    for key in (
        "method",
        "target",
        "path",
        "raw_path",
        "query",
        "version",
        "keep_alive",
        "chunked",
        "content_length",
        "expect_continue",
    ):
        if key in expect:
            assert getattr(head, key) == expect[key], key
    for name, values in expect.get("headers", {}).items():
        assert head.headers.get_all(name) == values, name
    if "body" in expect:
        assert outcome.body == expect["body"].encode("latin-1")
    if "trailers" in expect:
        trailers = {
            name.lower(): [v for n, v in outcome.trailers if n.lower() == name.lower()] for name, _ in outcome.trailers
        }
        assert trailers == expect["trailers"]
    assert outcome.done, "the body must be consumed to its end"
    assert outcome.leftover == b"", "the framing must account for every byte of the file"


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("case", INVALID, ids=[case.name for case in INVALID])
def test_invalid_request_is_rejected_the_same_way_however_split(case: Case, how: str) -> None:
    outcome = parse_corpus_request(case.data, how)
    assert (outcome.status, outcome.stage) == (case.expect["status"], case.expect["stage"]), outcome
    if how != "whole":
        assert outcome.detail == parse_corpus_request(case.data, "whole").detail


def test_corpus_is_big_enough() -> None:
    assert len(VALID) >= 25 and len(INVALID) >= 40
    statuses = {case.expect["status"] for case in INVALID}
    assert {400, 413, 414, 431, 501, 505} <= statuses


def test_piece_source_behaves_like_buffered_reader() -> None:
    """The test source must act like io.BufferedReader, or the corpus tests prove nothing."""
    data = b"line one\nline two\r\n\nno newline at the end"
    for how in SPLITS:
        ours, theirs = PieceSource(split(data, how)), io.BufferedReader(io.BytesIO(data))
        rng = random.Random(how)
        while True:
            size = rng.randint(1, 12)
            if rng.random() < 0.5:
                mine = ours.readline(size)
                assert mine == theirs.readline(size)
            else:
                mine = ours.read1(size)  # may stop at a piece boundary, like a short recv
                assert 0 < len(mine) <= size or not theirs.peek(1)
                assert mine == theirs.read(len(mine))
            if not mine:
                break


# ---------------------------------------------------------------------------------------------
# Live: a real server


LIVE_CONFIG: dict[str, Any] = {"limits": LIMITS_CONFIG, "timeouts": {"header": 30, "keepalive": 30, "body": 30}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    """A handler that answers everything and never reads the body."""
    server = PorchServer.start(
        {"mounts": [{"path": "/", "type": "core_handlers:OkHandler"}], **LIVE_CONFIG},
        tmp_path_factory.mktemp("corpus-ok"),
        env={"PYTHONPATH": str(Path(__file__).parent)},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live_echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    """The core tests' echo handler reads the whole body and answers the request it saw as JSON."""
    server = PorchServer.start(
        {"mounts": [{"path": "/", "type": "core_handlers:EchoHandler"}], **LIVE_CONFIG},
        tmp_path_factory.mktemp("corpus-echo"),
        env={"PYTHONPATH": str(Path(__file__).parent)},
    )
    yield server
    server.stop()


def exchange(
    server: PorchServer, data: bytes, *, byte_by_byte: bool, half_close: bool, stop_when_answered: bool
) -> bytes:
    """Send ``data`` and read until the server closes (a timeout means it never did)."""
    received = bytearray()
    with socket.create_connection((server.host, server.port), timeout=CLIENT_TIMEOUT_SECONDS) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pieces = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
        try:
            for piece in pieces:
                sock.sendall(piece)
                if stop_when_answered and select.select([sock], [], [], 0)[0]:
                    break  # answered (and maybe closed) early: sending more would only meet a reset
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed first (after an error, or Connection: close): EPIPE, ENOTCONN
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return bytes(received)


def parse_responses(data: bytes, *, head_request: bool = False) -> list[tuple[int, bytes]]:
    """Final responses as (status, body); interim 1xx responses are skipped."""
    responses, pos = [], 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"truncated response head: {data[pos:]!r}"
        status_line, *lines = data[pos:end].split(b"\r\n")
        version, code, *_ = status_line.split(b" ", 2)
        assert version in (b"HTTP/1.1", b"HTTP/1.0"), status_line
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
        pos, status = end + 4, int(code)
        if 100 <= status < 200:
            continue
        if head_request or status in (204, 304):
            body = b""
        elif b"content-length" in fields:
            body = data[pos : pos + int(fields[b"content-length"])]
        elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            source = PieceSource([data[pos:]])
            responses.append((status, ChunkedBody(source, None, limits=LIMITS).read()))
            pos = len(data) - len(source.rest())
            continue
        else:
            body = data[pos:]
        pos += len(body)
        responses.append((status, body))
    return responses


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("case", INVALID, ids=[case.name for case in INVALID])
def test_live_server_rejects_invalid_request_and_closes(live: PorchServer, case: Case, byte_by_byte: bool) -> None:
    body_stage = case.expect["stage"] == "body"
    raw = exchange(live, case.data, byte_by_byte=byte_by_byte, half_close=body_stage, stop_when_answered=True)
    responses = parse_responses(raw)
    assert len(responses) == 1, f"expected one response then close, got {raw!r}"
    status = responses[0][0]
    if body_stage:  # the status handler never reads the body: the error may come while draining it
        assert status == case.expect["status"] or 200 <= status < 300, raw
    else:
        assert status == case.expect["status"], raw


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("case", VALID, ids=[case.name for case in VALID])
def test_live_server_answers_valid_request(live: PorchServer, case: Case, byte_by_byte: bool) -> None:
    raw = exchange(live, case.data, byte_by_byte=byte_by_byte, half_close=True, stop_when_answered=False)
    responses = parse_responses(raw, head_request=case.expect.get("method") == "HEAD")
    assert len(responses) == 1, raw
    if case.expect.get("live", "2xx") == "2xx":
        assert 200 <= responses[0][0] < 300, raw


BODY_STAGE = [case for case in INVALID if case.expect["stage"] == "body"]


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("case", BODY_STAGE, ids=[case.name for case in BODY_STAGE])
def test_live_server_reading_the_body_answers_its_error(live_echo: PorchServer, case: Case, byte_by_byte: bool) -> None:
    raw = exchange(live_echo, case.data, byte_by_byte=byte_by_byte, half_close=True, stop_when_answered=True)
    assert [status for status, _ in parse_responses(raw)] == [case.expect["status"]], raw


ECHOED = [case for case in VALID if case.expect.get("live", "2xx") == "2xx"]


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("case", ECHOED, ids=[case.name for case in ECHOED])
def test_live_server_hands_the_handler_what_the_parser_saw(
    live_echo: PorchServer, case: Case, byte_by_byte: bool
) -> None:
    raw = exchange(live_echo, case.data, byte_by_byte=byte_by_byte, half_close=True, stop_when_answered=False)
    [(status, body)] = parse_responses(raw)
    assert status == 200, raw
    seen = json.loads(body)
    for key in ("method", "target", "path", "query", "version", "body"):
        if key in case.expect:
            assert seen[key] == case.expect[key], key
    for name, values in case.expect.get("headers", {}).items():
        assert [value for field_name, value in seen["headers"] if field_name.lower() == name] == values, name
    for name, values in case.expect.get("trailers", {}).items():
        assert [value for field_name, value in seen["trailers"] if field_name.lower() == name] == values, name
