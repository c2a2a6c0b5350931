"""The ``porch`` command as a user runs it: serve a directory, check configs, override listeners."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

import porch

REPO = Path(__file__).resolve().parent.parent
PORCH = [sys.executable, "-m", "porch"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PORCH, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def wait_for_url(proc: subprocess.Popen[str]) -> str:
    """Read porch's stderr until it names its address; fail with what it said otherwise."""
    assert proc.stderr is not None
    seen = []
    while line := proc.stderr.readline():
        seen.append(line)
        if match := re.search(r"listening on (\S+)", line):
            return f"http://{match.group(1)}"
    pytest.fail("porch did not start:\n" + "".join(seen))


@contextmanager
def serving(*args: str, cwd: Path | None = None) -> Iterator[str]:
    """Run ``porch ARGS`` (logs on stderr) and yield its URL once it listens."""
    proc = subprocess.Popen([*PORCH, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        yield wait_for_url(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"porch {porch.__version__} ({porch.BUILD})"


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for word in ("serve", "check", "--bind", "--config"):
        assert word in result.stdout


def test_serve_directory_with_listing(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello porch\n")
    (tmp_path / "sub").mkdir()
    with serving("serve", str(tmp_path), "--port", "0") as url:
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(url + "/hello.txt").text == "hello porch\n"
        listing = requests.get(url + "/")
        assert listing.status_code == 200 and "hello.txt" in listing.text and "sub/" in listing.text


def test_porch_without_config_serves_current_directory(tmp_path: Path) -> None:
    (tmp_path / "here.txt").write_text("cwd")
    with serving("--bind", "127.0.0.1:0", cwd=tmp_path) as url:
        assert requests.get(url + "/here.txt").text == "cwd"


def test_bind_replaces_configured_listeners(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("<p>bound</p>")
    config = tmp_path / "porch.yaml"
    config.write_text("listen: ['127.0.0.1:1']\nmounts:\n  - {path: /, type: static, root: www}\n")
    with serving("-c", str(config), "--bind", "127.0.0.1:0") as url:
        assert requests.get(url + "/").text == "<p>bound</p>"


def test_check_accepts_the_bundled_config() -> None:
    result = run("check", "-c", str(REPO / "config" / "porch.yaml"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and len(result.stdout.strip().splitlines()) >= 1


def test_check_reports_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("listen: ['127.0.0.1:8000']\nthreads: lots\nmounts:\n  - {path: /, type: static, root: wwww}\n")
    result = run("check", "-c", str(config))
    assert result.returncode == 1
    assert re.search(rf"{re.escape(str(config))}:2: threads: ", result.stderr), result.stderr
    assert re.search(rf"{re.escape(str(config))}:4: mounts\[0\]\.root: .*wwww", result.stderr), result.stderr


def test_serve_refuses_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("listen: ['127.0.0.1:0']\nbogus: 1\n")
    result = run("-c", str(config))
    assert result.returncode == 1 and "bogus" in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", str(tmp_path), "--port", str(port))
    assert result.returncode == 1 and f"127.0.0.1:{port}" in result.stderr


def test_default_config_serves_the_landing_page() -> None:
    """`porch` in a checkout serves config/porch.yaml (here on port 0 via --bind)."""
    with serving("--bind", "127.0.0.1:0", cwd=REPO) as url:
        page = requests.get(url + "/")
        assert page.status_code == 200 and "porch" in page.text.lower()
