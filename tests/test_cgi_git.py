"""A real third-party CGI program under porch: git's own ``git-http-backend`` as a single-script
mount, driven by a real ``git clone`` and ``git push`` over smart HTTP."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import need_program
from porchtest import PorchServer


def git_env(home: Path) -> dict[str, str]:
    """An environment that ignores the user's and the system's git configuration."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "porch test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "porch test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "GIT_TERMINAL_PROMPT": "0",
    }


def git(*args: str, env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"git {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def test_clone_and_push_through_git_http_backend(
    tmp_path: Path, porch: Callable[..., PorchServer], concurrency: str
) -> None:
    need_program("git")
    env = git_env(tmp_path)
    backend = Path(git("--exec-path", env=env).strip()) / "git-http-backend"
    assert backend.is_file(), f"git-http-backend is not at {backend}"

    work, repos = tmp_path / "work", tmp_path / "repos"
    git("init", "-q", "-b", "main", str(work), env=env)
    (work / "README").write_text("served by git-http-backend under porch\n")
    git("add", "README", env=env, cwd=work)
    git("commit", "-q", "-m", "first", env=env, cwd=work)
    repos.mkdir()
    git("clone", "-q", "--bare", str(work), str(repos / "repo.git"), env=env)
    git("config", "http.receivepack", "true", env=env, cwd=repos / "repo.git")

    server = porch(
        {
            "concurrency": concurrency,
            "mounts": [
                {
                    "path": "/git",
                    "type": "cgi",
                    "script": str(backend),
                    "timeout": 60,
                    "env": {"GIT_PROJECT_ROOT": str(repos), "GIT_HTTP_EXPORT_ALL": "1"},
                }
            ],
        }
    )
    clone = tmp_path / "clone"
    git("clone", "-q", f"{server.url}/git/repo.git", str(clone), env=env)
    assert (clone / "README").read_text() == "served by git-http-backend under porch\n"

    # A push larger than http.postBuffer is sent chunked: porch de-chunks it into a temporary
    # file so that git-http-backend gets the CONTENT_LENGTH RFC 3875 4.2 promises.
    (clone / "blob.bin").write_bytes(os.urandom(300_000))
    git("add", "blob.bin", env=env, cwd=clone)
    git("commit", "-q", "-m", "second", env=env, cwd=clone)
    pushed = subprocess.run(
        ["git", "-c", "http.postBuffer=65536", "push", "origin", "main"],
        cwd=clone,
        env={**env, "GIT_TRACE_CURL": "1", "GIT_TRACE_CURL_NO_DATA": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "Transfer-Encoding: chunked" in pushed.stderr  # the request really was chunked
    log = git("--git-dir", str(repos / "repo.git"), "log", "--format=%s", "main", env=env)
    assert log.split() == ["second", "first"]
    lines = server.wait_access_lines(1)
    assert any("POST /git/repo.git/git-receive-pack" in line for line in lines)
    assert all('" 200 ' in line for line in lines), lines
