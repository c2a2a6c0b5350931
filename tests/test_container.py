"""The container image: the Dockerfile's promises, and the config it runs, served for real.

Building the image needs a Docker daemon and the network (for the Python base image); where both
are there, ``test_the_image_builds_and_serves`` builds and runs it, else it says why it skips.
The config the image runs is served here directly, on loopback, either way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from porchtest import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
CONTAINER_CONFIG = "config/examples/container.yaml"


def instructions() -> dict[str, list[str]]:
    """The Dockerfile's instructions by keyword (continuation lines joined)."""
    found: dict[str, list[str]] = {}
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.setdefault(keyword.upper(), []).append(rest.strip())
    return found


def test_the_dockerfile_runs_porch_unprivileged_on_the_container_config() -> None:
    found = instructions()
    assert re.fullmatch(r"python:3\.1[1-4]-slim", found["FROM"][0]), "a slim Python base"
    assert found["USER"] and found["USER"][-1] not in ("root", "0"), "never root inside the image"
    assert found["ENTRYPOINT"] == ['["porch"]']
    assert found["CMD"] == [f'["-c", "{CONTAINER_CONFIG}"]']
    assert (REPO / CONTAINER_CONFIG).is_file()
    assert "8000" in found["EXPOSE"][0]
    assert "/healthz" in found["HEALTHCHECK"][0]


def test_the_container_config_serves_the_bundled_site(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PORCH_BIND": "127.0.0.1", "PORCH_PORT": str(port), "PORCH_WORKERS": "1"}
    with open(tmp_path / "out.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "porch", "-c", CONTAINER_CONFIG], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return requests.get(url + "/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, "the container config to serve", timeout=15)
        assert requests.get(url + "/healthz", timeout=5).json()["status"] == "ok"
        assert "porch" in requests.get(url + "/", timeout=5).text
        assert requests.get(url + "/app/", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def docker_ready() -> str | None:
    """Why the image cannot be built here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "the Docker daemon does not answer"
    if info.returncode != 0:
        return "no Docker daemon is running"
    return None


def test_the_image_builds_and_serves() -> None:
    reason = docker_ready()
    if reason is not None:
        pytest.skip(f"{reason}: building the image needs a Docker daemon and network access")
    tag = "porch-test-image"
    subprocess.run(["docker", "build", "-t", tag, str(REPO)], check=True, timeout=600)
    port = free_port()
    container = subprocess.run(
        ["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8000", tag], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        user = subprocess.run(
            ["docker", "exec", container, "id", "-u"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert user != "0"
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    finally:
        subprocess.run(["docker", "stop", container], capture_output=True, timeout=60)
