"""The XML-RPC handler's pure parts: gunzip bounds, Accept-Encoding, parsing, signatures.

Tables and property tests; no handler, no sockets.
"""

from __future__ import annotations

import datetime
import gzip
import xmlrpc.client

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.xmlrpc import accepts_gzip, gunzip, method_signatures, parse_call
from server.errors import BadRequest, PayloadTooLarge
from server.messages import Headers


def test_gunzip_multi_member_and_exact_limit() -> None:
    data = gzip.compress(b"abc") + gzip.compress(b"def")
    assert gunzip(data, 6) == b"abcdef"
    with pytest.raises(PayloadTooLarge):
        gunzip(data, 5)
    assert gunzip(b"", 10) == b""


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_gunzip_never_raises_anything_else(data: bytes) -> None:
    try:
        out = gunzip(data, 100)
    except (BadRequest, PayloadTooLarge):
        return
    assert len(out) <= 100


@pytest.mark.parametrize(("value", "expected"), [
    (None, False), ("gzip", True), ("GZip", True), ("deflate, gzip;q=0.5", True),
    ("gzip;q=0", False), ("gzip; q=0.0, *", False), ("*", True), ("*;q=0", False),
    ("identity", False), ("x-gzip", True), ("br, deflate", False), ("gzip;q=bogus", False),
])
def test_accepts_gzip(value: str | None, expected: bool) -> None:
    headers = Headers([("Accept-Encoding", value)] if value is not None else [])
    assert accepts_gzip(headers) is expected


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_parse_call_fuzz(data: bytes) -> None:
    """Any bytes: a call or a Fault, never another exception."""
    try:
        params, method = parse_call(data, False)
    except xmlrpc.client.Fault as fault:
        assert fault.faultCode in (-32700, -32600)
        return
    assert isinstance(params, tuple) and isinstance(method, str)


def test_method_signatures_from_annotations() -> None:
    def f(a: list[int], b: dict[str, int], c: bytes, d: datetime.datetime, e: bool) -> float:
        return 0.0

    def g(a, b):  # type: ignore[no-untyped-def]
        return a

    def h(*args: int) -> int:
        return 0

    assert method_signatures(f) == [["double", "array", "struct", "base64", "dateTime.iso8601",
                                     "boolean"]]
    assert method_signatures(g) == "undef"
    assert method_signatures(h) == "undef"
    assert method_signatures(len) == "undef"


FRAGMENTS = [b"<methodCall>", b"</methodCall>", b"<methodName>", b"</methodName>", b"add",
             b"<params>", b"</params>", b"<param>", b"</param>", b"<value>", b"</value>",
             b"<int>", b"</int>", b"<i4>", b"</i4>", b"<boolean>", b"</boolean>", b"<double>",
             b"</double>", b"<string>", b"</string>", b"<base64>", b"</base64>",
             b"<dateTime.iso8601>", b"</dateTime.iso8601>", b"<array>", b"</array>", b"<data>",
             b"</data>", b"<struct>", b"</struct>", b"<member>", b"</member>", b"<name>",
             b"</name>", b"<nil/>", b"<fault>", b"</fault>", b"1", b"-7", b"x", b"2.5", b"AAAA",
             b"20240101T00:00:00", b"&amp;", b"&bogus;", b"<!DOCTYPE m>", b"<?xml version='1.0'?>"]


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40))
@settings(max_examples=500, deadline=None)
def test_parse_call_fuzz_with_xmlrpc_fragments(parts: list[bytes]) -> None:
    """Documents made of XML-RPC tags in any order: a call or a -32700/-32600 Fault."""
    try:
        params, method = parse_call(b"".join(parts), True)
    except xmlrpc.client.Fault as fault:
        assert fault.faultCode in (-32700, -32600)
        return
    assert isinstance(params, tuple) and method


XMLRPC_VALUES = st.recursive(
    st.integers(-(2**31), 2**31 - 1) | st.booleans() | st.floats(allow_nan=False)
    | st.text().map(lambda t: "".join(c for c in t if c.isprintable() and c not in "\r\ud800"))
    | st.binary(max_size=50)
    | st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31))
    .map(lambda d: d.replace(microsecond=0)),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(min_size=1, max_size=5).filter(str.isprintable), children,
                      max_size=4),
    max_leaves=12,
)


@given(st.lists(XMLRPC_VALUES, max_size=4))
@settings(max_examples=300, deadline=None)
def test_parse_call_reads_what_the_stdlib_client_writes(params: list[object]) -> None:
    body = xmlrpc.client.dumps(tuple(params), "method.name").encode()
    assert parse_call(body, True) == (tuple(params), "method.name")
