"""The config loader: YAML with lines, ${VAR} expansion, typed conversion, mounts, handlers, check.

Handlers come from tests/config_handlers.py (``config_handlers:EchoHandler`` ...), so these tests
do not depend on the real handler types.  Most tests run in a temporary directory holding
``porch.yaml`` and load it by that relative name, so messages read ``porch.yaml:LINE: KEY: ...``.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import config_handlers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from porch.config.load import config_from_mapping, load_config, parse_address, settings_reference
from porch.config.settings import AccessRules, Config, ConfigError, Limits, Listener, LogSettings, Timeouts, TLSSettings
from porch.config.yaml_nodes import expand
from porch.handlers.base import HandlerContext
from porch.handlers.build import build_handlers, check_config

ECHO = "config_handlers:EchoHandler"
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml"))
README_MARKER = "<!-- settings-reference -->"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in a fresh directory, so the config is loaded as plain "porch.yaml"."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str, name: str = "porch.yaml") -> str:
    Path(name).write_text(textwrap.dedent(text).lstrip("\n"))
    return name


def load(text: str, **kwargs: Any) -> Config:
    return load_config(write(text), **kwargs)


def problems(text: str, **kwargs: Any) -> list[str]:
    """Every problem load_config reports for ``text``, as the lines a user sees."""
    with pytest.raises(ConfigError) as caught:
        load(text, **kwargs)
    return [str(problem) for problem in caught.value.problems]


def echo_options(here: Path, text: str) -> Any:
    """The EchoHandler options of a one-mount config with ``text`` as extra mount keys."""
    body = textwrap.indent(textwrap.dedent(text).strip("\n"), "    ")
    config = load(f"mounts:\n  - path: /\n    type: {ECHO}\n    root: .\n{body}\n")
    return config.mounts[0].options


# --- files, defaults, YAML ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_file_gives_the_defaults(here: Path, text: str) -> None:
    config = load(text)
    defaults = Config()
    for name in ("listen", "concurrency", "workers", "threads", "limits", "timeouts", "log", "access", "mounts"):
        assert getattr(config, name) == getattr(defaults, name)
    assert config.source == here / "porch.yaml"
    assert [w.message for w in config.warnings] == ["no mounts: every request will be answered 404 Not Found"]


def test_source_is_the_resolved_file_and_messages_name_the_file_as_given(here: Path) -> None:
    (here / "conf").mkdir()
    write("threads: 0\n", "conf/porch.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config("conf/../conf/porch.yaml")
    assert str(caught.value) == "conf/../conf/porch.yaml:1: threads: must be greater than 0, got 0"
    write("threads: 3\n", "conf/porch.yaml")
    assert load_config("conf/../conf/porch.yaml").source == here / "conf" / "porch.yaml"


def test_a_missing_file_is_a_problem_not_a_traceback(here: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("nope.yaml")
    assert str(caught.value) == "nope.yaml: cannot read the config file: No such file or directory"


def test_yaml_syntax_errors_name_the_line(here: Path) -> None:
    found = problems("threads: 4\nlimits:\n  body: 1\n - x\n")
    assert len(found) == 1 and found[0].startswith("porch.yaml:4: not valid YAML:")


def test_an_unquoted_variable_in_flow_style_gets_a_hint(here: Path) -> None:
    found = problems("timeouts: {body: ${T}}\n")
    assert found[0].startswith("porch.yaml:1: not valid YAML:")
    assert "quote a value that contains ${...}" in found[0]


def test_the_top_level_must_be_one_mapping(here: Path) -> None:
    assert problems("- a\n- b\n") == ["porch.yaml:1: expected a mapping of settings at the top level, got a list"]
    assert problems("threads: 1\n---\nthreads: 2\n") == ["porch.yaml:3: expected one YAML document, found another here"]


def test_duplicate_keys_are_errors_at_the_second(here: Path) -> None:
    assert problems("""
        threads: 4
        limits: {body: 1, body: 2}
        threads: 8
    """) == [
        "porch.yaml:2: limits.body: duplicate key (first at line 2)",
        "porch.yaml:3: threads: duplicate key (first at line 1)",
    ]


def test_python_tags_are_refused_and_never_run(here: Path) -> None:
    found = problems("""
        server_header: !!python/object/apply:os.system ["touch pwned"]
    """)
    assert found == [
        "porch.yaml:1: server_header: unsupported YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'"
    ]
    assert not (here / "pwned").exists()


def test_an_alias_bomb_is_refused_quickly(here: Path) -> None:
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    started = time.monotonic()
    found = problems("\n".join(levels) + "\n")
    assert time.monotonic() - started < 5
    assert any("more than 100000 values" in line for line in found)


def test_a_recursive_alias_is_refused(here: Path) -> None:
    found = problems("server_header: &loop [*loop]\n")
    assert "server_header[0]: an alias refers to a value containing itself" in found[0]


def test_merge_keys_apply_and_explicit_keys_win(here: Path) -> None:
    config = load(f"""
        mounts:
          - &base {{type: "{ECHO}", root: ., count: 2, name: shared, path: /a}}
          - {{<<: *base, path: /b, count: 5}}
    """)
    first, second = config.mounts
    assert (second.path, second.options.count, second.options.name) == ("/b", 5, "shared")
    assert first.options.count == 2


# --- conversion of every supported type -----------------------------------------------------


def test_every_option_type_converts(here: Path) -> None:
    (here / "sub").mkdir()
    options = echo_options(
        here,
        """
        name: 0x1F
        count: 3
        ratio: 2
        enabled: yes
        mode: fast
        code: 302
        label: ~
        script: sub/run.sh
        index: default.htm
        search: [sub, /abs/dir, ~/lib]
        env: {PORT: 8000, NAME: porch}
        sizes: {small: 1, big: 1_000_000}
        networks: [10.1.2.3/8, "::1", 192.168.0.1]
        extra: {a: [1, two, null]}
    """,
    )
    assert options.root == here
    assert options.name == "0x1F"  # a string setting takes a YAML number's text as written
    assert (options.count, options.ratio, options.enabled) == (3, 2.0, True)
    assert isinstance(options.ratio, float)
    assert (options.mode, options.code, options.label) == ("fast", 302, None)
    assert options.script == here / "sub" / "run.sh"
    assert options.index == ("default.htm",)  # one value where a list is expected is a list of one
    assert options.search == (here / "sub", Path("/abs/dir"), Path.home() / "lib")
    assert options.env == {"PORT": "8000", "NAME": "porch"}
    assert options.sizes == {"small": 1, "big": 1000000}
    assert options.networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.0.1/32"),
    )
    assert options.extra == {"a": [1, "two", None]}


def test_empty_lists_and_mappings(here: Path) -> None:
    options = echo_options(here, "index:\nsearch: []\nenv:\n")
    assert (options.index, options.search, options.env) == ((), (), {})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("count: true", "count: expected an integer, got true"),
        ("count: 1.5", "count: expected an integer, got 1.5"),
        ("count: '8'", "count: expected an integer, got '8' (quoted, it is text: remove the quotes)"),
        ("count: [1]", "count: expected an integer, got a list"),
        ("count: 0", "count: must be greater than 0, got 0"),
        ("ratio: fast", "ratio: expected a number, got 'fast'"),
        ("ratio: .nan", "ratio: expected a number, got nan"),
        ("enabled: 1", "enabled: expected true or false, got 1"),
        ("enabled: 'true'", "enabled: expected true or false, got 'true' (quoted, it is text: remove the quotes)"),
        ("enabled: maybe", "enabled: expected true or false, got 'maybe'"),
        ("name: true", "name: expected a string, got true (quote it to mean the text)"),
        ("name: ~", "name: expected a string, got null"),
        ("name: {a: 1}", "name: expected a string, got a mapping"),
        ("mode: quick", "mode: expected one of 'fast', 'safe', got 'quick'"),
        ("mode: Fast", "mode: expected one of 'fast', 'safe', got 'Fast' (did you mean 'fast'?)"),
        ("code: 303", "code: expected one of 301, 302, got 303"),
        ("code: '301'", "code: expected one of 301, 302, got '301' (quoted, it is text: remove the quotes)"),
        ("index: {a: b}", "index: expected a string, got a mapping"),
        ("env: [a, b]", "env: expected a mapping, got a list"),
        ("env: {A: [1]}", "env.A: expected a string, got a list"),
        ("sizes: {big: huge}", "sizes.big: expected an integer, got 'huge'"),
        (
            "networks: [10.0.0.256]",
            "networks[0]: expected a network (CIDR such as 10.0.0.0/8) or an address, got '10.0.0.256'",
        ),
        ("search: [1, '']", "search[1]: expected a path, got ''"),
    ],
)
def test_conversion_errors_say_what_was_expected(here: Path, line: str, message: str) -> None:
    found = problems(f"mounts:\n  - path: /\n    type: {ECHO}\n    root: .\n    {line}\n")
    assert found == [f"porch.yaml:5: mounts[0].{message}"]


def test_a_missing_directory_is_named_as_written_with_the_base(here: Path) -> None:
    found = problems(f"""
        mounts:
          - {{path: /, type: "{ECHO}", root: .}}
          - {{path: /a, type: "{ECHO}", root: .}}
          - path: /b
            type: {ECHO}
            root: wwww
    """)
    assert found == [f"porch.yaml:6: mounts[2].root: directory 'wwww' does not exist (relative to {here})"]


def test_relative_paths_resolve_against_the_config_directory_not_the_cwd(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (here / "etc" / "www").mkdir(parents=True)
    write(f"mounts: [{{path: /, type: '{ECHO}', root: www}}]\nlog: {{error: logs/error.log}}\n", "etc/porch.yaml")
    monkeypatch.chdir("/")
    config = load_config(here / "etc" / "porch.yaml")
    assert config.mounts[0].options.root == here / "etc" / "www"
    assert config.log.error == str(here / "etc" / "logs" / "error.log")


def test_unsupported_option_types_and_clashing_names_are_problems(here: Path) -> None:
    found = problems("""
        mounts:
          - {path: /a, type: "config_handlers:UnsupportedTypeHandler", tags: [x]}
          - {path: /b, type: "config_handlers:ClashHandler"}
    """)
    assert found == [
        "porch.yaml:2: mounts[0].tags: the setting's type set[str] is not supported by the loader",
        "porch.yaml:3: mounts[1].type: the config_handlers:ClashHandler handler declares options named "
        "like mount keys: host",
    ]


# --- the global settings --------------------------------------------------------------------


def test_global_settings_convert(here: Path) -> None:
    config = load("""
        concurrency: forking
        workers: 3
        threads: 4
        max_children: 5
        limits: {body: 0, headers: 50}
        timeouts: {header: 2, keepalive: 0.5}
        log: {access: false, access_format: json, error: "-", level: debug}
        access: {allow: 127.0.0.1, deny: [10.0.0.0/8]}
        trusted_proxies: [192.168.1.0/24]
        server_header: ""
        mounts: []
    """)
    assert (config.concurrency, config.workers, config.threads, config.max_children) == ("forking", 3, 4, 5)
    assert config.limits == Limits(body=0, headers=50)
    assert config.timeouts == Timeouts(header=2.0, keepalive=0.5)
    assert config.log == LogSettings(access=False, access_format="json", error="-", level="debug")
    assert config.access == AccessRules(
        allow=(ipaddress.ip_network("127.0.0.1/32"),), deny=(ipaddress.ip_network("10.0.0.0/8"),)
    )
    assert config.trusted_proxies == (ipaddress.ip_network("192.168.1.0/24"),)
    assert config.server_header == ""
    assert config.warnings == ()  # "mounts: []" says no mounts on purpose


def test_workers_auto_is_the_cpu_count(here: Path) -> None:
    assert load("workers: auto\n").workers == (os.cpu_count() or 1)


def test_access_log_file_is_made_absolute_and_dash_is_kept(here: Path) -> None:
    config = load("log: {access: logs/access.log}\n")
    assert config.log.access == str(here / "logs" / "access.log")
    assert config.log.error == "-"
    assert problems("log: {access: ''}\n") == [
        "porch.yaml:1: log.access: expected '-', a file path (or false for access)"
    ]


def test_unknown_keys_suggest_the_closest_or_list_the_choices(here: Path) -> None:
    assert problems("""
        tread: 4
        limits: {bdy: 1}
        frobnicate: 1
        log: {acces: "-"}
    """) == [
        "porch.yaml:1: tread: unknown key 'tread' (did you mean 'threads'?)",
        "porch.yaml:2: limits.bdy: unknown key 'bdy' (did you mean 'body'?)",
        "porch.yaml:3: frobnicate: unknown key 'frobnicate' (expected one of: "
        f"{', '.join(f.name for f in fields(Config) if not f.metadata.get('internal'))})",
        "porch.yaml:4: log.acces: unknown key 'acces' (did you mean 'access'?)",
    ]


def test_loader_set_fields_cannot_be_written(here: Path) -> None:
    found = problems("source: /etc/passwd\n")
    assert found[0].startswith("porch.yaml:1: source: unknown key 'source'")


def test_every_problem_is_reported_at_once_in_line_order(here: Path) -> None:
    found = problems(f"""
        listen: ["127.0.0.1:99999"]
        threads: many
        concurrency: thread
        mounts:
          - path: app
            type: {ECHO}
            root: missing
            rot: x
          - {{path: /x, type: nosuch}}
        workers: 0
    """)
    assert [line.split(":")[1] for line in found] == ["1", "2", "3", "5", "7", "8", "9", "10"]
    assert found[0] == "porch.yaml:1: listen[0]: port must be a number from 0 to 65535, got '99999'"
    assert (
        found[2] == "porch.yaml:3: concurrency: expected one of 'threading', 'forking', got 'thread' "
        "(did you mean 'threading'?)"
    )
    assert found[4].startswith("porch.yaml:7: mounts[0].root: directory 'missing' does not exist")
    assert found[5] == "porch.yaml:8: mounts[0].rot: unknown key 'rot' (did you mean 'root'?)"
    assert found[6].startswith("porch.yaml:9: mounts[1].type: unknown handler type 'nosuch' (known: ")


# --- ${VAR} expansion -----------------------------------------------------------------------


def test_environment_variables_expand_before_conversion(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_PORT", "9000")
    monkeypatch.setenv("PORCH_THREADS", "12")
    monkeypatch.setenv("PORCH_EMPTY", "")
    monkeypatch.setenv("PORCH_DOLLAR", "a${B}c")
    monkeypatch.delenv("PORCH_UNSET", raising=False)
    config = load("""
        listen: ["127.0.0.1:${PORCH_PORT}", "[::1]:${PORCH_UNSET:-8001}"]
        threads: ${PORCH_THREADS}
        workers: ${PORCH_UNSET:-2}
        timeouts: {body: "${PORCH_UNSET:-2.5}"}
        log: {access: "${PORCH_UNSET:-false}"}
        server_header: $$HOME ${PORCH_EMPTY:-fallback} $5 ${PORCH_DOLLAR}
    """)
    assert [listener.address for listener in config.listen] == ["127.0.0.1:9000", "[::1]:8001"]
    assert (config.threads, config.workers, config.timeouts.body) == (12, 2, 2.5)
    assert config.log.access is False
    assert config.server_header == "$HOME fallback $5 a${B}c"  # values are never expanded twice


def test_expanded_values_still_have_to_fit(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_THREADS", "lots")
    monkeypatch.delenv("PORCH_UNSET", raising=False)
    assert problems("""
        threads: ${PORCH_THREADS}
        server_header: ${PORCH_UNSET}
        max_children: ${1BAD}
        log: {error: "${PORCH_UNSET:-x"}
    """) == [
        "porch.yaml:1: threads: expected an integer, got 'lots'",
        "porch.yaml:2: server_header: environment variable 'PORCH_UNSET' is not set "
        "(write '${PORCH_UNSET:-default}' to give a default)",
        "porch.yaml:3: max_children: bad environment variable name '1BAD' in '${1BAD}'",
        "porch.yaml:4: log.error: unterminated '${' in '${PORCH_UNSET:-x' (write '$$' for a literal dollar)",
    ]


def test_an_empty_expansion_means_null_for_optional_options(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_EMPTY", "")
    monkeypatch.setenv("PORCH_ON", "Yes")
    options = echo_options(here, "label: ${PORCH_EMPTY}\nenabled: ${PORCH_ON}\ncode: ${PORCH_UNSET:-302}\n")
    assert (options.label, options.enabled, options.code) == (None, True, 302)


@given(st.text())
def test_expand_never_raises_and_dollar_dollar_round_trips(text: str) -> None:
    result, errors = expand(text.replace("$", "$$"), {})
    assert (result, errors) == (text, [])
    if "$" not in text:
        assert expand(text, {}) == (text, [])


# --- listeners ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "normal"),
    [
        ("127.0.0.1:8000", "127.0.0.1:8000"),
        ("localhost:0", "localhost:0"),
        ("example.org:443", "example.org:443"),
        ("0.0.0.0:080", "0.0.0.0:80"),
        ("[::1]:8000", "[::1]:8000"),
        ("[::]:65535", "[::]:65535"),
        ("unix:/run/porch.sock", "unix:/run/porch.sock"),
    ],
)
def test_listen_address_forms(address: str, normal: str) -> None:
    assert parse_address(address, Path) == normal


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("8000", "expected 'host:port', '[ipv6]:port' or 'unix:/path', got '8000'"),
        (":8000", "expected 'host:port', '[ipv6]:port' or 'unix:/path', got ':8000'"),
        ("127.0.0.1:65536", "port must be a number from 0 to 65535, got '65536'"),
        ("127.0.0.1:http", "port must be a number from 0 to 65535, got 'http'"),
        ("127.0.0.1:-1", "port must be a number from 0 to 65535, got '-1'"),
        ("300.1.1.1:80", "'300.1.1.1' is not an IPv4 address"),
        ("::1:80", "an IPv6 address needs brackets: '[::1]:80'"),
        ("[::1]80", "expected '[ipv6-address]:port', got '[::1]80'"),
        ("[nope]:80", "'nope' is not an IPv6 address"),
        ("bad_host!:80", "'bad_host!' is not a host name or address"),
        ("unix:", "expected a socket path after 'unix:'"),
    ],
)
def test_bad_listen_addresses(address: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_address(address, Path)
    assert str(caught.value) == message


def test_listeners_from_strings_and_mappings(here: Path) -> None:
    (here / "cert.pem").write_text("cert")
    (here / "key.pem").write_text("key")
    config = load("""
        listen:
          - 127.0.0.1:8000
          - {address: "[::1]:8443", tls: {cert: cert.pem, key: key.pem}}
          - unix:run/porch.sock
    """)
    assert config.listen == (
        Listener("127.0.0.1:8000"),
        Listener("[::1]:8443", TLSSettings(here / "cert.pem", here / "key.pem")),
        Listener(f"unix:{here}/run/porch.sock"),
    )
    assert load("listen: 10.0.0.1:80\n").listen == (Listener("10.0.0.1:80"),)


def test_listener_problems(here: Path) -> None:
    (here / "cert.pem").write_text("cert")
    assert problems("""
        listen:
          - 127.0.0.1:80
          - 127.0.0.1:80
          - {address: "[::1]:8443", tls: {cert: cert.pem, key: missing.pem}}
          - {tls: null}
          - {address: "1.2.3.4:5", port: 6}
    """) == [
        "porch.yaml:3: listen[1]: '127.0.0.1:80' is already listed as listen[0]",
        f"porch.yaml:4: listen[2].tls.key: file 'missing.pem' does not exist (relative to {here})",
        "porch.yaml:5: listen[3].address: required key missing",
        "porch.yaml:6: listen[4].port: unknown key 'port' (expected one of: "
        f"{', '.join(f.name for f in fields(Listener))})",
    ]


def test_command_line_listeners_replace_the_file_ones(here: Path) -> None:
    config = load("listen: ['${PORCH_UNSET}']\n", overrides={"listen": ["127.0.0.1:9001", "unix:sock"]})
    assert config.listen == (Listener("127.0.0.1:9001"), Listener(f"unix:{Path.cwd()}/sock"))
    assert problems("threads: 2\n", overrides={"listen": ["127.0.0.1:99999"]}) == [
        "command line: --bind: '127.0.0.1:99999': port must be a number from 0 to 65535, got '99999'"
    ]


def test_no_listeners_is_a_warning(here: Path) -> None:
    config = load("listen: []\nmounts: []\n")
    assert config.listen == ()
    assert [str(w) for w in config.warnings] == [
        "porch.yaml:1: listen: no addresses: porch serves only sockets it inherits (systemd socket activation)"
    ]


# --- mounts ---------------------------------------------------------------------------------


def test_a_mount_splits_into_its_own_keys_and_handler_options(here: Path) -> None:
    config = load(f"""
        mounts:
          - path: /app/
            type: {ECHO}
            host: WWW.Example.ORG.
            root: .
            count: 2
    """)
    mount = config.mounts[0]
    assert (mount.path, mount.type, mount.host) == ("/app", ECHO, ("www.example.org",))
    assert mount.options == config_handlers.EchoOptions(root=here, count=2)
    assert mount.location == "porch.yaml:2"
    assert dict(mount.lines)["count"] == 6


@pytest.mark.parametrize(("path", "normal"), [("/", "/"), ("/app/", "/app"), ("/a/b//", "/a/b"), ("//", "/")])
def test_mount_paths_are_normalised(here: Path, path: str, normal: str) -> None:
    assert load(f"mounts: [{{path: '{path}', type: '{ECHO}', root: .}}]\n").mounts[0].path == normal


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("app", "expected a URL path starting with '/', got 'app'"),
        ("/a/../b", "a mount path cannot contain empty, '.' or '..' segments, got '/a/../b'"),
        ("/a//b", "a mount path cannot contain empty, '.' or '..' segments, got '/a//b'"),
        ("/a?x=1", "a mount path cannot contain '?', '#', spaces or control characters, got '/a?x=1'"),
        ("/a b", "a mount path cannot contain '?', '#', spaces or control characters, got '/a b'"),
    ],
)
def test_bad_mount_paths(here: Path, path: str, message: str) -> None:
    assert problems(f"mounts: [{{path: '{path}', type: '{ECHO}', root: .}}]\n") == [
        f"porch.yaml:1: mounts[0].path: {message}"
    ]


def test_mount_problems(here: Path) -> None:
    assert problems(f"""
        mounts:
          - {{type: "{ECHO}", root: .}}
          - {{path: /b, root: .}}
          - {{path: /c, type: "{ECHO}", host: "example.org:8080", root: .}}
          - {{path: /d, type: "{ECHO}", root: ., frobnicate: 1}}
          - {{path: /e, type: "config_handlers:PlainValueErrorHandler", x: 1}}
          - just a string
    """) == [
        "porch.yaml:2: mounts[0].path: required key missing",
        "porch.yaml:3: mounts[1].type: required key missing",
        "porch.yaml:4: mounts[2].host: expected a host name without port (like www.example.org), "
        "got 'example.org:8080'",
        f"porch.yaml:5: mounts[3].frobnicate: unknown key 'frobnicate' ({ECHO} options: root, name, count, "
        "ratio, enabled, mode, code, label, script, index, search, env, sizes, networks, extra; "
        "mount keys: path, type, host, access, limits, timeouts, auth, rate_limit)",
        "porch.yaml:6: mounts[4].x: unknown key 'x' (the config_handlers:PlainValueErrorHandler handler takes "
        "no options; mount keys: path, type, host, access, limits, timeouts, auth, rate_limit)",
        "porch.yaml:7: mounts[5]: expected a mapping with path, type and options, got 'just a string'",
    ]


def test_a_handler_module_that_fails_to_import_is_a_problem_with_its_traceback(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (here / "porch_bad_handler_mod.py").write_text("import os\nraise RuntimeError('handler module is broken')\n")
    monkeypatch.syspath_prepend(str(here))
    found = problems("mounts: [{path: /, type: 'porch_bad_handler_mod:Handler'}]\n")
    assert found[0].startswith(
        "porch.yaml:1: mounts[0].type: cannot load handler 'porch_bad_handler_mod:Handler': "
        "RuntimeError: handler module is broken\n"
    )
    assert f'File "{here / "porch_bad_handler_mod.py"}", line 2, in <module>' in found[0]


def test_limits_narrow_and_timeouts_replace(here: Path) -> None:
    config = load(f"""
        limits: {{body: 1000, headers: 50}}
        timeouts: {{body: 10}}
        mounts:
          - path: /upload
            type: {ECHO}
            root: .
            limits: {{body: 100}}
            timeouts: {{body: 600}}
          - path: /small
            type: {ECHO}
            root: .
            limits: {{body: 5000, headers: 10}}
          - {{path: /plain, type: "{ECHO}", root: .}}
    """)
    upload, small, plain = config.mounts
    assert upload.limits == Limits(body=100, headers=50)
    assert upload.timeouts == Timeouts(body=600.0)  # longer than the global 10: a slow CGI may need it
    assert small.limits == Limits(body=1000, headers=10)  # the global 1000 wins over the mount's 5000
    assert (plain.limits, plain.timeouts) == (config.limits, config.timeouts)
    assert [str(w) for w in config.warnings] == [
        "porch.yaml:12: mounts[1].limits.body: 5000 is above the global limit 1000, which applies"
    ]


def test_mount_limits_and_timeouts_are_checked(here: Path) -> None:
    assert problems(f"""
        mounts:
          - path: /
            type: {ECHO}
            root: .
            limits: {{body: -1, lines: 3}}
            timeouts: {{body: 0}}
    """) == [
        "porch.yaml:5: mounts[0].limits.body: must be 0 or more, got -1",
        "porch.yaml:5: mounts[0].limits.lines: unknown key 'lines' (expected one of: request_line, "
        "header_bytes, headers, body, connections_per_client, buffered_body, discard_body, response_buffer)",
        "porch.yaml:6: mounts[0].timeouts.body: must be greater than 0, got 0.0",
    ]


def test_mount_access_allow_replaces_and_deny_adds(here: Path) -> None:
    config = load(f"""
        access: {{allow: [10.0.0.0/8], deny: [10.9.0.0/16]}}
        mounts:
          - {{path: /a, type: "{ECHO}", root: ., access: {{allow: 10.1.0.0/16, deny: 10.1.2.3}}}}
          - {{path: /b, type: "{ECHO}", root: ., access: {{deny: [10.2.0.0/16]}}}}
    """)
    a, b = config.mounts
    net = ipaddress.ip_network
    assert a.access == AccessRules(allow=(net("10.1.0.0/16"),), deny=(net("10.9.0.0/16"), net("10.1.2.3/32")))
    assert b.access == AccessRules(allow=(net("10.0.0.0/8"),), deny=(net("10.9.0.0/16"), net("10.2.0.0/16")))


def test_the_same_path_twice_is_an_error_unless_the_hosts_differ(here: Path) -> None:
    assert problems(f"""
        mounts:
          - {{path: /app, type: "{ECHO}", root: .}}
          - {{path: /app, type: "{ECHO}", root: ., host: a.example}}
          - {{path: /app/, type: "{ECHO}", root: .}}
          - {{path: /app, type: "{ECHO}", root: ., host: A.example}}
    """) == [
        "porch.yaml:4: mounts[2].path: '/app' is already mounted by mounts[0]",
        "porch.yaml:5: mounts[3].path: '/app' for host 'a.example' is already mounted by mounts[1]",
    ]


def test_a_mount_hiding_a_served_file_is_a_warning(here: Path) -> None:
    (here / "www" / "cgi-bin").mkdir(parents=True)
    (here / "www" / "docs").mkdir()
    config = load(f"""
        mounts:
          - {{path: /, type: "{ECHO}", root: www}}
          - {{path: /cgi-bin, type: "{ECHO}", root: .}}
          - {{path: /other, type: "{ECHO}", root: .}}
          - {{path: /docs, type: "{ECHO}", root: ., host: elsewhere.example}}
    """)
    assert [str(w) for w in config.warnings] == [
        f"porch.yaml:3: mounts[1].path: '/cgi-bin' hides '{here}/www/cgi-bin', which mounts[0] "
        f"('/' {ECHO}) would otherwise serve",
        f"porch.yaml:5: mounts[3].path: '/docs' hides '{here}/www/docs', which mounts[0] "
        f"('/' {ECHO}) would otherwise serve",
    ]


# --- in-memory configs ----------------------------------------------------------------------


def test_config_from_mapping(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    config = config_from_mapping(
        {
            "listen": ["127.0.0.1:0"],
            "mounts": [{"path": "/", "type": ECHO, "root": "site", "name": "${HOME}", "search": [tmp_path]}],
        },
        source="<command line>",
        base_dir=tmp_path,
    )
    options = config.mounts[0].options
    assert options.root == tmp_path / "site"
    assert options.name == "${HOME}"  # data built in memory is taken literally
    assert options.search == (tmp_path,)
    assert config.source is None
    assert config.mounts[0].location == "<command line>"
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(
            {"threads": "x", "mounts": [{"path": "/", "type": ECHO, "root": "nope"}]},
            source="<command line>",
            base_dir=tmp_path,
        )
    assert [str(p) for p in caught.value.problems] == [
        "<command line>: threads: expected an integer, got 'x'",
        f"<command line>: mounts[0].root: directory 'nope' does not exist (relative to {tmp_path})",
    ]


# --- building handlers ----------------------------------------------------------------------


def test_build_handlers_builds_every_mount(here: Path) -> None:
    config = load(f"mounts: [{{path: /a, type: '{ECHO}', root: .}}, {{path: /b, type: '{ECHO}', root: .}}]\n")
    built = build_handlers(config, HandlerContext())
    assert [(mount.path, type(handler).__name__) for mount, handler in built] == [
        ("/a", "EchoHandler"),
        ("/b", "EchoHandler"),
    ]
    assert built[1][1].mount is config.mounts[1]


def test_build_problems_point_at_the_option_and_close_what_was_built(here: Path) -> None:
    config = load(f"""
        mounts:
          - {{path: /first, type: "{ECHO}", root: .}}
          - path: /second
            type: {ECHO}
            root: .
            count: 13
          - path: /third
            type: {ECHO}
            root: .
            env:
              good: x
              bad: y
          - {{path: /fourth, type: "config_handlers:PlainValueErrorHandler"}}
          - {{path: /fifth, type: "config_handlers:CrashingHandler"}}
    """)
    config_handlers.closed.clear()
    with pytest.raises(ConfigError) as caught:
        build_handlers(config, HandlerContext())
    found = [str(problem) for problem in caught.value.problems]
    assert found[:3] == [
        "porch.yaml:6: mounts[1].count: 13 is unlucky",
        "porch.yaml:12: mounts[2].env.bad: this variable is refused",
        "porch.yaml:13: mounts[3]: this handler cannot work here",
    ]
    assert found[3].startswith(
        "porch.yaml:14: mounts[4]: the config_handlers:CrashingHandler handler failed "
        "to start: RuntimeError: the constructor crashed\n"
    )
    assert "config_handlers.py" in found[3] and "in __init__" in found[3]
    assert config_handlers.closed == ["/first"]


# --- porch check ----------------------------------------------------------------------------


def test_check_config_summarises(here: Path) -> None:
    (here / "www" / "docs").mkdir(parents=True)
    write(f"""
        listen: ["127.0.0.1:8000", "unix:porch.sock"]
        workers: 2
        mounts:
          - {{path: /, type: "{ECHO}", root: www}}
          - {{path: /docs, type: "{ECHO}", root: ., host: docs.example}}
          - {{path: /docs, type: "{ECHO}", root: .}}
    """)
    assert check_config("porch.yaml") == (
        f"porch.yaml OK: 2 listeners (127.0.0.1:8000, unix:{here}/porch.sock), threading x2 workers, "
        f"3 mounts (/ {ECHO}, docs.example/docs {ECHO}, /docs {ECHO})\n"
        f"porch.yaml:5: warning: mounts[1].path: '/docs' hides '{here}/www/docs', which mounts[0] "
        f"('/' {ECHO}) would otherwise serve\n"
        f"porch.yaml:6: warning: mounts[2].path: '/docs' hides '{here}/www/docs', which mounts[0] "
        f"('/' {ECHO}) would otherwise serve"
    )


def test_check_config_reports_load_problems_without_a_child(here: Path) -> None:
    write("threads: 0\n")
    with pytest.raises(ConfigError) as caught:
        check_config("porch.yaml")
    assert str(caught.value) == "porch.yaml:1: threads: must be greater than 0, got 0"


def test_check_config_reports_bad_connection_settings(here: Path) -> None:
    write("""
        limits:
          discard_body: -1
          response_buffer: 256k
        timeouts: {linger: -2}
    """)
    with pytest.raises(ConfigError) as caught:
        check_config("porch.yaml")
    assert str(caught.value).splitlines() == [
        "porch.yaml:2: limits.discard_body: must be 0 or more, got -1",
        "porch.yaml:3: limits.response_buffer: expected an integer, got '256k'",
        "porch.yaml:4: timeouts.linger: must be 0 or more, got -2.0",
    ]


@pytest.fixture
def apps(here: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path (the check's child gets this process's sys.path) with test apps."""
    directory = here / "apps"
    directory.mkdir()
    (directory / "porch_crash_app.py").write_text("import os\nraise RuntimeError('broken on purpose')\n")
    (directory / "porch_exit_app.py").write_text("import os\nos._exit(7)\n")
    (directory / "porch_noisy_app.py").write_text("print('noise on stdout')\napplication = object()\n")
    (directory / "porch_slow_app.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.syspath_prepend(str(directory))
    return directory


def app_config(app: str) -> str:
    return write(f"mounts: [{{path: /app, type: 'config_handlers:AppHandler', app: '{app}'}}]\n")


def test_check_config_survives_an_app_whose_import_raises(apps: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        check_config(app_config("porch_crash_app:application"))
    text = str(caught.value)
    assert text.startswith(
        "porch.yaml:1: mounts[0]: the config_handlers:AppHandler handler failed to start: "
        "RuntimeError: broken on purpose\n"
    )
    assert f'File "{apps / "porch_crash_app.py"}", line 2, in <module>' in text
    assert "porch_crash_app" not in sys.modules  # imported in the child only


def test_check_config_survives_an_app_that_exits_the_interpreter(apps: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        check_config(app_config("porch_exit_app:application"))
    assert str(caught.value) == "porch.yaml: the process building the handlers exited with status 7"


def test_check_config_ignores_what_apps_print(apps: Path) -> None:
    assert check_config(app_config("porch_noisy_app:application")) == (
        "porch.yaml OK: 1 listener (127.0.0.1:8000), threading x1 worker, 1 mount (/app config_handlers:AppHandler)"
    )


def test_check_config_gives_up_on_an_app_that_hangs(apps: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        check_config(app_config("porch_slow_app:application"), timeout=1.5)
    assert time.monotonic() - started < 10
    assert str(caught.value).startswith("porch.yaml: building the handlers took longer than 1.5 seconds")


# --- the reference and the examples ---------------------------------------------------------


def test_settings_reference_lists_every_setting() -> None:
    table = settings_reference()
    assert table.startswith("| Key | Type | Default | Meaning |\n|---|---|---|---|\n")
    for key in (
        "listen",
        "listen[].address",
        "listen[].tls.cert",
        "listen[].tls.key",
        "concurrency",
        "workers",
        "limits.request_line",
        "limits.body",
        "timeouts.graceful",
        "log.access",
        "log.level",
        "access.allow",
        "access.deny",
        "trusted_proxies",
        "server_header",
        "mounts[].path",
        "mounts[].type",
        "mounts[].host",
        "mounts[].limits",
        "mounts[].timeouts",
        "mounts[].access",
    ):
        assert f"| `{key}` |" in table
    for internal in ("source", "warnings", "location", "options", "lines"):
        assert f".{internal}` |" not in table and f"| `{internal}` |" not in table
    assert '| `workers` | integer or `"auto"` | `1` |' in table
    assert '| `access.allow` | list of CIDR | `["0.0.0.0/0", "::/0"]` |' in table
    assert (
        "| `mounts[].limits` | mapping |  | limits narrowing the global ones (the smaller value wins) "
        "(same keys as `limits`) |" in table
    )


def test_readme_reference_is_current() -> None:
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    assert README_MARKER in text, f"README.md lost its {README_MARKER} marker"
    assert settings_reference() in text, "README.md: paste the output of porch.config.load.settings_reference()"


def test_the_examples_exist() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"static-site.yaml", "cgi.yaml", "wsgi-app.yaml", "xmlrpc.yaml", "vhosts.yaml"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_loads_and_its_handlers_build(example: Path, tmp_path: Path) -> None:
    config = load_config(example)
    assert config.mounts and config.warnings == ()
    # Where an example puts its logs, pidfile and ports belongs to the host it is written for.
    here = {"log.access": str(tmp_path / "access.log"), "log.error": str(tmp_path / "error.log")}
    here |= {"pidfile": str(tmp_path / "porch.pid"), "listen": ["127.0.0.1:0"]}
    assert check_config(example, overrides=here).startswith(f"{example} OK: ")


def test_limits_only_the_top_level_may_set_and_proxy_protocol_needs_trusted_proxies(here: Path) -> None:
    assert problems(f"""
mounts:
  - path: /
    type: {ECHO}
    root: .
    limits: {{connections_per_client: 3, discard_body: 0, response_buffer: 0}}
    timeouts: {{linger: 0}}
""") == [
        "porch.yaml:5: mounts[0].limits.connections_per_client: connections are counted per client before any "
        "mount is known: set it in the top-level limits",
        "porch.yaml:5: mounts[0].limits.discard_body: it applies to the connection, whichever mount its requests "
        "go to: set it in the top-level limits",
        "porch.yaml:5: mounts[0].limits.response_buffer: it applies to the connection, whichever mount its "
        "requests go to: set it in the top-level limits",
        "porch.yaml:6: mounts[0].timeouts.linger: it applies to the connection, whichever mount its requests "
        "go to: set it in the top-level timeouts",
    ]
    assert problems("listen: [{address: '127.0.0.1:0', proxy_protocol: true}]\n") == [
        "porch.yaml:1: listen: a listener with proxy_protocol accepts PROXY headers from trusted_proxies only, "
        "and none are listed: every connection would be refused"
    ]
    load("listen: [{address: '127.0.0.1:0', proxy_protocol: true}]\ntrusted_proxies: [127.0.0.1]\n")
    (here / "a-file").write_text("")
    assert problems("mounts: [{path: /, type: static, root: a-file}]\n") == [
        f"porch.yaml:1: mounts[0].root: 'a-file' is not a directory (relative to {here})"
    ]
