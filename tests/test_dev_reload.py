"""``porch --reload``: an edited application is served without a restart; a broken edit leaves
the old workers serving and says why; the config file is watched too."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import requests
from porchtest import PorchServer, wait_until

APP = """
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [{text!r}]
"""


def write_app(apps: Path, text: bytes) -> None:
    path = apps / "devapp.py"
    path.write_text(APP.format(text=text))
    stamp = time.time() + 2  # a changed mtime, even within the file system's time granularity
    os.utime(path, (stamp, stamp))


def test_an_edit_is_served_and_a_broken_one_keeps_the_old_code(
    porch: Callable[..., PorchServer], tmp_path: Path
) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    write_app(apps, b"first")
    server = porch(
        {"mounts": [{"path": "/", "type": "wsgi", "app": "devapp:application", "pythonpath": [str(apps)]}]},
        args=("--reload",),
    )
    assert requests.get(server.url + "/", timeout=5).text == "first"

    write_app(apps, b"second")
    wait_until(lambda: requests.get(server.url + "/", timeout=5).text == "second", "the edit served", timeout=15)
    assert "devapp.py; reloading" in server.error_text()

    (apps / "devapp.py").write_text("def application(environ, start_response) -> oops:\n")
    os.utime(apps / "devapp.py", (time.time() + 4, time.time() + 4))
    wait_until(lambda: "reload failed" in server.error_text(), "the broken edit refused", timeout=15)
    assert "(devapp.py, line 1)" in server.error_text(), "the error names the file and line"
    assert requests.get(server.url + "/", timeout=5).text == "second", "the old workers keep serving"

    write_app(apps, b"third")
    os.utime(apps / "devapp.py", (time.time() + 6, time.time() + 6))
    wait_until(lambda: requests.get(server.url + "/", timeout=5).text == "third", "the fix served", timeout=15)


def test_without_reload_nothing_is_watched(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    write_app(apps, b"first")
    server = porch({"mounts": [{"path": "/", "type": "wsgi", "app": "devapp:application", "pythonpath": [str(apps)]}]})
    assert requests.get(server.url + "/", timeout=5).text == "first"  # the worker has imported it
    write_app(apps, b"second")
    time.sleep(2.5)  # longer than two polls would take
    assert requests.get(server.url + "/", timeout=5).text == "first"
    assert "reloading" not in server.error_text()
