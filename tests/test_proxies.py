"""Trusted proxies: the walk over Forwarded and X-Forwarded-* on its own, then through real
servers under both concurrency models -- the access log, WSGI and CGI environments, access rules
judged on the real client, request ids, and untrusted peers whose headers are not believed."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import CONCURRENCY_MODELS
from porchtest import PorchServer, wait_until
from requests.adapters import HTTPAdapter

from porch.config.settings import AccessRules
from porch.http.body import EmptyBody
from porch.http.messages import Headers, Request
from porch.spine.proxies import TrustedProxies, forwarded_elements

TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = TESTS_DIR / "wsgi_apps"
SCRIPTS = TESTS_DIR / "cgi_scripts"
ALL_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port")
PROXY = ("127.0.0.1", 50000)
PY = {".py": sys.executable}
UNTRUSTED = "127.0.0.2"  # on loopback, not in trusted_proxies


def proxies(headers: tuple[str, ...] = ALL_HEADERS, networks: tuple[str, ...] = ("127.0.0.1", "10.0.0.0/8")):
    return TrustedProxies(AccessRules(allow=tuple(ipaddress.ip_network(n) for n in networks), deny=()), headers)


def resolved(*fields: tuple[str, str], client: tuple[str, int] = PROXY, trusted: TrustedProxies | None = None):
    request = Request(
        method="GET",
        target="/",
        raw_path="/",
        path="/",
        query="",
        version="HTTP/1.1",
        headers=Headers([("Host", "inner.test:8000"), *fields]),
        body=EmptyBody(),
        client=client,
        server=("127.0.0.1", 8000),
    )
    return (trusted or proxies()).apply(request)


# --- the walk ---------------------------------------------------------------------------------


def test_the_client_is_the_first_untrusted_entry_from_the_right() -> None:
    request = resolved(("X-Forwarded-For", "6.6.6.6, 203.0.113.5, 10.1.2.3"))
    assert request.client == ("203.0.113.5", 0)  # the spoofed leftmost entry is never reached


def test_a_spoofed_leftmost_entry_is_not_believed() -> None:
    assert resolved(("X-Forwarded-For", "10.0.0.9, 198.51.100.4")).client == ("198.51.100.4", 0)


def test_every_entry_trusted_leaves_the_leftmost() -> None:
    assert resolved(("X-Forwarded-For", "10.0.0.2, 10.0.0.3, 127.0.0.1")).client == ("10.0.0.2", 0)


def test_several_lines_of_one_name_are_one_list() -> None:
    request = resolved(("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-For", "10.0.0.4, 10.0.0.5"))
    assert request.client == ("203.0.113.5", 0)
    request = resolved(("Forwarded", "for=203.0.113.5;proto=https"), ("Forwarded", "for=10.0.0.4"))
    assert (request.client, request.scheme) == (("203.0.113.5", 0), "https")


def test_x_forwarded_for_forms() -> None:
    assert resolved(("X-Forwarded-For", "2001:db8::1")).client == ("2001:db8::1", 0)
    assert resolved(("X-Forwarded-For", "[2001:db8::1]:4711")).client == ("2001:db8::1", 4711)
    assert resolved(("X-Forwarded-For", "203.0.113.5:4711")).client == ("203.0.113.5", 4711)


def test_forwarded_with_quoted_ipv6_proto_and_host() -> None:
    request = resolved(("Forwarded", 'for="[2001:db8:cafe::17]:4711";proto=https;host=www.example.com, for=10.0.0.1'))
    assert request.client == ("2001:db8:cafe::17", 4711)
    assert request.scheme == "https" and request.host == "www.example.com"
    assert request.headers.get_all("host") == ["www.example.com"]


def test_forwarded_parameters_come_from_the_clients_element() -> None:
    request = resolved(("Forwarded", "for=203.0.113.5;proto=https;host=outer.test, for=10.0.0.1;proto=http;host=mid"))
    assert (request.client, request.scheme, request.host) == (("203.0.113.5", 0), "https", "outer.test")


@pytest.mark.parametrize("node", ["unknown", "_hidden", '"_hidden:_port"', "UNKNOWN"])
def test_unknown_and_obfuscated_nodes_are_not_addresses(node: str) -> None:
    request = resolved(("Forwarded", f"for=203.0.113.5, for={node}"))
    assert request.client == PROXY  # the walk stops there: nobody further left is believed


def test_an_obfuscated_port_is_port_0() -> None:
    assert resolved(("Forwarded", 'for="203.0.113.5:_abc"')).client == ("203.0.113.5", 0)


@pytest.mark.parametrize(
    "value",
    [
        "for=203.0.113.5:80",  # a colon needs quotes
        'for="[2001:db8::1"',
        'for="203.0.113.5:99999"',
        'for="203.0.113.5:-1"',
        'for="2001:db8::1"',  # IPv6 needs brackets
        "for=203.0.113.5;for=203.0.113.6",
        'for="unterminated',
        "for",
    ],
)
def test_malformed_forwarded_is_ignored(value: str) -> None:
    assert resolved(("Forwarded", value)).client == PROXY


def test_malformed_x_forwarded_for_entries_stop_the_walk() -> None:
    assert resolved(("X-Forwarded-For", "203.0.113.5, not-an-address")).client == PROXY
    assert resolved(("X-Forwarded-For", "203.0.113.5:99999")).client == PROXY
    assert resolved(("X-Forwarded-For", "not-an-address, 203.0.113.5")).client == ("203.0.113.5", 0)


def test_a_malformed_forwarded_falls_back_to_x_forwarded() -> None:
    request = resolved(("Forwarded", "for=oops:1"), ("X-Forwarded-For", "203.0.113.5"))
    assert request.client == ("203.0.113.5", 0)


@pytest.mark.parametrize("proto", ["ftp", "https2", "", "h ttps", "wss"])
def test_only_http_and_https_are_schemes(proto: str) -> None:
    request = resolved(("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-Proto", proto))
    assert request.scheme == "http" and request.client == ("203.0.113.5", 0)


def test_proto_host_and_port_at_the_clients_position() -> None:
    request = resolved(
        ("X-Forwarded-For", "203.0.113.5, 10.0.0.1"),
        ("X-Forwarded-Proto", "https, http"),
        ("X-Forwarded-Host", "outer.test, mid.test"),
        ("X-Forwarded-Port", "8443, 80"),
    )
    assert (request.scheme, request.headers.get("host")) == ("https", "outer.test:8443")
    # one value for a longer chain: the proxy that set it spoke for all
    request = resolved(("X-Forwarded-For", "203.0.113.5, 10.0.0.1"), ("X-Forwarded-Proto", "https"))
    assert request.scheme == "https"


def test_x_forwarded_port_joins_the_host() -> None:
    assert resolved(("X-Forwarded-Port", "443")).headers.get("host") == "inner.test:443"
    assert resolved(("X-Forwarded-Host", "[2001:db8::1]:81"), ("X-Forwarded-Port", "444")).host == "[2001:db8::1]"
    assert resolved(("X-Forwarded-Port", "4430000")).headers.get("host") == "inner.test:8000"


def test_a_bad_forwarded_host_is_ignored() -> None:
    request = resolved(("X-Forwarded-Host", "bad host/"), ("X-Forwarded-For", "203.0.113.5"))
    assert request.headers.get("host") == "inner.test:8000" and request.client == ("203.0.113.5", 0)


def test_only_the_listed_headers_are_read() -> None:
    fields = (
        ("Forwarded", "for=192.0.2.1;proto=https;host=fwd.test"),
        ("X-Forwarded-For", "203.0.113.5"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "xfh.test"),
    )
    default = resolved(*fields, trusted=proxies(("x-forwarded-for", "x-forwarded-proto")))
    assert (default.client, default.scheme, default.host) == (("203.0.113.5", 0), "https", "inner.test")
    only_for = resolved(*fields, trusted=proxies(("x-forwarded-for",)))
    assert (only_for.client, only_for.scheme) == (("203.0.113.5", 0), "http")
    forwarded = resolved(*fields, trusted=proxies(("forwarded", "x-forwarded-for")))
    assert (forwarded.client, forwarded.scheme, forwarded.host) == (("192.0.2.1", 0), "https", "fwd.test")
    only_proto = resolved(*fields, trusted=proxies(("x-forwarded-proto",)))
    assert (only_proto.client, only_proto.scheme) == (PROXY, "https")


def test_an_untrusted_peer_changes_nothing() -> None:
    fields = (("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil"))
    original = resolved(*fields, client=("192.0.2.50", 1))
    assert original.client == ("192.0.2.50", 1) and original.scheme == "http" and original.host == "inner.test"
    assert original.headers.get("x-forwarded-for") == "203.0.113.5"
    assert resolved(*fields, client="").client == ""  # a Unix-socket peer has no address to trust


def test_the_parsed_headers_are_never_changed() -> None:
    headers = Headers([("Host", "inner.test"), ("X-Forwarded-Host", "outer.test")])
    request = Request("GET", "/", "/", "/", "", "HTTP/1.1", headers, EmptyBody(), PROXY, ("127.0.0.1", 8000))
    changed = proxies().apply(request)
    assert changed.host == "outer.test" and request.headers.get("host") == "inner.test"
    assert changed.headers is not headers


def test_forwarded_elements() -> None:
    assert forwarded_elements(['for=a;proto="x\\"y,z" , ,;for=b', "by=c"]) == [
        {"for": "a", "proto": 'x"y,z'},
        {"for": "b"},
        {"by": "c"},
    ]


# --- through a real server ----------------------------------------------------------------------


def wsgi_mount(path: str, **extra: object) -> dict[str, object]:
    return {"path": path, "type": "wsgi", "app": "wsgitest_core:application", "pythonpath": [str(APPS_DIR)], **extra}


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    config = {
        "concurrency": request.param,
        "threads": 4,
        "trusted_proxies": ["127.0.0.1"],
        "proxy_headers": ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"],
        "timeouts": {"header": 5, "keepalive": 5, "body": 5, "graceful": 5},
        "mounts": [
            wsgi_mount("/"),
            wsgi_mount("/admin", access={"allow": ["203.0.113.0/24"]}),
            {"path": "/cgi", "type": "cgi", "script": str(SCRIPTS / "envjson.py"), "interpreters": PY},
        ],
    }
    srv = PorchServer.start(config, tmp_path_factory.mktemp(f"proxies-{request.param}"))
    yield srv
    srv.stop()


class SourceAdapter(HTTPAdapter):
    """requests from a chosen loopback source address."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]


def get(server: PorchServer, path: str, source: str = "127.0.0.1", **headers: str) -> requests.Response:
    with requests.Session() as session:
        session.mount("http://", SourceAdapter(source))
        fields = {name.replace("_", "-"): value for name, value in headers.items()}
        return session.get(server.url + path, headers=fields, timeout=5)


def access_line(server: PorchServer, target: str) -> str:
    """The access line of the request for ``target`` (lines are written after the response)."""
    found = wait_until(lambda: [line for line in server.access_lines() if f" {target} " in line], target)
    return str(found[0])


FORWARDED = {"X_Forwarded_For": "6.6.6.6, 203.0.113.5", "X_Forwarded_Proto": "https", "X_Forwarded_Host": "www.test"}


def test_wsgi_sees_the_client(server: PorchServer) -> None:
    environ = get(server, "/environ", **FORWARDED).json()
    assert environ["REMOTE_ADDR"] == "203.0.113.5" and environ["wsgi.url_scheme"] == "https"
    assert environ["HTTP_HOST"] == "www.test" and environ["SERVER_NAME"] == "www.test"
    assert environ["SERVER_PORT"] == "443" and environ["HTTPS"] == "on"
    assert environ["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 203.0.113.5"  # still there for the app


def test_cgi_sees_the_client(server: PorchServer) -> None:
    env = get(server, "/cgi", **FORWARDED).json()["env"]
    assert env["REMOTE_ADDR"] == "203.0.113.5" and env["HTTPS"] == "on" and env["SERVER_NAME"] == "www.test"


def test_the_access_log_names_the_client(server: PorchServer) -> None:
    assert get(server, "/environ?logged=trusted", **FORWARDED).status_code == 200
    assert access_line(server, "/environ?logged=trusted").startswith("203.0.113.5 ")


def test_access_rules_judge_the_real_client(server: PorchServer) -> None:
    assert get(server, "/admin/environ", X_Forwarded_For="203.0.113.5").status_code == 200
    assert get(server, "/admin/environ", X_Forwarded_For="198.51.100.1").status_code == 403
    assert get(server, "/admin/environ").status_code == 403  # the proxy itself is not in the allow list
    assert get(server, "/admin/environ", UNTRUSTED, X_Forwarded_For="203.0.113.5").status_code == 403


def test_an_untrusted_peers_headers_pass_through_unbelieved(server: PorchServer) -> None:
    environ = get(server, "/environ?logged=untrusted", UNTRUSTED, **FORWARDED).json()
    assert environ["REMOTE_ADDR"] == UNTRUSTED and environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 203.0.113.5" and environ["HTTP_X_FORWARDED_HOST"] == "www.test"
    assert environ["HTTP_HOST"] == server.address
    assert access_line(server, "/environ?logged=untrusted").startswith(f"{UNTRUSTED} ")


def test_request_ids_stay_the_peers_to_give(server: PorchServer) -> None:
    trusted = get(server, "/environ", X_Request_ID="edge-1", X_Forwarded_For="203.0.113.5").json()
    assert trusted["porch.request_id"] == "edge-1" and trusted["REMOTE_ADDR"] == "203.0.113.5"
    untrusted = get(server, "/environ", UNTRUSTED, X_Request_ID="edge-2").json()
    assert untrusted["porch.request_id"] != "edge-2"


def test_malformed_values_are_ignored_not_errors(server: PorchServer) -> None:
    environ = get(server, "/environ", X_Forwarded_For="not, an, [address", X_Forwarded_Proto="gopher").json()
    assert environ["REMOTE_ADDR"] == "127.0.0.1" and environ["wsgi.url_scheme"] == "http"
    assert "Traceback" not in server.error_text()


def test_a_raw_request_with_two_forwarded_for_lines(server: PorchServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(
            b"GET /environ HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\n"
            b"X-Forwarded-For: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert json.loads(data.partition(b"\r\n\r\n")[2])["REMOTE_ADDR"] == "203.0.113.9"
