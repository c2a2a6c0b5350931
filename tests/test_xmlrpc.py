"""XML-RPC over real sockets: Python's ServerProxy, Perl's Frontier::Client and curl.

One server per concurrency model for the whole module, with several XML-RPC mounts that differ
in their options.  Every test talks to it through a real client over TCP.
"""

from __future__ import annotations

import datetime
import gzip
import http.client
import json
import os
import subprocess
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CONCURRENCY_MODELS, need_program
from porchtest import PorchServer

FUNCS_DIR = Path(__file__).parent / "rpc_funcs"
APPS_DIR = Path(__file__).parent.parent / "apps"
SMALL_BODY = 2048

FUNCTIONS = {
    name: f"rpctest_funcs:{name}"
    for name in (
        "add",
        "echo",
        "echo_all",
        "type_names",
        "fail",
        "fault",
        "exit_worker",
        "return_none",
        "slow_echo",
        "big",
        "pid",
    )
}
DEMO_FUNCTIONS = {
    name: f"demo_rpc:{name}"
    for name in ("add", "subtract", "divide", "echo", "upper", "now", "stats", "sha256", "describe")
}


def rpc_config(concurrency: str) -> dict[str, Any]:
    funcs = [str(FUNCS_DIR)]
    return {
        "concurrency": concurrency,
        "mounts": [
            {"path": "/RPC2", "type": "xmlrpc", "pythonpath": funcs, "functions": FUNCTIONS},
            {
                "path": "/rpc/nil",
                "type": "xmlrpc",
                "pythonpath": funcs,
                "functions": FUNCTIONS,
                "allow_none": True,
                "use_builtin_types": True,
            },
            {"path": "/rpc/debug", "type": "xmlrpc", "pythonpath": funcs, "functions": FUNCTIONS, "debug": True},
            {
                "path": "/rpc/small",
                "type": "xmlrpc",
                "pythonpath": funcs,
                "functions": FUNCTIONS,
                "max_body": SMALL_BODY,
            },
            {
                "path": "/rpc/plain",
                "type": "xmlrpc",
                "pythonpath": funcs,
                "functions": FUNCTIONS,
                "gzip_threshold": None,
                "introspection": False,
                "multicall": False,
            },
            {
                "path": "/rpc/instance",
                "type": "xmlrpc",
                "pythonpath": funcs,
                "instance": "rpctest_instance:make_calculator()",
            },
            {
                "path": "/rpc/denied",
                "type": "xmlrpc",
                "pythonpath": funcs,
                "functions": FUNCTIONS,
                "access": {"deny": ["127.0.0.0/8"]},
            },
            {"path": "/rpc/demo", "type": "xmlrpc", "pythonpath": [str(APPS_DIR)], "functions": DEMO_FUNCTIONS},
        ],
    }


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    started = PorchServer.start(rpc_config(request.param), tmp_path_factory.mktemp(f"xmlrpc-{request.param}"))
    yield started
    started.stop()


def proxy(server: PorchServer, path: str = "/RPC2", **kwargs: Any) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(server.url + path, **kwargs)


def post(
    server: PorchServer, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[http.client.HTTPResponse, bytes]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "text/xml", **(headers or {})})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


class GzipTransport(xmlrpc.client.Transport):
    """The stdlib transport with request compression switched on for every size."""

    encode_threshold = 0


# --- types -------------------------------------------------------------------------------------


def test_every_xmlrpc_type(server: PorchServer) -> None:
    rpc = proxy(server)
    when = datetime.datetime(1999, 12, 31, 23, 59, 59)
    cases: list[Any] = [
        42,
        -(2**31),
        2**31 - 1,
        True,
        False,
        "",
        "h\u00e9llo <&> \u2603",
        3.25,
        -1e300,
        [],
        [1, ["two", [3.0]]],
        {},
        {"a": 1, "b": {"c": [False]}},
    ]
    for value in cases:
        assert rpc.echo(value) == value
    assert rpc.echo(xmlrpc.client.DateTime(when)) == xmlrpc.client.DateTime(when)
    assert rpc.echo(xmlrpc.client.Binary(b"\x00\x01\xfe\xff")).data == b"\x00\x01\xfe\xff"
    assert rpc.type_names(1, True, "s", 1.5, [], {}, xmlrpc.client.DateTime(when), xmlrpc.client.Binary(b"")) == [
        "int",
        "bool",
        "str",
        "float",
        "list",
        "dict",
        "DateTime",
        "Binary",
    ]
    assert rpc.echo_all(1, "two", [3]) == [1, "two", [3]]


def test_nil_and_builtin_types_when_allowed(server: PorchServer) -> None:
    rpc = proxy(server, "/rpc/nil", allow_none=True, use_builtin_types=True)
    assert rpc.echo(None) is None
    assert rpc.return_none() is None
    assert rpc.echo([None, {"k": None}]) == [None, {"k": None}]
    when = datetime.datetime(2024, 2, 29, 12, 0, 0)
    assert rpc.type_names(when, b"raw") == ["datetime", "bytes"]
    assert rpc.echo(when) == when and rpc.echo(b"\xff") == b"\xff"
    with pytest.raises(xmlrpc.client.Fault) as info:  # the default mount refuses to send nil
        proxy(server, allow_none=True).return_none()
    assert info.value.faultCode == -32603


# --- faults ------------------------------------------------------------------------------------


def test_exception_is_a_fault_and_the_traceback_is_logged(server: PorchServer) -> None:
    with pytest.raises(xmlrpc.client.Fault) as info:
        proxy(server).fail("disk on fire")
    assert info.value.faultCode == 1
    assert info.value.faultString == "<class 'ValueError'>:disk on fire"
    deadline = time.monotonic() + 5
    while "disk on fire" not in server.error_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    log = server.error_text()
    assert "Traceback (most recent call last)" in log
    assert "raise ValueError(message)" in log and "disk on fire" in log


def test_debug_mount_sends_the_traceback(server: PorchServer) -> None:
    with pytest.raises(xmlrpc.client.Fault) as info:
        proxy(server, "/rpc/debug").fail("verbose")
    assert "Traceback (most recent call last)" in info.value.faultString
    assert "rpctest_funcs.py" in info.value.faultString


def test_fault_codes(server: PorchServer) -> None:
    rpc = proxy(server)
    expectations = [
        (lambda: rpc.fault(7, "custom"), 7, "custom"),
        (lambda: rpc.no_such_method(), -32601, 'method "no_such_method" is not supported'),
        (lambda: rpc.add(1), -32602, "add: missing a required argument: 'b'"),
        (lambda: rpc.exit_worker(), 1, "<class 'SystemExit'>:3"),
    ]
    for invoke, code, text in expectations:
        with pytest.raises(xmlrpc.client.Fault) as info:
            invoke()
        assert (info.value.faultCode, info.value.faultString) == (code, text)
    assert rpc.add(1, 2) == 3  # sys.exit in a function did not take the worker down


# --- introspection, multicall ------------------------------------------------------------------


def test_introspection(server: PorchServer) -> None:
    rpc = proxy(server, "/rpc/demo")
    methods = rpc.system.listMethods()
    assert set(DEMO_FUNCTIONS) | {
        "system.listMethods",
        "system.methodHelp",
        "system.methodSignature",
        "system.multicall",
    } == set(methods)
    assert rpc.system.methodHelp("add") == "Add two integers."
    assert rpc.system.methodSignature("add") == [["int", "int", "int"]]
    assert rpc.system.methodSignature("echo") == "undef"
    assert rpc.divide(1, 8) == 0.125
    plain = proxy(server, "/rpc/plain")
    with pytest.raises(xmlrpc.client.Fault) as info:
        plain.system.listMethods()
    assert info.value.faultCode == -32601


def test_multicall(server: PorchServer) -> None:
    multi = xmlrpc.client.MultiCall(proxy(server))
    multi.add(1, 2)
    multi.fail("second")
    multi.echo({"x": [1]})
    multi.nope()
    results = multi()
    assert results[0] == 3
    with pytest.raises(xmlrpc.client.Fault) as info:
        results[1]
    assert info.value.faultString == "<class 'ValueError'>:second"
    assert results[2] == {"x": [1]}
    with pytest.raises(xmlrpc.client.Fault) as info:
        results[3]
    assert info.value.faultCode == -32601


def test_instance_mount(server: PorchServer) -> None:
    rpc = proxy(server, "/rpc/instance")
    assert rpc.add(1, 2) == 103
    for name in ("_private", "inner.secret", "settings"):
        with pytest.raises(xmlrpc.client.Fault) as info:
            getattr(rpc, name)()
        assert info.value.faultCode == -32601


# --- gzip --------------------------------------------------------------------------------------


def test_gzip_both_ways_with_serverproxy(server: PorchServer) -> None:
    rpc = proxy(server, transport=GzipTransport())
    assert rpc.add(2, 3) == 5  # a tiny compressed request
    assert rpc.big(100_000) == "x" * 100_000  # a compressed answer, inflated by the client
    payload = "y" * 50_000
    assert rpc.echo(payload) == payload


def test_gzip_on_the_wire(server: PorchServer) -> None:
    body = gzip.compress(xmlrpc.client.dumps((20_000,), "big").encode())
    response, data = post(server, "/RPC2", body, {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    assert response.status == 200
    assert response.getheader("Content-Encoding") == "gzip"
    assert response.getheader("Vary") == "Accept-Encoding"
    assert len(data) < 1000
    assert xmlrpc.client.loads(gzip.decompress(data))[0][0] == "x" * 20_000
    response, data = post(
        server, "/RPC2", xmlrpc.client.dumps((20_000,), "big").encode(), {"Accept-Encoding": "gzip;q=0"}
    )
    assert response.getheader("Content-Encoding") is None and len(data) > 20_000
    response, data = post(
        server, "/rpc/plain", xmlrpc.client.dumps((20_000,), "big").encode(), {"Accept-Encoding": "gzip"}
    )
    assert response.getheader("Content-Encoding") is None and len(data) > 20_000
    small, data = post(server, "/RPC2", xmlrpc.client.dumps((1, 2), "add").encode(), {"Accept-Encoding": "gzip"})
    assert small.getheader("Content-Encoding") is None  # below the threshold


def test_unsupported_content_coding_is_415(server: PorchServer) -> None:
    response, _ = post(server, "/RPC2", b"<methodCall/>", {"Content-Encoding": "br"})
    assert response.status == 415
    assert response.getheader("Accept-Encoding") == "gzip"


# --- HTTP errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_non_post_is_405_with_allow(server: PorchServer, method: str) -> None:
    response, _ = post(server, "/RPC2", b"", method=method)
    assert response.status == 405
    assert response.getheader("Allow") == "POST"


def test_head_is_405(server: PorchServer) -> None:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.request("HEAD", "/RPC2")
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 405 and response.getheader("Allow") == "POST"


def test_wrong_content_type_is_415(server: PorchServer) -> None:
    response, _ = post(server, "/RPC2", b'{"method": "add"}', {"Content-Type": "application/json"})
    assert response.status == 415


def test_max_body_is_413(server: PorchServer) -> None:
    rpc = proxy(server, "/rpc/small")
    assert rpc.echo("fits") == "fits"
    with pytest.raises(xmlrpc.client.ProtocolError) as info:
        rpc.echo("x" * (SMALL_BODY + 1))
    assert info.value.errcode == 413
    assert proxy(server, "/rpc/small").echo("still serving") == "still serving"


def test_zip_bomb_is_413(server: PorchServer) -> None:
    bomb = gzip.compress(b"<" + b"a" * 20_000_000)
    response, _ = post(server, "/rpc/small", bomb, {"Content-Encoding": "gzip"})
    assert response.status == 413
    # a compressed body that inflates to just under the limit is fine
    fits = gzip.compress(xmlrpc.client.dumps(("z" * 1500,), "echo").encode())
    response, data = post(server, "/rpc/small", fits, {"Content-Encoding": "gzip"})
    assert response.status == 200 and xmlrpc.client.loads(data)[0][0] == "z" * 1500


def test_oversized_expect_continue_is_refused_before_the_body(server: PorchServer) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"POST /rpc/small HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
            b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
        )
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413 ")


def test_chunked_request_body(server: PorchServer) -> None:
    body = xmlrpc.client.dumps((4, 5), "add").encode()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.request(
        "POST", "/RPC2", body=iter([body[:50], body[50:]]), headers={"Content-Type": "text/xml"}, encode_chunked=True
    )
    response = connection.getresponse()
    assert xmlrpc.client.loads(response.read())[0][0] == 9
    connection.close()


def test_access_rules_apply_per_mount(server: PorchServer) -> None:
    with pytest.raises(xmlrpc.client.ProtocolError) as info:
        proxy(server, "/rpc/denied").add(1, 2)
    assert info.value.errcode == 403
    assert proxy(server).add(1, 2) == 3


MALFORMED_BODIES = [
    (b"", -32700),
    (b"this is not xml", -32700),
    (b"<methodCall><methodName>add</methodName><params>", -32700),
    (b"<methodResponse><params><param><value><int>1</int></value></param></params></methodResponse>", -32600),
    (
        b"<methodCall><methodName>add</methodName><params><param><value><int>x</int></value>"
        b"</param></params></methodCall>",
        -32600,
    ),
    (
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<methodCall><methodName>echo</methodName><params><param><value><string>&x;</string>"
        b"</value></param></params></methodCall>",
        -32600,
    ),
]


@pytest.mark.parametrize(("body", "code"), MALFORMED_BODIES)
def test_malformed_bodies_get_faults_and_the_server_keeps_serving(server: PorchServer, body: bytes, code: int) -> None:
    response, data = post(server, "/RPC2", body)
    assert response.status == 200
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(data)
    assert info.value.faultCode == code
    assert b"root:" not in data
    assert proxy(server).add(2, 2) == 4


def test_keep_alive_across_calls_and_faults(server: PorchServer) -> None:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    bodies = [
        xmlrpc.client.dumps((1, 2), "add"),
        xmlrpc.client.dumps(("x",), "fail"),
        "garbage",
        xmlrpc.client.dumps((3, 4), "add"),
    ]
    statuses, sockets = [], []
    for body in bodies:
        connection.request("POST", "/RPC2", body=body.encode(), headers={"Content-Type": "text/xml"})
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
        sockets.append(connection.sock)
    connection.close()
    assert statuses == [200, 200, 200, 200]
    assert sockets[0] is not None and all(s is sockets[0] for s in sockets)  # one connection


# --- concurrency -------------------------------------------------------------------------------


def test_twenty_threads_at_once(server: PorchServer) -> None:
    """20 clients call concurrently; every answer is the right one, and calls overlap."""
    threads_count, calls_each, pause = 20, 5, 0.2
    results: dict[int, list[Any]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_count)

    def client(number: int) -> None:
        try:
            rpc = proxy(server)
            barrier.wait(timeout=10)
            got = [rpc.slow_echo([number, i], pause if i == 0 else 0) for i in range(calls_each)]
            got.append(rpc.add(number, 1000))
            results[number] = got
        except BaseException as exc:  # reported below with the thread's number
            errors.append(exc)

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    elapsed = time.monotonic() - started
    assert not errors, errors
    assert sorted(results) == list(range(threads_count))
    for number, got in results.items():
        assert got == [[number, i] for i in range(calls_each)] + [number + 1000]
    assert elapsed < threads_count * pause  # the slow calls ran side by side, not in a queue


# --- clients that are not Python ---------------------------------------------------------------

PERL_CLIENT = r"""
use strict;
use warnings;
use Frontier::Client;
use JSON::PP;

my $rpc = Frontier::Client->new(url => $ARGV[0]);
my %out;
$out{add} = $rpc->call('add', 2, 40);
$out{string} = $rpc->call('echo', 'perl <&> "quoted"');
$out{unicode} = $rpc->call('echo', "caf\x{e9}");
$out{double} = $rpc->call('echo', $rpc->double(2.5));
$out{array} = $rpc->call('echo', [1, 'two', [3]]);
$out{struct} = $rpc->call('echo', {name => 'porch', list => [1, 2]});
$out{boolean} = $rpc->call('echo', $rpc->boolean(1))->value;
$out{types} = $rpc->call('type_names', $rpc->boolean(0), $rpc->base64('aGk='),
                         $rpc->date_time('20240229T23:59:58'), 7, 1.5);
$out{base64} = $rpc->call('echo', $rpc->base64('cGVybA=='))->value;
$out{datetime} = $rpc->call('echo', $rpc->date_time('20240229T23:59:58'))->value;
$out{methods} = $rpc->call('system.listMethods');
eval { $rpc->call('fail', 'from perl') };
$out{fault} = $@;
eval { $rpc->call('missing_method') };
$out{unknown} = $@;
print encode_json(\%out);
"""


def test_perl_frontier_client(server: PorchServer, tmp_path: Path) -> None:
    perl = need_program("perl")
    if subprocess.run([perl, "-MFrontier::Client", "-e1"], capture_output=True).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("Frontier::Client is required under CI=true (libfrontier-rpc-perl)")
        pytest.skip("Frontier::Client (libfrontier-rpc-perl) is not installed")
    script = tmp_path / "client.pl"
    script.write_text(PERL_CLIENT)
    done = subprocess.run([perl, str(script), server.url + "/RPC2"], capture_output=True, timeout=60, check=True)
    out = json.loads(done.stdout)
    assert int(out["add"]) == 42
    assert out["string"] == 'perl <&> "quoted"'
    assert out["unicode"] == "caf\u00e9"
    assert float(out["double"]) == 2.5
    assert [int(out["array"][0]), out["array"][1], [int(out["array"][2][0])]] == [1, "two", [3]]
    assert out["struct"]["name"] == "porch" and [int(v) for v in out["struct"]["list"]] == [1, 2]
    assert int(out["boolean"]) == 1
    assert out["types"] == ["bool", "Binary", "DateTime", "int", "float"]
    assert out["base64"].strip() == "cGVybA=="
    assert out["datetime"] == "20240229T23:59:58"
    assert "add" in out["methods"] and "system.multicall" in out["methods"]
    assert out["fault"].startswith("Fault returned from XML RPC Server, fault code 1: ")
    assert "from perl" in out["fault"]
    assert "fault code -32601" in out["unknown"]


def run_curl(server: PorchServer, path: str, body: bytes, *args: str) -> tuple[str, bytes]:
    curl = need_program("curl")
    done = subprocess.run(
        [
            curl,
            "-sS",
            "-D",
            "-",
            "-o",
            "-",
            "-H",
            "Content-Type: text/xml",
            "--data-binary",
            "@-",
            *args,
            server.url + path,
        ],
        input=body,
        capture_output=True,
        timeout=30,
        check=True,
    )
    head, _, content = done.stdout.partition(b"\r\n\r\n")
    return head.decode("latin-1"), content


HAND_WRITTEN_CALL = b"""<?xml version="1.0"?>
<methodCall>
  <methodName>echo</methodName>
  <params>
    <param><value><struct>
      <member><name>i4</name><value><i4>-17</i4></value></member>
      <member><name>bool</name><value><boolean>1</boolean></value></member>
      <member><name>untyped</name><value>plain text</value></member>
      <member><name>double</name><value><double>-0.5</double></value></member>
      <member><name>when</name>
        <value><dateTime.iso8601>19980717T14:08:55</dateTime.iso8601></value></member>
      <member><name>blob</name><value><base64>eW91IGNhbid0IHJlYWQgdGhpcyE=</base64></value></member>
      <member><name>list</name><value><array><data>
        <value><int>1</int></value><value><string>2</string></value>
      </data></array></value></member>
    </struct></value></param>
  </params>
</methodCall>
"""


def test_curl_with_a_hand_written_method_call(server: PorchServer) -> None:
    head, content = run_curl(server, "/RPC2", HAND_WRITTEN_CALL)
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: text/xml; charset=utf-8" in head.lower()
    (result,), _ = xmlrpc.client.loads(content, use_builtin_types=True)
    assert result == {
        "i4": -17,
        "bool": True,
        "untyped": "plain text",
        "double": -0.5,
        "when": datetime.datetime(1998, 7, 17, 14, 8, 55),
        "blob": b"you can't read this!",
        "list": [1, "2"],
    }


def test_curl_without_params_and_compressed(server: PorchServer) -> None:
    call = (
        b"<methodCall><methodName>big</methodName><params><param><value><int>9000</int>"
        b"</value></param></params></methodCall>"
    )
    head, content = run_curl(server, "/RPC2", call, "--compressed")
    assert "content-encoding: gzip" in head.lower()
    assert xmlrpc.client.loads(content)[0][0] == "x" * 9000  # curl inflated it
    no_params = b"<methodCall><methodName>system.listMethods</methodName></methodCall>"
    head, content = run_curl(server, "/rpc/demo", no_params)
    assert "upper" in xmlrpc.client.loads(content)[0][0]


def test_curl_sends_gzip(server: PorchServer) -> None:
    body = gzip.compress(xmlrpc.client.dumps(("via curl",), "upper").encode())
    head, content = run_curl(server, "/rpc/demo", body, "-H", "Content-Encoding: gzip")
    assert head.startswith("HTTP/1.1 200")
    assert xmlrpc.client.loads(content)[0][0] == "VIA CURL"


def test_curl_sees_405(server: PorchServer) -> None:
    curl = need_program("curl")
    done = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", server.url + "/RPC2"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert done.stdout == b"405"
