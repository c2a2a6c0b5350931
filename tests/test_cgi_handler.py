"""The cgi handler called directly (no server): options, script resolution, the environment,
process lifecycle, descriptors and slots.  Scripts are real processes from tests/cgi_scripts."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from porchtest import process_state

from porch.config.settings import Limits, Mount
from porch.handlers.base import HandlerContext, OptionError
from porch.handlers.cgi.handler import CGIHandler, wire_text
from porch.handlers.cgi.options import CGIOptions
from porch.handlers.cgi.process import (
    STDERR_LINE_BYTES,
    ResourceLimits,
    ScriptInput,
    ScriptOutput,
    ScriptRun,
    SlotPool,
)
from porch.http.body import ChunkedBody, ContentLengthBody
from porch.http.errors import (
    BadGateway,
    Forbidden,
    GatewayTimeout,
    InternalRedirect,
    InternalServerError,
    NotFound,
)
from porch.http.messages import Headers, Request, Response

SCRIPTS = Path(__file__).parent / "cgi_scripts"
PY = {".py": sys.executable}


def build(mount: str = "/cgi-bin", **options: object) -> CGIHandler:
    if "root" not in options and "script" not in options:
        options["root"] = SCRIPTS
    options.setdefault("interpreters", PY)
    return CGIHandler(
        Mount(path=mount, type="cgi", options=CGIOptions(**options)),  # type: ignore[arg-type]
        HandlerContext(software="porch/test"),
    )


def make_request(
    target: str,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    chunked: bool = False,
    client: object = ("127.0.0.1", 40000),
    server: object = ("127.0.0.1", 8080),
    scheme: str = "http",
) -> Request:
    raw_path, _, query = target.partition("?")
    fields = Headers(headers or [])
    if "host" not in fields:
        fields.add("Host", "example.com")
    if chunked:
        data = body or b""
        encoded = (
            b"".join(b"%x\r\n%s\r\n" % (len(data[i : i + 1000]), data[i : i + 1000]) for i in range(0, len(data), 1000))
            + b"0\r\n\r\n"
        )
        fields.add("Transfer-Encoding", "chunked")
        request_body: object = ChunkedBody(io.BytesIO(encoded), None, limits=Limits())
    elif body is not None:
        fields.add("Content-Length", str(len(body)))
        request_body = ContentLengthBody(len(body), io.BytesIO(body), None)
    else:
        request_body = ContentLengthBody(0, io.BytesIO(), None)  # no body: done from the start
    return Request(
        method=method,
        target=target,
        raw_path=raw_path,
        path=unquote(raw_path, errors="surrogateescape"),
        query=query,
        version="HTTP/1.1",
        headers=fields,
        body=request_body,
        client=client,
        server=server,  # type: ignore[arg-type]
        scheme=scheme,
        request_id="test",
    )


def run(handler: CGIHandler, request: Request) -> tuple[Response, bytes]:
    """Answer ``request`` and consume the whole body, closing it as the connection would."""
    response = handler.handle(request)
    body = response.body
    try:
        data = body if isinstance(body, bytes) else b"".join(body)  # type: ignore[arg-type]
    finally:
        close = getattr(body, "close", None)
        if close:
            close()
    return response, data


def output(response: Response) -> ScriptOutput:
    """The streamed body of a script's response."""
    assert isinstance(response.body, ScriptOutput)
    return response.body


def env_of(handler: CGIHandler, request: Request) -> dict:
    response, data = run(handler, request)
    assert response.status == 200, data
    return json.loads(data)


def children() -> list[int]:
    """Child processes of this test process (any thread's)."""
    found: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        text = (task / "children").read_text()
        found.extend(int(pid) for pid in text.split())
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def handler() -> CGIHandler:
    return build(env={"FROM_CONFIG": "yes"}, pass_env=("PORCH_TEST_PASSED",))


class TestOptions:
    @pytest.mark.parametrize(
        "options, key",
        [
            ({"root": None}, "root"),
            ({"root": SCRIPTS, "script": SCRIPTS / "env.sh"}, "root"),
            ({"script": SCRIPTS / "env.sh", "extensions": (".cgi",)}, "extensions"),
            ({"script": SCRIPTS / "notexec.sh"}, "script"),
            ({"script": SCRIPTS / "missing.sh"}, "script"),
            ({"interpreters": {".py": "no-such-interpreter-anywhere"}}, "interpreters"),
            ({"interpreters": {".py": ""}}, "interpreters"),
            ({"env": {"SCRIPT_NAME": "x"}}, "env"),
            ({"env": {"HTTP_HOST": "x"}}, "env"),
            ({"env": {"A=B": "x"}}, "env"),
            ({"pass_env": ("REMOTE_ADDR",)}, "pass_env"),
        ],
    )
    def test_rejected(self, options: dict, key: str) -> None:
        with pytest.raises(OptionError) as caught:
            build(**options)
        assert caught.value.key == key

    def test_interpreter_makes_a_script_mountable_without_exec_bit(self) -> None:
        handler = build(script=SCRIPTS / "interp.py")
        assert run(handler, make_request("/cgi-bin"))[1] == b"interpreted by python\n"

    def test_extension_spellings(self) -> None:
        handler = build(interpreters={"PY": sys.executable})
        assert handler.command(SCRIPTS / "interp.py") == [sys.executable, str(SCRIPTS / "interp.py")]


class TestResolve:
    @pytest.mark.parametrize(
        "target, script_name, path_info",
        [
            ("/cgi-bin/env.sh", "/cgi-bin/env.sh", ""),
            ("/cgi-bin/env.sh/", "/cgi-bin/env.sh", "/"),
            ("/cgi-bin/env.sh/a/b", "/cgi-bin/env.sh", "/a/b"),
            ("/cgi-bin/env.sh/a%20b/%E2%82%AC", "/cgi-bin/env.sh", "/a b/\u20ac"),
            ("/cgi-bin/sub/inner.sh/x/", "/cgi-bin/sub/inner.sh", "/x/"),
            ("/cgi-bin//env.sh/y", "/cgi-bin//env.sh", "/y"),
        ],
    )
    def test_split(self, handler: CGIHandler, target: str, script_name: str, path_info: str) -> None:
        found = handler.resolve(make_request(target))
        assert found is not None
        assert (found.script_name, found.path_info) == (script_name, path_info)

    def test_mount_at_root(self) -> None:
        found = build(mount="/").resolve(make_request("/sub/inner.sh/z"))
        assert found is not None and (found.script_name, found.path_info) == ("/sub/inner.sh", "/z")

    def test_single_script_takes_the_whole_path(self) -> None:
        single = build(mount="/git", script=SCRIPTS / "env.sh")
        for target, path_info in [("/git", ""), ("/git/", "/"), ("/git/repo.git/info/refs", "/repo.git/info/refs")]:
            found = single.resolve(make_request(target))
            assert found is not None and (found.script_name, found.path_info) == ("/git", path_info)

    @pytest.mark.parametrize(
        "target, error",
        [
            ("/cgi-bin/missing.sh", NotFound),
            ("/cgi-bin/missing.sh/extra", NotFound),
            ("/cgi-bin/sub/missing/inner.sh", NotFound),
            ("/cgi-bin/env.sh%2Fx", NotFound),  # an encoded separator
            ("/cgi-bin/env.sh%5cx", NotFound),
            ("/cgi-bin", Forbidden),  # a directory: no listing
            ("/cgi-bin/sub/", Forbidden),
            ("/cgi-bin/notexec.sh", Forbidden),  # never its source: it cannot run, so 403
            ("/cgi-bin/notexec.sh/extra", Forbidden),
        ],
    )
    def test_refused(self, handler: CGIHandler, target: str, error: type) -> None:
        with pytest.raises(error):
            handler.handle(make_request(target))

    def test_hidden_names_are_not_found(self, tmp_path: Path) -> None:
        (tmp_path / ".dir").mkdir()
        for path in (tmp_path / "visible.sh", tmp_path / ".hidden.sh", tmp_path / ".dir" / "inner.sh"):
            path.write_text((SCRIPTS / "env.sh").read_text())
            path.chmod(0o755)
        handler = build(root=tmp_path)
        assert run(handler, make_request("/cgi-bin/visible.sh"))[0].status == 200
        for target in ("/cgi-bin/.hidden.sh", "/cgi-bin/.dir/inner.sh"):
            with pytest.raises(NotFound):
                handler.handle(make_request(target))

    def test_special_files_are_refused(self, tmp_path: Path) -> None:
        os.mkfifo(tmp_path / "pipe.sh")
        with pytest.raises(Forbidden):
            build(root=tmp_path).handle(make_request("/cgi-bin/pipe.sh"))

    def test_symlinks(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        root.mkdir()
        (root / "inside.sh").symlink_to(SCRIPTS / "env.sh")  # leads out of the root
        (root / "real.sh").write_text((SCRIPTS / "env.sh").read_text())
        (root / "real.sh").chmod(0o755)
        (root / "alias.sh").symlink_to(root / "real.sh")  # stays inside
        (root / ".hidden.sh").write_text((SCRIPTS / "env.sh").read_text())
        (root / ".hidden.sh").chmod(0o755)
        (root / "peek.sh").symlink_to(".hidden.sh")  # inside, but onto a hidden name
        strict = build(root=root)
        for target in ("/cgi-bin/inside.sh", "/cgi-bin/peek.sh"):
            with pytest.raises(NotFound):
                strict.handle(make_request(target))
        assert run(strict, make_request("/cgi-bin/alias.sh"))[0].status == 200
        assert run(build(root=root, follow_symlinks=True), make_request("/cgi-bin/inside.sh"))[0].status == 200


class TestEnvironment:
    def test_clean_base(self, handler: CGIHandler, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PORCH_TEST_SECRET", "do-not-leak")
        env = env_of(handler, make_request("/cgi-bin/envjson.py"))["env"]
        assert "PORCH_TEST_SECRET" not in env
        assert env["FROM_CONFIG"] == "yes"
        assert env["PATH"] == os.environ["PATH"]

    def test_pass_env_reads_the_environment_at_start_up(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PORCH_TEST_PASSED", "passed")
        handler = build(pass_env=("PORCH_TEST_PASSED", "PORCH_TEST_UNSET"))
        env = env_of(handler, make_request("/cgi-bin/envjson.py"))["env"]
        assert env["PORCH_TEST_PASSED"] == "passed" and "PORCH_TEST_UNSET" not in env

    def test_https_and_ports(self, handler: CGIHandler) -> None:
        request = make_request(
            "/cgi-bin/envjson.py",
            scheme="https",
            server=("::1", 8443),
            client=("::1", 5555),
            headers=[("Host", "[::1]:8443")],
        )
        target = handler.resolve(request)
        assert target is not None
        env = handler.environment(request, target, None)
        assert env["HTTPS"] == "on"
        assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("[::1]", "8443")
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("::1", "5555")
        assert "HTTPS" not in handler.environment(make_request("/cgi-bin/envjson.py"), target, None)

    def test_unix_socket_addresses(self, handler: CGIHandler) -> None:
        request = make_request(
            "/cgi-bin/envjson.py", client="", server="/run/porch.sock", headers=[("Host", "example.com:81")]
        )
        target = handler.resolve(request)
        assert target is not None
        env = handler.environment(request, target, None)
        assert env["SERVER_PORT"] == "81" and env["REMOTE_ADDR"] == "unix" and "REMOTE_PORT" not in env

    def test_absolute_form_target(self, handler: CGIHandler) -> None:
        request = make_request("/cgi-bin/envjson.py?x=1")
        request = dataclasses.replace(request, target="http://example.com/cgi-bin/envjson.py?x=1")
        target = handler.resolve(request)
        assert target is not None
        assert handler.environment(request, target, None)["REQUEST_URI"] == "/cgi-bin/envjson.py?x=1"

    def test_header_bytes_reach_the_script_unchanged(self, handler: CGIHandler) -> None:
        request = make_request("/cgi-bin/envjson.py", headers=[("X-Name", b"caf\xe9 \xff".decode("latin-1"))])
        value = env_of(handler, request)["env"]["HTTP_X_NAME"]
        assert value.encode("utf-8", "surrogateescape") == b"caf\xe9 \xff"
        assert wire_text("plain") == "plain"

    def test_credentials_only_with_pass_auth(self, handler: CGIHandler) -> None:
        fields = [("Authorization", "Basic dXNlcjpwdw=="), ("Proxy-Authorization", "Basic eA==")]
        env = env_of(handler, make_request("/cgi-bin/envjson.py", headers=fields))["env"]
        assert env["AUTH_TYPE"] == "Basic"
        assert "HTTP_AUTHORIZATION" not in env and "HTTP_PROXY_AUTHORIZATION" not in env
        assert "REMOTE_USER" not in env  # porch authenticates no one
        env = env_of(build(pass_auth=True), make_request("/cgi-bin/envjson.py", headers=fields))["env"]
        assert env["HTTP_AUTHORIZATION"] == "Basic dXNlcjpwdw=="
        assert env["HTTP_PROXY_AUTHORIZATION"] == "Basic eA=="


class TestRunning:
    def test_chunked_body_gets_a_content_length(self, handler: CGIHandler) -> None:
        payload = os.urandom(150_000)
        result = json.loads(
            run(handler, make_request("/cgi-bin/body.py", method="POST", body=payload, chunked=True))[1]
        )
        assert result["content_length"] == str(len(payload))  # RFC 3875 4.2: recalculated
        assert result["received"] == len(payload)

    def test_local_redirect(self, handler: CGIHandler) -> None:
        with pytest.raises(InternalRedirect) as caught:
            handler.handle(make_request("/cgi-bin/local_redirect.sh"))
        assert caught.value.target == "/cgi-bin/env.sh/landed?via=local%20redirect"

    def test_local_location_with_a_body_goes_to_the_client(self, handler: CGIHandler) -> None:
        response, data = run(handler, make_request("/cgi-bin/local_location_body.sh"))
        assert response.status == 302 and response.headers.get("Location") == "/somewhere"
        assert data == b"see /somewhere"

    def test_nph(self, handler: CGIHandler) -> None:
        response, data = run(handler, make_request("/cgi-bin/nph-raw.sh"))
        assert (response.status, response.reason) == (299, "Very Custom")
        assert data == b"straight from the script"

    @pytest.mark.parametrize(
        "script, error",
        [
            ("crash.sh", InternalServerError),
            ("silent.sh", BadGateway),
            ("half_head.sh", BadGateway),
            ("malformed.sh", BadGateway),
            ("no_cgi_field.sh", BadGateway),
            ("huge_head.py", BadGateway),
            ("unicode_length.sh", BadGateway),
            ("two_lengths.sh", BadGateway),
        ],
    )
    def test_failures(self, handler: CGIHandler, script: str, error: type) -> None:
        with pytest.raises(error):
            handler.handle(make_request(f"/cgi-bin/{script}"))

    def test_identical_lengths_are_one(self, handler: CGIHandler) -> None:
        response, data = run(handler, make_request("/cgi-bin/same_lengths.sh"))
        assert (response.status, data) == (200, b"hello")
        assert response.headers.get_all("Content-Length") == ["5"]

    def test_timeout_before_the_head(self) -> None:
        handler = build(timeout=0.5)
        started = time.monotonic()
        with pytest.raises(GatewayTimeout):
            handler.handle(make_request("/cgi-bin/sleep.sh"))
        assert time.monotonic() - started < 1.5
        assert children() == []

    def test_timeout_after_the_head_raises_from_the_body(self) -> None:
        handler = build(timeout=0.5)
        body = output(handler.handle(make_request("/cgi-bin/stall.sh")))
        assert next(body) == b"first part\n"
        with pytest.raises(GatewayTimeout):
            next(body)
        body.close()
        assert children() == []

    def test_close_kills_the_whole_group(self, handler: CGIHandler) -> None:
        body = output(handler.handle(make_request("/cgi-bin/pidwait.sh")))
        pids = [int(p) for p in next(body).split()]
        body.close()
        assert children() == []
        for pid in pids:
            assert not alive(pid)

    def test_nothing_is_left_behind(self, handler: CGIHandler) -> None:
        run(handler, make_request("/cgi-bin/env.sh"))  # warm up lazily created things
        before = open_fds()
        for _ in range(10):
            run(handler, make_request("/cgi-bin/env.sh"))
            run(handler, make_request("/cgi-bin/body.py", method="POST", body=b"x" * 100_000))
            with pytest.raises(InternalServerError):
                handler.handle(make_request("/cgi-bin/crash.sh"))
        assert open_fds() == before
        assert children() == []

    def test_background_jobs_do_not_outlive_the_request(self, handler: CGIHandler) -> None:
        pid = int(run(handler, make_request("/cgi-bin/background.sh"))[1])
        assert not alive(pid)


def make_script(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def script_lines(caplog: pytest.LogCaptureFixture, script: Path) -> list[str]:
    """What the error log says about ``script``, in order, without the tag."""
    prefix = f"{script}: "
    return [record.getMessage()[len(prefix) :] for record in caplog.records if record.getMessage().startswith(prefix)]


STDERR_FLOOD = r"""import sys
for number in range(10000):
    sys.stderr.write("stderr line %05d %s\n" % (number, "." * 90))
sys.stderr.write("x" * 10000 + "\n")
sys.stderr.flush()
sys.stdout.write("Content-Type: text/plain\n\nafter the flood")
sys.stdout.flush()
sys.stderr.write("a last line without its newline")
"""

STDERR_AFTER_OUTPUT = r"""import os, sys
os.write(1, b"Content-Type: text/plain\n\nbody first")
os.close(1)
for number in range(10000):
    sys.stderr.write("late line %05d %s\n" % (number, "." * 90))
"""

EXITS_LATER = r"""#!/bin/sh
printf 'Content-Type: text/plain\n\nbody'
exec >&-
sleep 0.3
echo 'late words' >&2
exit 4
"""

ESCAPES_WITH_STDERR = r"""import os, sys, time
child = os.fork()
if child == 0:  # leaves the group, keeps stderr open, never writes to stdout
    os.setsid()
    os.close(1)
    time.sleep(10)
    os._exit(0)
sys.stdout.write("Content-Type: text/plain\n\n%d" % child)
"""


@pytest.fixture(params=["pidfd", "no pidfd"])
def reaping(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of waiting for a script's exit: a pidfd, and polling where there is none."""
    if request.param == "no pidfd":
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    return request.param


class TestOutputAndStderr:
    @pytest.mark.parametrize(
        "name, text, whole",
        [
            ("short.sh", "printf 'Content-Type: text/plain\\n\\nshort body'", True),
            ("nph-short.sh", "printf 'HTTP/1.1 200 OK\\nContent-Type: text/plain\\n\\nshort body'", True),
            ("agreeing.sh", "printf 'Content-Type: text/plain\\nContent-Length: 10\\n\\nshort body'", True),
            ("liar.sh", "printf 'Content-Type: text/plain\\nContent-Length: 3\\n\\nshort body'", False),
        ],
    )
    def test_output_complete_with_its_head_is_answered_whole(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, text: str, whole: bool
    ) -> None:
        script = make_script(tmp_path, name, f"#!/bin/sh\necho 'said on stderr' >&2\n{text}\n")
        handler = build(root=tmp_path)
        target = handler.resolve(make_request("/cgi-bin/" + name))
        assert target is not None
        run = ScriptRun([str(script)], cwd=str(tmp_path), env={}, stdin=ScriptInput(), timeout=10, tag=str(script))
        assert dead(run.proc.pid)  # all its output is in the pipe before the handler reads any
        pool = SlotPool(1)
        slot = pool.acquire()
        assert slot is not None
        try:
            with caplog.at_level(logging.WARNING):
                response = handler.respond(target, run, slot)
            if not whole:  # not the length it declared: streamed as ever, the connection cuts it
                assert isinstance(response.body, ScriptOutput)
                response.body.close()
            assert response.status == 200 and (response.body == b"short body") is whole
            assert run.proc.returncode == 0 and children() == []
            assert script_lines(caplog, script) == ["said on stderr"]
            assert pool.acquire() is not None  # the place was given back before the answer
        finally:
            pool.close()

    def test_output_still_being_written_streams(self, tmp_path: Path) -> None:
        make_script(
            tmp_path,
            "slow.sh",
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\none\\n'\nsleep 0.5\nprintf 'two\\n'\n",
        )
        started = time.monotonic()
        body = output(build(root=tmp_path).handle(make_request("/cgi-bin/slow.sh")))
        try:
            assert next(body) == b"one\n" and time.monotonic() - started < 0.4
            assert b"".join(body) == b"two\n"
        finally:
            body.close()
        assert children() == []

    def test_a_mebibyte_of_stderr_before_stdout(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        script = make_script(tmp_path, "flood.py", STDERR_FLOOD)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            response, data = run(build(root=tmp_path, timeout=20), make_request("/cgi-bin/flood.py"))
        assert (response.status, data) == (200, b"after the flood")
        assert time.monotonic() - started < 10  # no deadlock until the timeout
        lines = script_lines(caplog, script)
        assert lines[:10000] == ["stderr line %05d %s" % (n, "." * 90) for n in range(10000)]
        pieces = [STDERR_LINE_BYTES, STDERR_LINE_BYTES, 10000 - 2 * STDERR_LINE_BYTES]
        assert lines[10000:] == ["x" * size for size in pieces] + ["a last line without its newline"]

    def test_stderr_after_the_output_is_closed(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, reaping: str
    ) -> None:
        script = make_script(tmp_path, "late.py", STDERR_AFTER_OUTPUT)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            _response, data = run(build(root=tmp_path, timeout=20), make_request("/cgi-bin/late.py"))
        assert data == b"body first" and time.monotonic() - started < 10
        lines = script_lines(caplog, script)
        assert len(lines) == 10000 and lines[-1].startswith("late line 09999 ")
        assert children() == []

    def test_exit_after_the_output_is_waited_for(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, reaping: str
    ) -> None:
        script = make_script(tmp_path, "later.sh", EXITS_LATER)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            assert run(build(root=tmp_path), make_request("/cgi-bin/later.sh"))[1] == b"body"
        assert 0.3 <= time.monotonic() - started < 2
        assert script_lines(caplog, script) == ["late words", "exited with status 4"]
        assert children() == []

    def test_running_on_after_the_output_is_stopped_at_the_timeout(
        self, tmp_path: Path, reaping: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        make_script(
            tmp_path, "lingers.sh", "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nbye'\nexec >&-\nexec sleep 30\n"
        )
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            assert run(build(root=tmp_path, timeout=0.5), make_request("/cgi-bin/lingers.sh"))[1] == b"bye"
        assert time.monotonic() - started < 2
        assert "still running after closing its output" in caplog.text
        assert children() == []

    def test_stderr_held_by_an_escaped_process_is_not_waited_for(self, tmp_path: Path) -> None:
        make_script(tmp_path, "escape.py", ESCAPES_WITH_STDERR)
        started = time.monotonic()
        escaped = int(run(build(root=tmp_path, timeout=20), make_request("/cgi-bin/escape.py"))[1])
        try:
            assert time.monotonic() - started < 5  # a grace for stderr, not the child's 10 s
        finally:
            os.kill(escaped, 9)


def dead(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` is a zombie (it exited) or gone."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process_state(pid) in (None, "Z"):
            return True
        time.sleep(0.01)
    return False


def alive(pid: int, grace: float = 2.0) -> bool:
    """True if ``pid`` still runs after ``grace`` seconds (SIGKILL is delivered asynchronously;
    a zombie awaiting its reaper counts as dead)."""
    deadline = time.monotonic() + grace
    while True:
        if process_state(pid) in (None, "Z"):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.01)


class TestLimits:
    def test_no_limits_means_no_preexec(self) -> None:
        assert ResourceLimits().preexec() is None

    def test_limits_apply_to_the_script(self) -> None:
        handler = build(cpu_seconds=7, open_files=50, address_space=1 << 33)
        data = run(handler, make_request("/cgi-bin/limits.sh"))[1].decode()
        assert "nofile=50" in data and "cpu=7" in data

    def test_cpu_limit_kills_a_spinning_script(self) -> None:
        handler = build(cpu_seconds=1, timeout=20)
        started = time.monotonic()
        response, data = run(handler, make_request("/cgi-bin/spin.py"))
        assert (response.status, data) == (200, b"")
        assert time.monotonic() - started < 10  # RLIMIT_CPU ended it, not the 20 s timeout

    def test_slots_cap_concurrent_scripts(self) -> None:
        handler = build(max_concurrent=1)
        first = handler.handle(make_request("/cgi-bin/stall.sh"))
        try:
            with pytest.raises(Exception) as caught:
                handler.handle(make_request("/cgi-bin/env.sh"))
            assert caught.value.status == 503  # type: ignore[attr-defined]
            assert ("Retry-After", "1") in caught.value.headers  # type: ignore[attr-defined]
        finally:
            output(first).close()
        assert run(handler, make_request("/cgi-bin/env.sh"))[0].status == 200
        handler.close()

    def test_slot_pool_spans_processes_and_survives_crashes(self) -> None:
        pool = SlotPool(1)
        ready, told = os.pipe()
        holder = os.fork()  # as a forked connection child: it shares the pool's descriptors
        if holder == 0:
            try:
                os.close(ready)
                os.write(told, b"held" if pool.acquire() is not None else b"none")
                time.sleep(60)
            finally:
                os._exit(0)
        os.close(told)
        reaped = False
        try:
            assert os.read(ready, 4) == b"held"
            assert pool.acquire() is None
            os.kill(holder, signal.SIGKILL)  # dies holding it: the kernel gives the place back
            os.waitpid(holder, 0)
            reaped = True
            slot = pool.acquire()
            assert slot is not None
            assert pool.acquire() is None  # threads of one process exclude each other too
            slot.release()
            assert pool.acquire() is not None
        finally:
            os.close(ready)
            if not reaped:
                os.kill(holder, signal.SIGKILL)
                os.waitpid(holder, 0)
            pool.close()
        assert pool.acquire() is None  # closed: no place, and no descriptor of another file used

    def test_slot_pool_leaves_nothing_on_disk(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        pool = SlotPool(3)
        try:
            assert list(tmp_path.iterdir()) == []  # not even while it is open
            slot = pool.acquire()
            assert slot is not None
            slot.release()
        finally:
            pool.close()
