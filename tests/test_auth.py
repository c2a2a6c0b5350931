"""HTTP Basic authentication per mount (``auth:``), from htpasswd files written by Apache's ``htpasswd``.

The first half checks the reader and the hashes (Drepper's published SHA-crypt vectors, then
files from ``htpasswd -B/-2/-5/-s/-m/-d/-p``); the second runs real servers: challenges, the
log, what CGI scripts and WSGI applications see, a file edited while serving, config errors.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import CONCURRENCY_MODELS, need_program
from porchtest import PorchServer, wait_until

from porch.config.htpasswd import RECREATE, HtpasswdError, dummy_entry, parse, read, sha_crypt
from porch.config.load import load_config
from porch.config.settings import ConfigError
from porch.http.messages import Headers
from porch.spine.auth import basic_credentials, quoted_string

SCRIPTS = Path(__file__).parent / "cgi_scripts"
WSGI_APPS = Path(__file__).parent / "wsgi_apps"
PY = {".py": sys.executable}
PASSWORD = "pa:ss wörd"  # a colon and non-ASCII: both must survive the trip


def htpasswd(path: Path, user: str, password: str, *flags: str) -> Path:
    """Add (or change) ``user`` in the file at ``path`` with Apache's own htpasswd."""
    program = need_program("htpasswd")
    create = () if path.exists() else ("-c",)
    subprocess.run([program, "-b", *create, *flags, str(path), user, password], check=True, capture_output=True)
    return path


def need_bcrypt() -> None:
    """bcrypt is optional (the auth extra): skip without it, except under CI, which installs it."""
    if importlib.util.find_spec("bcrypt") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bcrypt is required under CI=true (the test extra installs it)")
        pytest.skip("bcrypt is not installed (pip install 'porch[auth]')")


def basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header with UTF-8 credentials (requests would encode them as latin-1)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- SHA-256 and SHA-512 crypt ----------------------------------------------------------------

# Ulrich Drepper, "Unix crypt using SHA-256 and SHA-512", the test vectors of its reference code.
DREPPER_VECTORS = [
    ("$5$saltstring", "Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    (
        "$5$rounds=10000$saltstringsaltstring",
        "Hello world!",
        "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
    ),
    (
        "$5$rounds=5000$toolongsaltstring",
        "This is just a test",
        "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5",
    ),
    (
        "$5$rounds=1400$anotherlongsaltstring",
        "a very much longer text to encrypt.  This one even stretches over morethan one line.",
        "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1",
    ),
    (
        "$5$rounds=77777$short",
        "we have a short salt string but not a short password",
        "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/",
    ),
    (
        "$5$rounds=123456$asaltof16chars..",
        "a short string",
        "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD",
    ),
    (
        "$5$rounds=10$roundstoolow",
        "the minimum number is still observed",
        "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC",
    ),
    (
        "$6$saltstring",
        "Hello world!",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
    ),
    (
        "$6$rounds=10000$saltstringsaltstring",
        "Hello world!",
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
    ),
    (
        "$6$rounds=5000$toolongsaltstring",
        "This is just a test",
        "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
    ),
    (
        "$6$rounds=1400$anotherlongsaltstring",
        "a very much longer text to encrypt.  This one even stretches over morethan one line.",
        "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1",
    ),
    (
        "$6$rounds=77777$short",
        "we have a short salt string but not a short password",
        "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0",
    ),
    (
        "$6$rounds=123456$asaltof16chars..",
        "a short string",
        "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1",
    ),
    (
        "$6$rounds=10$roundstoolow",
        "the minimum number is still observed",
        "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
    ),
]


@pytest.mark.parametrize(("setting", "password", "expected"), DREPPER_VECTORS)
def test_sha_crypt_gives_the_specifications_test_vectors(setting: str, password: str, expected: str) -> None:
    assert sha_crypt(password.encode(), setting) == expected


@pytest.mark.parametrize("variant", ["-5", "-6"])
@pytest.mark.parametrize("password", ["x", "a" * 64, "a" * 65, PASSWORD, "\u00e9" * 40])
def test_sha_crypt_agrees_with_openssl(variant: str, password: str) -> None:
    """Password lengths around the digest sizes exercise the spec's block and bit steps."""
    openssl = need_program("openssl")
    made = subprocess.run(
        [openssl, "passwd", variant, "-salt", "0123456789abcdef", "-stdin"],
        input=password.encode() + b"\n",
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert sha_crypt(password.encode(), made.strip()) == made.strip()


# --- files written by htpasswd ----------------------------------------------------------------

ACCEPTED = {
    "bcrypt": ("-B", "-C", "4"),
    "sha256-crypt": ("-2",),
    "sha512-crypt": ("-5",),
    "sha512-crypt, 10000 rounds": ("-5", "-r", "10000"),
    "sha1": ("-s",),
}


@pytest.mark.parametrize("kind", ACCEPTED)
def test_entries_written_by_htpasswd_verify(tmp_path: Path, kind: str) -> None:
    if kind == "bcrypt":
        need_bcrypt()
    users = htpasswd(tmp_path / "users", "alice", PASSWORD, *ACCEPTED[kind])
    htpasswd(users, "bob", "other secret", *ACCEPTED[kind])
    table = read(users, allow_sha1=True)
    assert table.entries["alice"].scheme == kind.partition(",")[0]
    assert table.check("alice", PASSWORD.encode()) is True
    assert table.check("bob", b"other secret") is True
    assert table.check("alice", b"other secret") is False
    assert table.check("alice", PASSWORD.encode()[:-1]) is False
    assert table.check("carol", PASSWORD.encode()) is None


def test_bcrypt_reads_72_bytes_of_a_password_like_htpasswd(tmp_path: Path) -> None:
    need_bcrypt()
    users = htpasswd(tmp_path / "users", "alice", "x" * 80, "-B", "-C", "4")
    table = read(users, allow_sha1=False)
    assert table.check("alice", b"x" * 72 + b"anything") is True
    assert table.check("alice", b"x" * 71) is False


REFUSED = {
    "-m": "apr1 (MD5) entries are weak and not supported: re-create the entry with `htpasswd -B` (bcrypt)",
    "-d": "crypt(3) DES entries are weak (8 characters at most) and not supported",
    "-p": "plaintext (or unknown) password entries are not supported",
    "-s": "{SHA} entries are unsalted SHA-1, accepted only with `allow_sha1: true`",
}


@pytest.mark.parametrize("flag", REFUSED)
def test_weak_entries_are_refused_naming_their_line(tmp_path: Path, flag: str) -> None:
    users = tmp_path / "users"
    users.write_text("# staff\n\n")
    htpasswd(users, "alice", "secret", "-5")
    htpasswd(users, "bob", "secret", flag)
    with pytest.raises(HtpasswdError) as caught:
        read(users, allow_sha1=False)
    assert caught.value.line == 4
    assert str(caught.value).startswith(f"line 4: {REFUSED[flag]}")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("alice\n", 1, "expected user:hash"),
        ("# users\n:$5$x$y\n", 2, "expected user:hash"),
        ("\n\nalice:\n", 3, "expected user:hash"),
        ("al\x01ice:{SHA}" + "A" * 27 + "=\n", 1, "expected user:hash"),
        ("alice:$6$salt$tooshort\n", 1, "malformed SHA512 crypt hash"),
        ("alice:$5$rounds=999$salt$" + "a" * 43 + "\n", 1, "rounds must be 1000 to 999999999, got 999"),
        ("alice:$2y$05$short\n", 1, "malformed bcrypt hash"),
        ("alice:{SHA}abc\n", 1, "malformed {SHA} hash"),
        (
            "alice:$1$salt$abcdefghijklmnopqrstuv\n",
            1,
            f"MD5 crypt ($1$) entries are weak and not supported: {RECREATE}",
        ),
        ("alice:{SHA}" + "A" * 27 + "=\nalice:{SHA}" + "B" * 27 + "=\n", 2, "user 'alice' again (first on line 1)"),
        ("alice:{SHA}" + "A" * 27 + "=\n\xff\n", 2, "not UTF-8 text"),
    ],
)
def test_malformed_lines_are_errors_naming_the_line(text: str, line: int, message: str) -> None:
    data = text.encode("latin-1") if "\xff" in text else text.encode()
    with pytest.raises(HtpasswdError) as caught:
        parse(data, allow_sha1=True)
    assert (caught.value.line, str(caught.value)) == (line, f"line {line}: {message}")


def test_comments_blank_lines_crlf_and_extra_fields_are_read_like_apache(tmp_path: Path) -> None:
    entry = htpasswd(tmp_path / "one", "alice", PASSWORD, "-2").read_text().strip()
    table = parse(f"# staff\r\n\r\n   \r\n  {entry}:comment\r\n".encode(), allow_sha1=False)
    assert list(table.entries) == ["alice"] and table.check("alice", PASSWORD.encode()) is True


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(HtpasswdError, match=r"^cannot read it: No such file or directory$"):
        read(tmp_path / "missing", allow_sha1=False)


def test_unknown_users_are_checked_against_a_dummy_of_the_files_usual_kind(tmp_path: Path) -> None:
    """So an unknown user takes as long as a wrong password: same scheme, same cost."""
    users = tmp_path / "users"
    for name in ("alice", "bob"):
        htpasswd(users, name, "secret", "-5", "-r", "12000")
    htpasswd(users, "carol", "secret", "-2")
    table = read(users, allow_sha1=False)
    assert (table.dummy.scheme, table.dummy.cost) == ("sha512-crypt", 12000)
    assert "rounds=12000$" in table.dummy.hash and table.check("nobody", b"secret") is None
    assert (dummy_entry({}).scheme, dummy_entry({}).cost) == ("sha512-crypt", 5000)


def test_bcrypt_entries_without_the_bcrypt_package_say_how_to_install_it(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:$2y$05$V8.bvnAtoy3xerf7UE01O.2iisb4FDANejL7N5IzAjbshkZUGrieS\n")
    probe = (
        "import sys; sys.modules['bcrypt'] = None\n"  # what an interpreter without the package sees
        "from pathlib import Path\n"
        "from porch.config.htpasswd import RECREATE, HtpasswdError, read\n"
        "try:\n    read(Path(sys.argv[1]), allow_sha1=False)\n"
        "except HtpasswdError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(users)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == (
        "line 1: bcrypt entries need the bcrypt package: install it: pip install 'porch[auth]'"
    )


# --- the Authorization field and the challenge ------------------------------------------------


def credentials_of(value: str) -> tuple[str, bytes] | None:
    return basic_credentials(Headers([("Authorization", value)]))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


MALFORMED_BASIC = {
    "no token": "Basic",
    "another scheme": "Bearer " + b64(b"alice:secret"),
    "not base64": "Basic alice:secret",
    "missing padding": "Basic " + b64(b"alice:secre").rstrip("="),
    "base64url": "Basic " + base64.urlsafe_b64encode(b"al>ice:se?cret").decode(),
    "no colon": "Basic " + b64(b"alicesecret"),
    "a control character": "Basic " + b64(b"alice:sec\x00ret"),
    "a user-id not UTF-8": "Basic " + b64(b"al\xe9ice:secret"),
    "two tokens": "Basic " + b64(b"alice:secret") + " " + b64(b"bob:x"),
}


@pytest.mark.parametrize("value", MALFORMED_BASIC.values(), ids=list(MALFORMED_BASIC))
def test_malformed_basic_credentials_are_none(value: str) -> None:
    assert credentials_of(value) is None


def test_basic_credentials_split_at_the_first_colon_and_decode_utf8() -> None:
    assert credentials_of("basic  " + b64("jürgen:a:b".encode())) == ("jürgen", b"a:b")
    assert credentials_of("Basic " + b64(b":")) == ("", b"")
    twice = Headers([("Authorization", "Basic " + b64(b"a:b")), ("Authorization", "Basic " + b64(b"a:b"))])
    assert basic_credentials(twice) is None


def test_the_realm_is_a_safe_quoted_string() -> None:
    assert quoted_string('Staff "only" \\ here') == '"Staff \\"only\\" \\\\ here"'
    assert quoted_string("two\r\nlines\tand a tab") == '"twolines\tand a tab"'


# --- a real server ----------------------------------------------------------------------------


def auth_mounts(www: Path, users: Path) -> list[dict[str, Any]]:
    auth = {"realm": 'Staff "only"', "htpasswd": str(users)}
    passing = {**auth, "pass_credentials": True}
    cgi = {"type": "cgi", "script": str(SCRIPTS / "envjson.py"), "interpreters": PY}
    wsgi = {"type": "wsgi", "app": "wsgitest_core:application", "pythonpath": [str(WSGI_APPS)]}
    return [
        {"path": "/", "type": "static", "root": str(www)},
        {"path": "/private", "type": "static", "root": str(www), "auth": auth},
        {"path": "/cgi", **cgi, "auth": auth},
        {"path": "/cgi-passed", **cgi, "auth": passing},
        {"path": "/wsgi", **wsgi, "auth": auth},
        {"path": "/wsgi-passed", **wsgi, "auth": passing},
    ]


@pytest.fixture
def users(tmp_path: Path) -> Path:
    users = htpasswd(tmp_path / "users.htpasswd", "alice", PASSWORD, "-5")
    return htpasswd(users, "jürgen", "zweites", "-5")


@pytest.fixture
def www(tmp_path: Path) -> Path:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("open to all\n")
    return www


@pytest.fixture(params=CONCURRENCY_MODELS)
def server(request: pytest.FixtureRequest, porch: Callable[..., PorchServer], www: Path, users: Path) -> PorchServer:
    return porch({"concurrency": request.param, "workers": 1, "mounts": auth_mounts(www, users)})


CHALLENGE = 'Basic realm="Staff \\"only\\"", charset="UTF-8"'


def test_the_mount_asks_for_credentials_and_admits_the_right_ones(server: PorchServer) -> None:
    assert requests.get(server.url + "/", timeout=10).status_code == 200  # other mounts stay open
    refused = [
        requests.get(server.url + "/private/", timeout=10),
        requests.get(server.url + "/private/", headers=basic("alice", "wrong"), timeout=10),
        requests.get(server.url + "/private/", headers=basic("mallory", PASSWORD), timeout=10),
        requests.post(server.url + "/private/", data=b"x" * 1000, headers=basic("alice", "wrong"), timeout=10),
    ]
    for response in refused:
        assert (response.status_code, response.headers.get("WWW-Authenticate")) == (401, CHALLENGE)
    admitted = requests.get(server.url + "/private/", headers=basic("alice", PASSWORD), timeout=10)
    assert (admitted.status_code, admitted.text) == (200, "open to all\n")
    assert requests.get(server.url + "/private/", headers=basic("jürgen", "zweites"), timeout=10).status_code == 200


def test_malformed_credentials_are_answered_401_on_a_kept_connection(server: PorchServer) -> None:
    with server.connect(timeout=10) as sock:
        for number, value in enumerate(MALFORMED_BASIC.values()):
            sock.sendall(f"GET /private/ HTTP/1.1\r\nHost: x\r\nAuthorization: {value}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                try:
                    received = sock.recv(1)
                except TimeoutError:  # say what the server saw
                    pytest.fail(f"request {number + 1} unanswered after {head!r}; error log:\n{server.error_text()}")
                assert received, f"closed before the answer to request {number + 1}: {head!r}"
                head += received
            body_length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
            while body_length:
                body_length -= len(sock.recv(body_length))
            assert head.startswith(b"HTTP/1.1 401 ") and b'WWW-Authenticate: Basic realm="' in head, head


def test_the_log_names_the_user_and_client_never_the_password(server: PorchServer) -> None:
    requests.get(server.url + "/private/", headers=basic("alice", "hunter2-wrong"), timeout=10)
    requests.get(server.url + "/private/", headers=basic('mal"lory\u2028', "hunter3-unknown"), timeout=10)
    requests.get(server.url + "/private/", headers=basic("alice", PASSWORD), timeout=10)
    wait_until(
        lambda: "no such user" in server.error_text() and "wrong password" in server.error_text(),
        "the failed attempts in the error log",
    )
    text = server.error_text()
    assert 'authentication of user "alice" from 127.0.0.1 failed: wrong password' in text
    assert 'authentication of user "mal\\"lory\\u2028" from 127.0.0.1 failed: no such user' in text
    server.wait_access_lines(3)
    logs = text + "\n".join(server.access_lines())
    for secret in ("hunter2-wrong", "hunter3-unknown", PASSWORD, base64.b64encode(PASSWORD.encode()).decode()):
        assert secret not in logs


def test_cgi_gets_remote_user_and_auth_type_but_not_the_credentials(server: PorchServer) -> None:
    env = requests.get(server.url + "/cgi/x", headers=basic("jürgen", "zweites"), timeout=10).json()["env"]
    assert (env["REMOTE_USER"], env["AUTH_TYPE"]) == ("jürgen", "Basic")
    assert "HTTP_AUTHORIZATION" not in env
    credentials = basic("alice", PASSWORD)
    passed = requests.get(server.url + "/cgi-passed/x", headers=credentials, timeout=10).json()["env"]
    assert (passed["REMOTE_USER"], passed["HTTP_AUTHORIZATION"]) == ("alice", credentials["Authorization"])


def test_wsgi_gets_remote_user_and_auth_type_but_not_the_credentials(server: PorchServer) -> None:
    environ = requests.get(server.url + "/wsgi/environ", headers=basic("jürgen", "zweites"), timeout=10).json()
    # PEP 3333: native strings carry the bytes as latin-1
    assert (environ["REMOTE_USER"].encode("latin-1").decode(), environ["AUTH_TYPE"]) == ("jürgen", "Basic")
    assert "HTTP_AUTHORIZATION" not in environ
    credentials = basic("alice", PASSWORD)
    passed = requests.get(server.url + "/wsgi-passed/environ", headers=credentials, timeout=10).json()
    assert (passed["REMOTE_USER"], passed["HTTP_AUTHORIZATION"]) == ("alice", credentials["Authorization"])


def test_without_auth_no_remote_user_is_set(porch: Callable[..., PorchServer], www: Path, users: Path) -> None:
    """A client cannot make itself a user where the mount authenticates no one."""
    mounts = [{**mount, "auth": None} for mount in auth_mounts(www, users) if mount["path"] == "/cgi"]
    server = porch({"mounts": mounts})
    env = requests.get(server.url + "/cgi/x", headers=basic("alice", PASSWORD), timeout=10).json()["env"]
    assert "REMOTE_USER" not in env and env["AUTH_TYPE"] == "Basic" and "HTTP_AUTHORIZATION" not in env


def test_an_edited_file_applies_within_a_second_and_a_broken_one_keeps_the_users(
    server: PorchServer, users: Path
) -> None:
    session = requests.Session()  # one connection: one process (a forked child) serves every request

    def status(user: str, password: str) -> int:
        return session.get(server.url + "/private/", headers=basic(user, password), timeout=10).status_code

    assert status("alice", PASSWORD) == 200
    htpasswd(users, "alice", "changed", "-2")  # a new password, and another scheme
    htpasswd(users, "dora", "new user", "-5")
    wait_until(lambda: status("alice", "changed") == 200, "the new password to apply", timeout=3)
    assert (status("alice", PASSWORD), status("dora", "new user")) == (401, 200)

    good = users.read_text()
    users.write_text(good + "eve:$apr1$BLtG2K3/$99QA1VPlPWY2Dn4ucmvsn0\n")
    wait_until(
        lambda: status("alice", "changed") == 200 and "apr1 (MD5) entries are weak" in server.error_text(),
        "the broken file in the error log",
        timeout=3,
    )
    assert (status("alice", "changed"), status("eve", "anything")) == (200, 401)
    users.write_text(good.replace("jürgen", "jochen"))
    wait_until(lambda: status("jochen", "zweites") == 200, "the repaired file to apply", timeout=3)
    assert server.error_text().count("apr1 (MD5) entries are weak") == 1
    assert "re-read: 3 users" in server.error_text()


# --- config errors ----------------------------------------------------------------------------


def write_config(tmp_path: Path, users: Path, allow_sha1: bool = False) -> Path:
    (tmp_path / "www").mkdir(exist_ok=True)
    config = tmp_path / "porch.yaml"
    lines = ["mounts:", "  - path: /private", "    type: static", "    root: www", "    auth:", "      realm: staff"]
    lines += [f"      htpasswd: {users.name}", f"      allow_sha1: {str(allow_sha1).lower()}"]
    config.write_text("\n".join(lines) + "\n")
    return config


def test_an_apr1_entry_is_a_config_error_at_the_htpasswd_line(tmp_path: Path) -> None:
    users = htpasswd(tmp_path / "users", "alice", "secret", "-5")
    htpasswd(users, "bob", "secret", "-m")
    config = write_config(tmp_path, users)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value) == (
        f"{config}:7: mounts[0].auth.htpasswd: {users}: line 2: apr1 (MD5) entries are weak and not supported: "
        "re-create the entry with `htpasswd -B` (bcrypt)"
    )
    result = subprocess.run(
        [sys.executable, "-m", "porch", "check", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and f"{config}:7: mounts[0].auth.htpasswd: {users}: line 2: apr1" in result.stderr


def test_sha1_entries_need_allow_sha1(tmp_path: Path) -> None:
    users = htpasswd(tmp_path / "users", "alice", "secret", "-s")
    with pytest.raises(ConfigError, match=r":7: mounts\[0\]\.auth\.htpasswd: .*line 1: \{SHA\} entries are unsalted"):
        load_config(write_config(tmp_path, users))
    config = load_config(write_config(tmp_path, users, allow_sha1=True))
    assert config.mounts[0].auth is not None and config.mounts[0].auth.allow_sha1


def test_the_porch_check_summary_accepts_a_good_file(tmp_path: Path) -> None:
    users = htpasswd(tmp_path / "users", "alice", "secret", "-5")
    result = subprocess.run(
        [sys.executable, "-m", "porch", "check", "-c", str(write_config(tmp_path, users))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
