"""The error log for machines (``log.format: json``) and for people (colour on a terminal only)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
import yaml
from porchtest import PorchServer, wait_until

CRASHING_APP = """
def application(environ, start_response):
    raise RuntimeError("the app fell over")
"""


def test_json_error_log_carries_the_request_id_and_traceback(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    (tmp_path / "crashing.py").write_text(CRASHING_APP)
    server = porch(
        {
            "log": {"format": "json", "access_format": "json"},
            "mounts": [{"path": "/", "type": "wsgi", "app": "crashing:application", "pythonpath": [str(tmp_path)]}],
        }
    )
    assert requests.get(server.url + "/x", timeout=5).status_code == 500
    request_id = json.loads(server.wait_access_lines(1)[0])["request_id"]
    records = [json.loads(line) for line in server.error_text().splitlines()]
    assert {"time", "pid", "level", "request_id", "logger", "message"} <= set(records[0])
    crash = next(record for record in records if "traceback" in record)
    assert crash["level"] == "error"
    assert crash["request_id"] == request_id
    assert "RuntimeError: the app fell over" in crash["traceback"]
    assert any(record["message"].startswith("listening on") for record in records)


def start_on_terminal(tmp_path: Path, env: dict[str, str] | None = None) -> str:
    """Run porch with its stderr on a pseudo-terminal until it listens; what the terminal showed."""
    config = tmp_path / "porch.yaml"
    config.write_text(yaml.safe_dump({"listen": ["127.0.0.1:0"], "log": {"access": False}}))
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "porch", "-c", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env={**os.environ, **(env or {})},
    )
    os.close(follower)
    shown = b""
    try:
        deadline = time.monotonic() + 10
        while b"listening on" not in shown and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.1)[0]:
                shown += os.read(leader, 65536)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.close(leader)
    return shown.decode(errors="replace")


def test_warnings_are_coloured_on_a_terminal(tmp_path: Path) -> None:
    shown = start_on_terminal(tmp_path, {"NO_COLOR": ""})
    warning = next(line for line in shown.splitlines() if "no mounts" in line)
    assert warning.startswith("\033[33m") and warning.endswith("\033[0m"), repr(warning)
    info = next(line for line in shown.splitlines() if "listening on" in line)
    assert "\033[" not in info, "information stays plain"


def test_no_colour_under_no_color_or_into_a_file(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    shown = start_on_terminal(tmp_path, {"NO_COLOR": "1"})
    assert "no mounts" in shown and "\033[" not in shown
    server = porch({})
    wait_until(lambda: "no mounts" in server.error_text(), "the warning in the file")
    assert "\033[" not in server.error_text()
