"""XML-RPC handler, called directly: options, parsing, faults, limits, gzip, introspection.

These build ``XMLRPCHandler`` from options and feed it ``Request`` objects whose body is an
in-memory stream; the real-socket behaviour is in ``test_xmlrpc.py``.
"""

from __future__ import annotations

import datetime
import gzip
import io
import logging
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from porch.config.settings import Mount
from porch.handlers.base import HandlerContext, OptionError
from porch.handlers.xmlrpc.handler import UnsupportedMediaType, XMLRPCHandler
from porch.http.errors import BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge
from porch.http.messages import Headers, Request, Response

FUNCS_DIR = Path(__file__).parent / "rpc_funcs"
DEMO_DIR = Path(__file__).parent.parent / "apps"

FUNCTIONS = {
    "add": "rpctest_funcs:add",
    "echo": "rpctest_funcs:echo",
    "type_names": "rpctest_funcs:type_names",
    "optional": "rpctest_funcs:optional",
    "keyword_only": "rpctest_funcs:keyword_only",
    "fail": "rpctest_funcs:fail",
    "fault": "rpctest_funcs:fault",
    "inner_type_error": "rpctest_funcs:inner_type_error",
    "exit_worker": "rpctest_funcs:exit_worker",
    "return_none": "rpctest_funcs:return_none",
    "return_set": "rpctest_funcs:return_set",
    "big": "rpctest_funcs:big",
    "bad_fault": "rpctest_funcs:bad_fault",
    "add_ten": "rpctest_funcs:make_adder()",
    "dotted.name": "rpctest_funcs:add",
}


class BytesBody:
    """An in-memory request body with the connection's Body interface."""

    def __init__(self, data: bytes, declared: bool = True) -> None:
        self._stream = io.BytesIO(data)
        self.length: int | None = len(data) if declared else None
        self.limit: int | None = None
        self.trailers = Headers()
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        return self._stream.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self._stream.readline(size)

    @property
    def done(self) -> bool:
        return self._stream.tell() == len(self._stream.getvalue())


def make_handler(**options: Any) -> XMLRPCHandler:
    options.setdefault("pythonpath", (FUNCS_DIR,))
    if "instance" not in options:
        options.setdefault("functions", FUNCTIONS)
    mount = Mount(path="/RPC2", type="xmlrpc", options=XMLRPCHandler.Options(**options))
    return XMLRPCHandler(mount, HandlerContext())


def post(
    handler: XMLRPCHandler,
    body: bytes,
    *,
    method: str = "POST",
    path: str = "/RPC2",
    headers: list[tuple[str, str]] | None = None,
    declared: bool = True,
) -> Response:
    fields = Headers([("Host", "localhost"), ("Content-Type", "text/xml")] if headers is None else headers)
    request = Request(
        method=method,
        target=path,
        raw_path=path,
        path=path,
        query="",
        version="HTTP/1.1",
        headers=fields,
        body=BytesBody(body, declared),
        client=("127.0.0.1", 40000),
        server=("127.0.0.1", 8000),
    )
    return handler.handle(request)


def call(handler: XMLRPCHandler, method: str, *params: Any, allow_none: bool = False, **kwargs: Any) -> Any:
    """Marshal a call with the stdlib, run it through the handler, unmarshal the answer."""
    response = post(handler, xmlrpc.client.dumps(params, method, allow_none=allow_none).encode(), **kwargs)
    assert response.status == 200
    body = response.body
    assert isinstance(body, bytes)
    if dict(response.headers.items()).get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return xmlrpc.client.loads(body, use_builtin_types=True)[0][0]


def fault_of(handler: XMLRPCHandler, body: bytes, **kwargs: Any) -> xmlrpc.client.Fault:
    response = post(handler, body, **kwargs)
    assert response.status == 200
    assert isinstance(response.body, bytes)
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(response.body)
    return info.value


@pytest.fixture(scope="module")
def handler() -> XMLRPCHandler:
    return make_handler()


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key", "text"),
    [
        ({"functions": {"f": "rpctest_funcs:nope"}}, "functions.f", "AttributeError"),
        ({"functions": {"f": "rpctest_no_such_module:f"}}, "functions.f", "ModuleNotFoundError"),
        ({"functions": {"f": "rpctest_broken:f"}}, "functions.f", "refuses to load"),
        ({"functions": {"f": "rpctest_funcs:not_callable"}}, "functions.f", "not callable"),
        ({"functions": {"f": "no-colon"}}, "functions.f", "module:name"),
        ({"functions": {"system.listMethods": "rpctest_funcs:add"}}, "functions.system.listMethods", "reserved"),
        ({"functions": {}}, "functions", "functions, an instance or register"),
        ({"instance": "rpctest_instance:missing"}, "instance", "AttributeError"),
        ({"instance": "rpctest_funcs:fail()"}, "instance", "TypeError"),
        ({"functions": FUNCTIONS, "encoding": "klingon-8"}, "encoding", "unknown encoding"),
        ({"functions": FUNCTIONS, "pythonpath": (FUNCS_DIR / "missing",)}, "pythonpath", "does not exist"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(OptionError) as info:
        make_handler(**options)
    assert info.value.key == key
    assert text in info.value.message


def test_same_module_name_from_two_pythonpaths_is_refused(tmp_path: Path) -> None:
    for number in (1, 2):
        (tmp_path / f"dir{number}").mkdir()
        module = tmp_path / f"dir{number}" / "rpctest_shadow.py"
        module.write_text(f"def which(): return {number}\n")
    first = make_handler(pythonpath=(tmp_path / "dir1",), functions={"which": "rpctest_shadow:which"})
    assert call(first, "which") == 1
    with pytest.raises(OptionError) as info:
        make_handler(pythonpath=(tmp_path / "dir2",), functions={"which": "rpctest_shadow:which"})
    assert info.value.key == "functions.which"
    assert "already imported" in info.value.message


def test_module_exiting_on_import_is_an_option_error(tmp_path: Path) -> None:
    (tmp_path / "rpctest_exits.py").write_text("import sys\nsys.exit(2)\n")
    with pytest.raises(OptionError) as info:
        make_handler(pythonpath=(tmp_path,), functions={"f": "rpctest_exits:f"})
    assert "SystemExit" in info.value.message


def test_options_defaults() -> None:
    options = XMLRPCHandler.Options()
    assert (options.introspection, options.multicall, options.allow_none) == (True, True, False)
    assert (options.max_body, options.gzip_threshold, options.encoding) == (1048576, 1400, "utf-8")
    assert options.debug is False and options.use_builtin_types is False


# --- HTTP level --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
def test_only_post(handler: XMLRPCHandler, method: str) -> None:
    with pytest.raises(MethodNotAllowed) as info:
        post(handler, b"", method=method)
    assert ("Allow", "POST") in info.value.headers


@pytest.mark.parametrize("path", ["/RPC2", "/RPC2/"])
def test_mount_path_and_trailing_slash(handler: XMLRPCHandler, path: str) -> None:
    assert call(handler, "add", 1, 2, path=path) == 3


def test_paths_below_the_mount_are_not_found(handler: XMLRPCHandler) -> None:
    with pytest.raises(NotFound):
        post(handler, xmlrpc.client.dumps((1, 2), "add").encode(), path="/RPC2/add")


@pytest.mark.parametrize(
    "content_type", [None, "text/xml", "TEXT/XML; charset=utf-8", "application/xml", "application/soap+xml"]
)
def test_xml_content_types_pass(handler: XMLRPCHandler, content_type: str | None) -> None:
    headers = [("Content-Type", content_type)] if content_type else []
    assert call(handler, "add", 2, 2, headers=headers) == 4


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_other_content_types_are_415(handler: XMLRPCHandler, content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        post(handler, xmlrpc.client.dumps((1, 2), "add").encode(), headers=[("Content-Type", content_type)])
    assert info.value.status == 415


@pytest.mark.parametrize("coding", ["br", "deflate", "gzip, gzip", "compress"])
def test_unknown_content_codings_are_415_with_accept_encoding(handler: XMLRPCHandler, coding: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        post(handler, b"<x/>", headers=[("Content-Type", "text/xml"), ("Content-Encoding", coding)])
    assert ("Accept-Encoding", "gzip") in info.value.headers


def test_max_body_by_content_length_before_reading() -> None:
    small = make_handler(max_body=200)
    body = xmlrpc.client.dumps(("x" * 300,), "echo").encode()
    fields = Headers([("Content-Type", "text/xml")])
    stream = BytesBody(body)
    request = Request(
        method="POST",
        target="/RPC2",
        raw_path="/RPC2",
        path="/RPC2",
        query="",
        version="HTTP/1.1",
        headers=fields,
        body=stream,
        client=("127.0.0.1", 1),
        server=("127.0.0.1", 2),
    )
    with pytest.raises(PayloadTooLarge):
        small.handle(request)
    assert stream.reads == 0  # refused before reading: no 100 Continue is sent


def test_max_body_without_content_length() -> None:
    small = make_handler(max_body=200)
    with pytest.raises(PayloadTooLarge):
        post(small, xmlrpc.client.dumps(("x" * 300,), "echo").encode(), declared=False)
    body = xmlrpc.client.dumps(("x" * 20,), "echo").encode()
    assert len(body) <= 200
    assert call(small, "echo", "x" * 20, declared=False) == "x" * 20


def test_gzip_request_body(handler: XMLRPCHandler) -> None:
    body = gzip.compress(xmlrpc.client.dumps((20, 22), "add").encode())
    for coding in ("gzip", "x-gzip", "GZIP, identity"):
        response = post(handler, body, headers=[("Content-Type", "text/xml"), ("Content-Encoding", coding)])
        assert isinstance(response.body, bytes)
        assert xmlrpc.client.loads(response.body)[0][0] == 42


def test_gzip_bomb_is_413_and_bounded() -> None:
    small = make_handler(max_body=10000)
    bomb = gzip.compress(b"<" + b" " * 50_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge):
        post(small, bomb, headers=[("Content-Encoding", "gzip")])


@pytest.mark.parametrize(
    "data",
    [b"not gzip at all", gzip.compress(b"<methodCall/>", mtime=0)[:-6], gzip.compress(b"<a/>", mtime=0) + b"junk"],
    ids=["not gzip", "truncated", "trailing junk"],
)
def test_corrupt_gzip_is_400(handler: XMLRPCHandler, data: bytes) -> None:
    with pytest.raises(BadRequest):
        post(handler, data, headers=[("Content-Encoding", "gzip")])


def test_response_gzip_only_above_threshold_and_when_accepted(handler: XMLRPCHandler) -> None:
    accept = [("Content-Type", "text/xml"), ("Accept-Encoding", "gzip")]
    small = post(handler, xmlrpc.client.dumps((10,), "big").encode(), headers=accept)
    assert "Content-Encoding" not in small.headers
    assert small.headers.get("Vary") == "Accept-Encoding"
    large = post(handler, xmlrpc.client.dumps((5000,), "big").encode(), headers=accept)
    assert large.headers.get("Content-Encoding") == "gzip"
    assert isinstance(large.body, bytes)
    assert xmlrpc.client.loads(gzip.decompress(large.body))[0][0] == "x" * 5000
    plain = post(handler, xmlrpc.client.dumps((5000,), "big").encode())
    assert "Content-Encoding" not in plain.headers
    never = make_handler(gzip_threshold=None)
    off = post(never, xmlrpc.client.dumps((5000,), "big").encode(), headers=accept)
    assert "Content-Encoding" not in off.headers and "Vary" not in off.headers


def test_response_content_type_and_encoding() -> None:
    latin = make_handler(encoding="iso-8859-1")
    response = post(latin, xmlrpc.client.dumps(("caf\u00e9 \u2603",), "echo").encode())
    assert response.headers.get("Content-Type") == "text/xml; charset=iso-8859-1"
    assert isinstance(response.body, bytes)
    assert response.body.startswith(b"<?xml version='1.0' encoding='iso-8859-1'?>")
    assert b"caf\xe9" in response.body and b"&#9731;" in response.body
    assert xmlrpc.client.loads(response.body)[0][0] == "caf\u00e9 \u2603"


# --- types ---------------------------------------------------------------------------------------


def test_every_type_round_trips(handler: XMLRPCHandler) -> None:
    when = datetime.datetime(2024, 2, 29, 23, 59, 58)
    values = [
        0,
        -(2**31),
        2**31 - 1,
        True,
        False,
        "",
        "sn\u00f8 <&>",
        1.5,
        -0.0,
        [1, [2, "x"]],
        {"a": 1, "nested": {"b": [True]}},
        when,
        b"\x00\xffbinary",
    ]
    for value in values:
        assert call(handler, "echo", value) == value
    assert call(handler, "type_names", when, xmlrpc.client.Binary(b"x")) == ["DateTime", "Binary"]


def test_use_builtin_types() -> None:
    builtin = make_handler(use_builtin_types=True)
    names = call(builtin, "type_names", datetime.datetime(2020, 1, 1), xmlrpc.client.Binary(b"x"))
    assert names == ["datetime", "bytes"]


def test_nil_only_when_allowed(handler: XMLRPCHandler) -> None:
    fault = fault_of(handler, xmlrpc.client.dumps((None,), "echo", allow_none=True).encode())
    assert fault.faultCode == -32603
    assert "cannot marshal None unless allow_none is enabled" in fault.faultString
    # an incoming <nil/> is understood either way, as the stdlib does; only answers are refused
    assert call(handler, "type_names", None, allow_none=True) == ["NoneType"]
    nil = make_handler(allow_none=True)
    assert call(nil, "echo", None, allow_none=True) is None
    assert call(nil, "return_none") is None
    assert call(nil, "echo", [None, {"k": None}], allow_none=True) == [None, {"k": None}]


def test_returning_none_without_allow_none_is_an_internal_fault(
    handler: XMLRPCHandler, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="porch.handlers.xmlrpc.handler"):
        fault = fault_of(handler, xmlrpc.client.dumps((), "return_none").encode())
    assert fault.faultCode == -32603
    assert "cannot marshal None" in fault.faultString
    assert "Traceback" in caplog.text


# --- faults --------------------------------------------------------------------------------------


def test_exception_becomes_fault_with_traceback_only_in_the_log(
    handler: XMLRPCHandler, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="porch.handlers.xmlrpc.handler"):
        fault = fault_of(handler, xmlrpc.client.dumps(("kaput",), "fail").encode())
    assert fault.faultCode == 1
    assert fault.faultString == "<class 'ValueError'>:kaput"
    assert "Traceback" not in fault.faultString
    record = next(r for r in caplog.records if r.name == "porch.handlers.xmlrpc.handler")
    assert record.exc_info is not None and "fail" in record.getMessage()
    assert "raise ValueError(message)" in caplog.text


def test_debug_puts_the_traceback_in_the_fault() -> None:
    debug = make_handler(debug=True)
    fault = fault_of(debug, xmlrpc.client.dumps(("kaput",), "fail").encode())
    assert fault.faultString.startswith("<class 'ValueError'>:kaput\nTraceback")
    assert "rpctest_funcs.py" in fault.faultString


def test_fault_raised_by_a_function_passes_through(handler: XMLRPCHandler) -> None:
    fault = fault_of(handler, xmlrpc.client.dumps((42, "my answer"), "fault").encode())
    assert (fault.faultCode, fault.faultString) == (42, "my answer")


def test_unmarshallable_fault_becomes_an_internal_fault(handler: XMLRPCHandler) -> None:
    fault = fault_of(handler, xmlrpc.client.dumps((), "bad_fault").encode())
    assert fault.faultCode == -32603 and "TypeError" in fault.faultString


def test_sys_exit_in_a_function_is_a_fault(handler: XMLRPCHandler) -> None:
    fault = fault_of(handler, xmlrpc.client.dumps((), "exit_worker").encode())
    assert fault.faultCode == 1 and "SystemExit" in fault.faultString


def test_unknown_method(handler: XMLRPCHandler) -> None:
    fault = fault_of(handler, xmlrpc.client.dumps((), "nope").encode())
    assert fault.faultCode == -32601
    assert fault.faultString == 'method "nope" is not supported'


@pytest.mark.parametrize(
    ("params", "text"), [((1,), "missing a required argument: 'b'"), ((1, 2, 3), "too many positional arguments")]
)
def test_wrong_argument_count_is_invalid_params(handler: XMLRPCHandler, params: tuple[int, ...], text: str) -> None:
    fault = fault_of(handler, xmlrpc.client.dumps(params, "add").encode())
    assert fault.faultCode == -32602
    assert fault.faultString == f"add: {text}"


def test_type_error_inside_a_function_is_an_application_fault(handler: XMLRPCHandler) -> None:
    fault = fault_of(handler, xmlrpc.client.dumps((), "inner_type_error").encode())
    assert fault.faultCode == 1 and "TypeError" in fault.faultString


def test_unmarshallable_results(handler: XMLRPCHandler) -> None:
    assert fault_of(handler, xmlrpc.client.dumps((), "return_set").encode()).faultCode == -32603


def test_factory_and_dotted_function_names(handler: XMLRPCHandler) -> None:
    assert call(handler, "add_ten", 5) == 15
    assert call(handler, "dotted.name", 5, 6) == 11


MALFORMED = [
    (b"", -32700),
    (b"not xml", -32700),
    (b"<methodCall><methodName>add</methodName>", -32700),
    (
        b"<methodCall><methodName>add</methodName><params><param><value><int>1</int></value></param>"
        b"</params></methodCall>trailing",
        -32700,
    ),
    (b"<methodResponse><params><param><value><int>1</int></value></param></params></methodResponse>", -32600),
    (b"<methodCall><params></params></methodCall>", -32600),
    (
        b"<methodCall><methodName>add</methodName><params><param><value><int>one</int></value>"
        b"</param></params></methodCall>",
        -32600,
    ),
    (
        b"<methodCall><methodName>echo</methodName><params><param><value><boolean>2</boolean>"
        b"</value></param></params></methodCall>",
        -32600,
    ),
    (
        b"<methodCall><methodName>echo</methodName><params><param><value><base64>A</base64>"
        b"</value></param></params></methodCall>",
        -32600,
    ),
    (b"<methodCall><methodName>echo</methodName><value><int>1</int></value></methodCall>", -32600),
    (
        b"<methodCall><methodName>echo</methodName><fault><value><struct><member><name>faultCode"
        b"</name><value><int>4</int></value></member><member><name>faultString</name><value>"
        b"<string>x</string></value></member></struct></value></fault></methodCall>",
        -32600,
    ),
    (b"\xff\xfe<\x00", -32700),
]


@pytest.mark.parametrize(("body", "code"), MALFORMED)
def test_malformed_bodies_are_faults(handler: XMLRPCHandler, body: bytes, code: int) -> None:
    assert fault_of(handler, body).faultCode == code
    assert call(handler, "add", 1, 1) == 2  # and the handler still works


def test_methodcall_without_params(handler: XMLRPCHandler) -> None:
    response = post(
        handler, b"<?xml version='1.0'?><methodCall><methodName>system.listMethods</methodName></methodCall>"
    )
    assert isinstance(response.body, bytes)
    assert "add" in xmlrpc.client.loads(response.body)[0][0]


@pytest.mark.parametrize(
    "body",
    [
        # billion laughs: entity expansion
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
        b"<methodCall><methodName>echo</methodName><params><param><value><string>&b;</string></value>"
        b"</param></params></methodCall>",
        # external entity (XXE)
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<methodCall><methodName>echo</methodName><params><param><value><string>&x;</string></value>"
        b"</param></params></methodCall>",
    ],
)
def test_dtds_are_refused(handler: XMLRPCHandler, body: bytes) -> None:
    fault = fault_of(handler, body)
    assert fault.faultCode == -32600
    assert "document type declarations" in fault.faultString


def test_deep_nesting_is_answered(handler: XMLRPCHandler) -> None:
    depth = 5000
    body = (
        b"<methodCall><methodName>echo</methodName><params><param>"
        + b"<value><array><data>" * depth
        + b"</data></array></value>" * depth
        + b"</param></params></methodCall>"
    )
    fault = fault_of(handler, body)
    assert fault.faultCode == -32603 and "recursion" in fault.faultString
    assert call(handler, "add", 1, 1) == 2


# --- instance ----------------------------------------------------------------------------------


def test_instance_public_methods_only() -> None:
    inst = make_handler(instance="rpctest_instance:calculator")
    assert call(inst, "add", 2, 3) == 5
    assert call(inst, "environment") == "visible"
    for name in ("_private", "inner.secret", "settings", "__init__", "__class__", "offset"):
        assert fault_of(inst, xmlrpc.client.dumps((), name).encode()).faultCode == -32601, name
    methods = call(inst, "system.listMethods")
    assert {"add", "environment"} <= set(methods)
    assert not [m for m in methods if m.startswith("_") or m.startswith("inner")]


def test_instance_factory_and_functions_together() -> None:
    both = make_handler(instance="rpctest_instance:make_calculator()", functions={"echo": "rpctest_funcs:echo"})
    assert call(both, "add", 1, 1) == 102
    assert call(both, "echo", "x") == "x"


def test_instance_with_its_own_dispatch(caplog: pytest.LogCaptureFixture) -> None:
    router = make_handler(instance="rpctest_instance:router")
    assert call(router, "any.dotted.thing", 1, 2) == "any.dotted.thing/2"
    assert "anything" in call(router, "system.listMethods")
    assert call(router, "system.methodHelp", "whatever") == "help for whatever"
    assert call(router, "system.methodSignature", "whatever") == "undef"
    with caplog.at_level(logging.ERROR, logger="porch.handlers.xmlrpc.handler"):
        fault = fault_of(router, xmlrpc.client.dumps((), "boom").encode())
    assert fault.faultString == "<class 'RuntimeError'>:router exploded"
    assert "router exploded" in caplog.text


# --- introspection and multicall --------------------------------------------------------------


def test_introspection(handler: XMLRPCHandler) -> None:
    methods = call(handler, "system.listMethods")
    assert {
        "add",
        "echo",
        "system.listMethods",
        "system.methodHelp",
        "system.methodSignature",
        "system.multicall",
    } <= set(methods)
    assert methods == sorted(methods)
    assert call(handler, "system.methodHelp", "add") == "Add two integers."
    assert call(handler, "system.methodHelp", "echo") == ""
    assert call(handler, "system.methodSignature", "add") == [["int", "int", "int"]]
    assert call(handler, "system.methodSignature", "optional") == [["int", "int"], ["int", "int", "int"]]
    assert call(handler, "system.methodSignature", "echo") == "undef"
    assert call(handler, "system.methodSignature", "keyword_only") == "undef"
    assert "methodName" in call(handler, "system.methodHelp", "system.multicall")
    fault = fault_of(handler, xmlrpc.client.dumps(("nope",), "system.methodHelp").encode())
    assert fault.faultCode == -32601


def test_introspection_and_multicall_can_be_off() -> None:
    bare = make_handler(introspection=False, multicall=False)
    for name in ("system.listMethods", "system.methodHelp", "system.multicall"):
        assert fault_of(bare, xmlrpc.client.dumps(([],), name).encode()).faultCode == -32601


def test_multicall(handler: XMLRPCHandler, caplog: pytest.LogCaptureFixture) -> None:
    calls = [
        {"methodName": "add", "params": [1, 2]},
        {"methodName": "fail", "params": ["in multicall"]},
        {"methodName": "nope", "params": []},
        {"methodName": "add", "params": [1]},
        {"methodName": "return_set", "params": []},
        {"methodName": "system.multicall", "params": [[]]},
        {"params": []},
        "not a struct",
        {"methodName": "echo", "params": "not an array"},
        {"methodName": "echo", "params": ["last"]},
    ]
    with caplog.at_level(logging.ERROR, logger="porch.handlers.xmlrpc.handler"):
        results = call(handler, "system.multicall", calls)
    assert results[0] == [3]
    assert results[1] == {"faultCode": 1, "faultString": "<class 'ValueError'>:in multicall"}
    assert [r["faultCode"] for r in results[2:9]] == [-32601, -32602, -32603, -32600, -32600, -32600, -32600]
    assert results[9] == ["last"]
    assert "in multicall" in caplog.text and "Traceback" in caplog.text
    assert fault_of(handler, xmlrpc.client.dumps(("x",), "system.multicall").encode()).faultCode == -32602


def test_demo_endpoint_functions() -> None:
    demo = make_handler(
        pythonpath=(DEMO_DIR,),
        functions={
            "add": "demo_rpc:add",
            "echo": "demo_rpc:echo",
            "divide": "demo_rpc:divide",
            "stats": "demo_rpc:stats",
            "sha256": "demo_rpc:sha256",
            "describe": "demo_rpc:describe",
            "now": "demo_rpc:now",
            "upper": "demo_rpc:upper",
            "subtract": "demo_rpc:subtract",
        },
    )
    assert call(demo, "add", 2, 3) == 5
    assert call(demo, "subtract", 2, 3) == -1
    assert call(demo, "upper", "abc") == "ABC"
    assert call(demo, "divide", 1, 4) == 0.25
    assert "ZeroDivisionError" in fault_of(demo, xmlrpc.client.dumps((1, 0), "divide").encode()).faultString
    assert call(demo, "stats", [1, 2, 3]) == {"count": 3, "sum": 6, "min": 1, "max": 3, "mean": 2.0}
    assert call(demo, "sha256", b"abc").startswith("ba7816bf")
    assert [call(demo, "describe", v) for v in (1, True, "s", 1.0, [], {}, b"b")] == [
        "int",
        "boolean",
        "string",
        "double",
        "array",
        "struct",
        "base64",
    ]
    assert isinstance(call(demo, "now"), datetime.datetime)
    assert call(demo, "system.methodSignature", "sha256") == [["string", "base64"]]
