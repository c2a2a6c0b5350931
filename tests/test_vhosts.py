"""Virtual hosts: mounts for exact names, lists and ``*.`` wildcards, the most specific winning,
their config errors and overlaps, and HTTPS listeners holding several certificates chosen by SNI --
routing tables in process, then real servers over loopback."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from certs import self_signed
from conftest import CONCURRENCY_MODELS, need_program
from porchtest import PorchServer

from porch.config.load import load_config
from porch.config.settings import Certificate, ConfigError, Mount, TLSSettings
from porch.handlers.base import Handler
from porch.http.errors import NotFound
from porch.net.tls import TLSSetupError, dns_names, server_context
from porch.spine.dispatch import Router

ECHO = "config_handlers:EchoHandler"
Start = Callable[..., PorchServer]


# --- the routing table -----------------------------------------------------------------------


class Site(Handler):
    """A handler that is only told apart by its name: the router never calls it."""

    def __init__(self, name: str) -> None:
        self.name = name


def router(*mounts: tuple[str, str | tuple[str, ...]]) -> Callable[[str, str], str]:
    """``served(host, path)``: which of ``mounts`` ((path, hosts) pairs) serves the request."""
    table = Router(
        [
            (Mount(path=path, type="x", host=(hosts,) if isinstance(hosts, str) else hosts), Site(f"{hosts}{path}"))
            for path, hosts in mounts
        ]
    )

    def served(host: str, path: str) -> str:
        try:
            handler = table.match(host, path).handler
        except NotFound:
            return "404"
        assert isinstance(handler, Site)
        return handler.name

    return served


def test_an_exact_name_beats_wildcards_which_beat_mounts_for_any_host() -> None:
    served = router(("/", ()), ("/", "*.example.org"), ("/", "*.a.example.org"), ("/", "www.a.example.org"))
    assert served("www.a.example.org", "/") == "www.a.example.org/"
    assert served("api.a.example.org", "/") == "*.a.example.org/"  # the longer wildcard suffix
    assert served("x.y.a.example.org", "/") == "*.a.example.org/"  # a wildcard covers several labels
    assert served("a.example.org", "/") == "*.example.org/"  # "*.a.example.org" is not "a.example.org"
    assert served("example.org", "/") == "()/"  # nor is "*.example.org" the bare name
    assert served("other.test", "/") == "()/"


def test_a_mount_answers_every_name_of_its_list() -> None:
    served = router(("/", ("a.test", "*.b.test")), ("/", ()))
    assert [served(host, "/") for host in ("a.test", "x.b.test", "b.test", "c.test")] == [
        "('a.test', '*.b.test')/",
        "('a.test', '*.b.test')/",
        "()/",
        "()/",
    ]


def test_the_request_host_matches_whatever_its_case_and_trailing_dot() -> None:
    served = router(("/", "www.example.org"), ("/", "*.example.net"))
    assert served("WWW.Example.ORG", "/") == "www.example.org/"
    assert served("www.example.org.", "/") == "www.example.org/"
    assert served("Shop.Example.NET.", "/") == "*.example.net/"
    assert served("", "/") == "404"


def test_the_host_is_chosen_before_the_path_then_the_longest_prefix() -> None:
    """As nginx: the most specific host group that has a mount for the path, then the longest prefix there."""
    served = router(("/", "a.test"), ("/app", "a.test"), ("/app/deep", ()), ("/api", "*.test"), ("/", ()))
    assert served("a.test", "/app/deep/x") == "a.test/app"  # a host-specific mount beats a longer host-less one
    assert served("a.test", "/api") == "a.test/"  # so does a shorter exact one beat a longer wildcard one
    assert served("b.test", "/api/v1") == "*.test/api"
    assert served("b.test", "/other") == "()/"  # the wildcard group has no mount for it: on to the next
    assert served("b.test", "/app/deep") == "()/app/deep"
    assert served("a.test", "/application") == "a.test/"  # prefixes match whole segments


def test_without_a_mount_for_any_host_an_unknown_host_is_not_found() -> None:
    served = router(("/", "a.test"))
    assert (served("a.test", "/x"), served("b.test", "/x")) == ("a.test/", "404")


# --- the config ------------------------------------------------------------------------------


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(text: str) -> Any:
    Path("porch.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return load_config("porch.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return [str(problem) for problem in caught.value.problems]


def test_host_takes_one_name_or_a_list_normalized_as_requests_carry_them(here: Path) -> None:
    config = load(f"""
        mounts:
          - {{path: /, type: "{ECHO}", root: ., host: WWW.Example.ORG.}}
          - path: /a
            type: "{ECHO}"
            root: .
            host: ["*.Example.net", shop.example.net, 127.0.0.1, "[::1]", b.test, B.test]
          - {{path: /b, type: "{ECHO}", root: ., host: null}}
          - {{path: /c, type: "{ECHO}", root: .}}
    """)
    assert [mount.host for mount in config.mounts] == [
        ("www.example.org",),
        ("*.example.net", "shop.example.net", "127.0.0.1", "[::1]", "b.test"),
        (),
        (),
    ]


def test_invalid_host_names_are_errors_naming_their_lines(here: Path) -> None:
    long_name = ".".join(["a" * 60] * 5)  # 304 characters
    assert problems(f"""
        mounts:
          - path: /
            type: "{ECHO}"
            root: .
            host:
              - good.example
              - "*"
              - a.*.b
              - "*.*.example"
              - a..example
              - {long_name}
              - "example.org:8080"
              - "*."
              - "[nonsense]"
    """) == [
        "porch.yaml:7: mounts[0].host[1]: expected a wildcard '*.' and a host name (like *.example.org), got '*'",
        "porch.yaml:8: mounts[0].host[2]: expected a wildcard '*.' and a host name (like *.example.org), got 'a.*.b'",
        "porch.yaml:9: mounts[0].host[3]: expected a wildcard '*.' and a host name (like *.example.org), "
        "got '*.*.example'",
        "porch.yaml:10: mounts[0].host[4]: expected a host name without port (like www.example.org), got 'a..example'",
        f"porch.yaml:11: mounts[0].host[5]: expected a host name without port (like www.example.org), "
        f"got '{long_name}'",
        "porch.yaml:12: mounts[0].host[6]: expected a host name without port (like www.example.org), "
        "got 'example.org:8080'",
        "porch.yaml:13: mounts[0].host[7]: expected a wildcard '*.' and a host name (like *.example.org), got '*'",
        "porch.yaml:14: mounts[0].host[8]: expected '[ipv6-address]', got '[nonsense]'",
    ]


def test_the_same_path_for_the_same_hosts_is_an_error(here: Path) -> None:
    assert problems(f"""
        mounts:
          - {{path: /app, type: "{ECHO}", root: ., host: [a.example, b.example]}}
          - {{path: /app, type: "{ECHO}", root: ., host: [c.example, B.example]}}
          - {{path: /wild, type: "{ECHO}", root: ., host: "*.example"}}
          - {{path: /wild, type: "{ECHO}", root: ., host: ["*.Example.", c.example]}}
          - {{path: /any, type: "{ECHO}", root: .}}
          - {{path: /any/, type: "{ECHO}", root: .}}
    """) == [
        "porch.yaml:3: mounts[1].path: '/app' for host 'b.example' is already mounted by mounts[0]",
        "porch.yaml:5: mounts[3].path: '/wild' for host '*.example' is already mounted by mounts[2]",
        "porch.yaml:7: mounts[5].path: '/any' is already mounted by mounts[4]",
    ]


def test_a_name_under_a_wildcard_of_the_same_path_is_a_warning(here: Path) -> None:
    """The exact name takes that host and the wildcard the others: often meant, but said."""
    config = load(f"""
        mounts:
          - {{path: /site, type: "{ECHO}", root: ., host: "*.example"}}
          - {{path: /site, type: "{ECHO}", root: ., host: deep.www.example}}
          - {{path: /covering, type: "{ECHO}", root: ., host: x.example}}
          - {{path: /covering, type: "{ECHO}", root: ., host: "*.example"}}
          - {{path: /nested, type: "{ECHO}", root: ., host: "*.example"}}
          - {{path: /nested, type: "{ECHO}", root: ., host: "*.www.example"}}
          - {{path: /bare, type: "{ECHO}", root: ., host: "*.example"}}
          - {{path: /bare, type: "{ECHO}", root: ., host: example}}
          - {{path: /bare, type: "{ECHO}", root: .}}
    """)
    assert [str(warning) for warning in config.warnings] == [
        "porch.yaml:3: mounts[1].path: '/site' for host 'deep.www.example' (by '*.example') is also mounted by "
        "mounts[0]; the exact name is served there",
        "porch.yaml:5: mounts[3].path: '/covering' for host '*.example' (covering 'x.example') is also mounted by "
        "mounts[2]; the exact name is served there",
    ]


def test_tls_takes_one_certificate_or_a_list_never_both(here: Path) -> None:
    for name in ("a.pem", "a.key", "b.pem", "b.key"):
        Path(name).write_text("")
    config = load("""
        listen:
          - address: "127.0.0.1:0"
            tls:
              certificates:
                - {cert: a.pem, key: a.key}
                - {cert: b.pem, key: b.key}
          - {address: "127.0.0.1:0", tls: {certificates: {cert: a.pem, key: a.key}}}
          - {address: "127.0.0.1:0", tls: {cert: a.pem, key: a.key}}
    """)
    several, one_listed, single = (listener.tls for listener in config.listen)
    assert [(c.cert.name, c.location) for c in several.pairs] == [
        ("a.pem", "porch.yaml:5: listen[0].tls.certificates[0]"),
        ("b.pem", "porch.yaml:6: listen[0].tls.certificates[1]"),
    ]
    assert [c.location for c in one_listed.pairs] == ["porch.yaml:7: listen[1].tls.certificates"]
    assert [(c.cert, c.key) for c in single.pairs] == [(here / "a.pem", here / "a.key")]
    assert (several.cert, several.key) == (here / "a.pem", here / "a.key")  # the default certificate
    assert problems("""
        listen:
          - {address: "127.0.0.1:0", tls: {cert: a.pem, key: a.key, certificates: [{cert: b.pem, key: b.key}]}}
          - {address: "127.0.0.1:0", tls: {min_version: TLSv1.3}}
          - {address: "127.0.0.1:0", tls: {certificates: []}}
          - address: "127.0.0.1:0"
            tls:
              certificates:
                - {cert: a.pem, key: a.key}
                - {cert: missing.pem, key: b.key}
    """) == [
        "porch.yaml:2: listen[0].tls.certificates: give 'cert' and 'key' or 'certificates', not both",
        "porch.yaml:3: listen[1].tls.cert: required key missing (or give 'certificates')",
        "porch.yaml:3: listen[1].tls.key: required key missing (or give 'certificates')",
        "porch.yaml:4: listen[2].tls.certificates: expected one certificate at least, {cert, key}",
        f"porch.yaml:9: listen[3].tls.certificates[1].cert: file 'missing.pem' does not exist (relative to {here})",
    ]


# --- certificates ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Self-signed certificates: "a" for a.test and *.a.test, "b" for b.test and *.b.test, "ip" for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("certs")
    return {
        "a": self_signed(directory, "a", "/CN=a.test", "-addext", "subjectAltName=DNS:a.test,DNS:*.A.test"),
        "b": self_signed(
            directory, "b", "/CN=b.test", "-addext", "subjectAltName=DNS:b.test,IP:127.0.0.1,DNS:*.b.test"
        ),
        "ip": self_signed(directory, "ip", "/CN=ip", "-addext", "subjectAltName=IP:127.0.0.1"),
    }


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_the_names_are_the_dns_entries_of_the_subject_alt_name(certificates: dict[str, tuple[Path, Path]]) -> None:
    assert dns_names(der(certificates["a"][0])) == ("a.test", "*.a.test")
    assert dns_names(der(certificates["b"][0])) == ("b.test", "*.b.test")  # SNI never asks for an IP address
    assert dns_names(der(certificates["ip"][0])) == ()


def test_a_certificate_no_name_could_choose_is_refused_unless_it_is_the_default(
    certificates: dict[str, tuple[Path, Path]],
) -> None:
    (a_cert, a_key), (ip_cert, ip_key) = certificates["a"], certificates["ip"]
    default_without_names = (Certificate(ip_cert, ip_key), Certificate(a_cert, a_key))
    server_context(TLSSettings(ip_cert, ip_key, certificates=default_without_names))
    unreachable = (
        Certificate(a_cert, a_key),
        Certificate(ip_cert, ip_key, "porch.yaml:9: listen[0].tls.certificates[1]"),
    )
    with pytest.raises(TLSSetupError) as caught:
        server_context(TLSSettings(a_cert, a_key, certificates=unreachable))
    assert str(caught.value).startswith(
        f"porch.yaml:9: listen[0].tls.certificates[1]: {ip_cert} names no DNS host in its subjectAltName"
    )


def peer_certificate(port: int, server_name: str | None) -> bytes:
    """The DER certificate the server sends when asked for ``server_name`` (None: no SNI)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(12) == b"HTTP/1.1 200"
        peer = sock.getpeercert(binary_form=True)
    assert peer is not None
    return peer


@pytest.mark.parametrize("concurrency", CONCURRENCY_MODELS)
def test_each_sni_name_gets_its_certificate_and_others_the_first(
    porch: Start, certificates: dict[str, tuple[Path, Path]], concurrency: str
) -> None:
    (a_cert, a_key), (b_cert, b_key) = certificates["a"], certificates["b"]
    tls = {"certificates": [{"cert": str(a_cert), "key": str(a_key)}, {"cert": str(b_cert), "key": str(b_key)}]}
    server = porch(
        {
            "listen": [{"address": "127.0.0.1:0", "tls": tls}],
            "concurrency": concurrency,
            "mounts": [{"path": "/", "type": "status"}],
        }
    )
    a, b = der(a_cert), der(b_cert)
    asked = ["b.test", "B.Test", "www.b.test", "deep.www.b.test", "a.test", "www.a.test", "other.test", None]
    # "*.b.test" covers one label only: deep.www.b.test gets the default, as does a client naming nothing
    assert [peer_certificate(server.port, name) for name in asked] == [b, b, b, a, a, a, a, a]
    verified = ssl.create_default_context(cafile=str(b_cert))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        verified.wrap_socket(raw, server_hostname="b.test") as sock,  # the name checks out, too
    ):
        assert sock.version() is not None


def test_curl_gets_the_site_and_certificate_of_each_name(
    porch: Start, certificates: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    curl = need_program("curl")
    sites = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text(f"site {name}")
        sites[name] = str(tmp_path / name)
    (a_cert, a_key), (b_cert, b_key) = certificates["a"], certificates["b"]
    tls = {"certificates": [{"cert": str(a_cert), "key": str(a_key)}, {"cert": str(b_cert), "key": str(b_key)}]}
    server = porch(
        {
            "listen": [{"address": "127.0.0.1:0", "tls": tls}],
            "mounts": [
                {"path": "/", "type": "static", "root": sites["a"], "host": ["a.test", "*.a.test"]},
                {"path": "/", "type": "static", "root": sites["b"], "host": "b.test"},
            ],
        }
    )
    for name, cert, body in (("www.a.test", a_cert, "site a"), ("b.test", b_cert, "site b")):
        fetched = subprocess.run(
            [curl, "-sS", "--cacert", str(cert), "--resolve", f"{name}:{server.port}:127.0.0.1"]
            + [f"https://{name}:{server.port}/"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert (fetched.returncode, fetched.stdout, fetched.stderr) == (0, body, "")


def test_a_bad_certificate_stops_start_up_naming_its_line(
    certificates: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    (a_cert, a_key), (b_cert, _) = certificates["a"], certificates["b"]
    config = tmp_path / "porch.yaml"
    certificates_listed = [{"cert": str(a_cert), "key": str(a_key)}, {"cert": str(b_cert), "key": str(a_key)}]
    listener = {"address": "127.0.0.1:0", "tls": {"certificates": certificates_listed}}
    config.write_text(
        yaml.safe_dump({"listen": [listener], "log": {"error": str(tmp_path / "error.log")}}, sort_keys=False)
    )
    started = subprocess.run(
        [sys.executable, "-m", "porch", "-c", str(config)], capture_output=True, text=True, timeout=20, cwd=tmp_path
    )
    assert started.returncode == 1
    assert (
        f"{config}:3: listen[0].tls: certificates[1]: the key {a_key} does not belong to the certificate {b_cert}"
    ) in started.stderr


# --- virtual hosts end to end ----------------------------------------------------------------


def test_two_sites_and_a_wildcard_by_host_header_on_one_listener(porch: Start, tmp_path: Path) -> None:
    sites = {}
    for name in ("a", "b", "wild", "default"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text(f"site {name}")
        sites[name] = str(tmp_path / name)
    server = porch(
        {
            "mounts": [
                {"path": "/", "type": "static", "root": sites["a"], "host": ["a.example", "www.a.example"]},
                {"path": "/", "type": "static", "root": sites["b"], "host": "b.example"},
                {"path": "/", "type": "static", "root": sites["wild"], "host": "*.example"},
                {"path": "/", "type": "static", "root": sites["default"]},
            ]
        }
    )
    hosts = ["a.example", "WWW.A.Example:8080", "b.example.", "b.example.:80", "shop.example", "example", "c.test"]
    assert [requests.get(server.url, headers={"Host": host}, timeout=5).text for host in hosts] == [
        "site a",
        "site a",
        "site b",
        "site b",
        "site wild",
        "site default",
        "site default",
    ]
