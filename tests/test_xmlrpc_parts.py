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

from porch.handlers.xmlrpc.call import parse_call, read_call, read_plain_call
from porch.handlers.xmlrpc.handler import gunzip, method_signatures
from porch.http.errors import BadRequest, PayloadTooLarge


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

    assert method_signatures(f) == [["double", "array", "struct", "base64", "dateTime.iso8601", "boolean"]]
    assert method_signatures(g) == "undef"
    assert method_signatures(h) == "undef"
    assert method_signatures(len) == "undef"


FRAGMENTS = [
    b"<methodCall>",
    b"</methodCall>",
    b"<methodName>",
    b"</methodName>",
    b"add",
    b"<params>",
    b"</params>",
    b"<param>",
    b"</param>",
    b"<value>",
    b"</value>",
    b"<int>",
    b"</int>",
    b"<i4>",
    b"</i4>",
    b"<boolean>",
    b"</boolean>",
    b"<double>",
    b"</double>",
    b"<string>",
    b"</string>",
    b"<base64>",
    b"</base64>",
    b"<dateTime.iso8601>",
    b"</dateTime.iso8601>",
    b"<array>",
    b"</array>",
    b"<data>",
    b"</data>",
    b"<struct>",
    b"</struct>",
    b"<member>",
    b"</member>",
    b"<name>",
    b"</name>",
    b"<nil/>",
    b"<fault>",
    b"</fault>",
    b"1",
    b"-7",
    b"x",
    b"2.5",
    b"AAAA",
    b"20240101T00:00:00",
    b"&amp;",
    b"&bogus;",
    b"<!DOCTYPE m>",
    b"<?xml version='1.0'?>",
]


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
    st.integers(-(2**31), 2**31 - 1)
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text().map(lambda t: "".join(c for c in t if c.isprintable() and c not in "\r\ud800"))
    | st.binary(max_size=50)
    | st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31)).map(
        lambda d: d.replace(microsecond=0)
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=5).filter(str.isprintable), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.lists(XMLRPC_VALUES, max_size=4))
@settings(max_examples=300, deadline=None)
def test_parse_call_reads_what_the_stdlib_client_writes(params: list[object]) -> None:
    body = xmlrpc.client.dumps(tuple(params), "method.name").encode()
    assert parse_call(body, True) == (tuple(params), "method.name")


# The plain reader (one regex for the usual scalar calls) against the general one (expat): it
# may decline any document, but whatever it answers must be exactly what expat reads.


def typed(call: tuple[tuple[object, ...], str]) -> tuple[list[tuple[type, object]], str]:
    """A call with each value's type kept: True == 1 and 1 == 1.0 must not pass as equal."""
    params, method = call
    return [(type(value), value) for value in params], method


def assert_readers_agree(body: bytes) -> bool:
    """Whether the plain reader answered; if it did, expat must read the same call."""
    plain = read_plain_call(body)
    if plain is None:
        return False
    assert typed(plain) == typed(read_call(body, False))
    return True


SCALARS = (
    st.integers(-(2**31), 2**31 - 1)
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
METHOD_NAMES = st.from_regex(r"[A-Za-z0-9_.:/]{1,12}", fullmatch=True)


@given(st.lists(SCALARS, max_size=5), METHOD_NAMES)
@settings(max_examples=400, deadline=None)
def test_plain_reader_agrees_with_expat_on_client_documents(params: list[object], method: str) -> None:
    body = xmlrpc.client.dumps(tuple(params), method).encode()
    answered = assert_readers_agree(body)
    plain_text = all(
        not isinstance(p, str) or (p.isascii() and p.isprintable() and not set(p) & set("<>&")) for p in params
    )
    simple_numbers = all(not isinstance(p, float) or (repr(p) == str(p) and "e" not in repr(p)) for p in params)
    if plain_text and simple_numbers:
        assert answered, body  # the fast path must really serve the usual calls


MUTATIONS = [
    b"",
    b" ",
    b"\r",
    b"\n",
    b"\t",
    b"<",
    b">",
    b"&",
    b"&amp;",
    b"/",
    b"\x00",
    b"\x01",
    b"\xc3\xa9",
    b"\xff",
    b"x",
    b"1",
    b"-",
    b".",
    b"'",
    b'"',
    b"=",
    b"<value>",
    b"</value>",
    b"<param>",
    b"</param>",
    b"<params>",
    b"</params>",
    b"<int>",
    b"</int>",
    b"<string>",
    b"</string>",
    b"<!-- c -->",
    b"<![CDATA[x]]>",
    b"<!DOCTYPE m>",
    b"<nil/>",
    b"]]>",
    b"<?xml version='1.0'?>",
    b" encoding='utf-16'",
    b"<methodCall>",
    b"</methodCall>",
]


@given(
    st.lists(SCALARS, max_size=3),
    st.lists(
        st.tuples(st.integers(0, 400), st.booleans(), st.integers(0, 2), st.sampled_from(MUTATIONS)),
        min_size=1,
        max_size=3,
    ),
)
@settings(max_examples=1500, deadline=None)
def test_plain_reader_never_accepts_what_expat_reads_otherwise(
    params: list[object], edits: list[tuple[int, bool, int, bytes]]
) -> None:
    """Damaged and unusual documents: the plain reader declines or reads what expat reads.

    Most edits land next to a tag, where a document is most likely to stay readable.
    """
    body = xmlrpc.client.dumps(tuple(params), "add").encode()
    for index, next_to_tag, removed, inserted in edits:
        places = [i for i in range(len(body) + 1) if body[i : i + 1] == b"<" or body[i - 1 : i] == b">"]
        at = places[index % len(places)] if next_to_tag else index % (len(body) + 1)
        body = body[:at] + inserted + body[at + removed :]
    try:
        read_call(body, False)
    except xmlrpc.client.Fault:
        assert read_plain_call(body) is None, body
        return
    assert_readers_agree(body)


@pytest.mark.parametrize(
    "body",
    [
        b"<methodCall><methodName>m</methodName><params><param><value>a\r\nb</value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value>&lt;</value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value>\xc3\xa9</value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><string/></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><int>1e3</int></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><array><data/></array></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><int>"
        + b"9" * 31
        + b"</int></value></param></params></methodCall>",
        b"<!DOCTYPE methodCall><methodCall><methodName>m</methodName></methodCall>",
        b" <?xml version='1.0'?><methodCall><methodName>m</methodName></methodCall>",
        b"<?xml version='1.0' encoding='utf-16'?><methodCall><methodName>m</methodName></methodCall>",
        b"<methodCall a='1'><methodName>m</methodName></methodCall>",
        b"<methodCall><methodName> m </methodName></methodCall>",
        b"<methodCall><methodName>m</methodName></methodCall><!-- after -->",
    ],
)
def test_plain_reader_leaves_the_rest_to_expat(body: bytes) -> None:
    assert read_plain_call(body) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<methodCall>\n  <methodName>sample.add</methodName>\n'
            b"  <params>\n    <param><value><i4>-7</i4></value></param>\n    <param><value>two words</value></param>\n"
            b"    <param>\n<value><boolean>0</boolean></value>\n</param>\n  </params>\n</methodCall>\n",
            ((-7, "two words", False), "sample.add"),
        ),
        (b"<methodCall><methodName>ping</methodName></methodCall>", ((), "ping")),
        (b"<methodCall><methodName>ping</methodName><params></params></methodCall>", ((), "ping")),
        (
            b"<methodCall><methodName>f</methodName><params><param><value></value></param>"
            b"<param><value><double>-0.5</double></value></param><param><value><i8>+12</i8></value></param>"
            b"</params></methodCall>",
            (("", -0.5, 12), "f"),
        ),
    ],
)
def test_plain_reader_reads_other_clients_layouts(body: bytes, expected: tuple[tuple[object, ...], str]) -> None:
    assert typed(read_plain_call(body)) == typed(expected)  # type: ignore[arg-type]
    assert typed(read_call(body, False)) == typed(expected)
