"""porch takes no module names from the applications it hosts: it installs ``porch`` only.

An application directory whose modules are named like porch's own folders and modules
(``server``, ``handlers``, ``config``, ``protocol``) is mounted by WSGI and XML-RPC mounts,
passes ``porch check`` and answers through a running server with its own modules.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml
from porchtest import PorchServer

APP_MODULES = {
    "server.py": """
        NAME = "the app's server module"

        def application(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [NAME.encode()]
    """,
    "handlers.py": """
        def hello(name):
            return f"hello {name}, from the app's handlers module"
    """,
    "config.py": """
        GREETING = "the app's config module"
    """,
    "protocol.py": """
        def version():
            return "the app's protocol module"
    """,
    "app.py": """
        import json

        import config
        import handlers
        import protocol
        import server


        def application(environ, start_response):
            body = json.dumps({
                "server": server.NAME,
                "handlers": handlers.hello("web"),
                "config": config.GREETING,
                "protocol": protocol.version(),
                "files": [m.__file__ for m in (server, handlers, config, protocol)],
            }).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]


        def greeting():
            return config.GREETING
    """,
}


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "myapp"
    directory.mkdir()
    for name, source in APP_MODULES.items():
        (directory / name).write_text(textwrap.dedent(source).lstrip())
    return directory


def app_config(app_dir: Path) -> dict[str, object]:
    pythonpath = [str(app_dir)]
    return {
        "mounts": [
            {"path": "/app", "type": "wsgi", "app": "app:application", "pythonpath": pythonpath},
            {"path": "/server", "type": "wsgi", "app": "server:application", "pythonpath": pythonpath},
            {
                "path": "/RPC2",
                "type": "xmlrpc",
                "pythonpath": pythonpath,
                "functions": {"hello": "handlers:hello", "version": "protocol:version", "greeting": "app:greeting"},
            },
        ]
    }


def test_porch_installs_one_top_level_package() -> None:
    top_level = importlib.metadata.distribution("porch").read_text("top_level.txt") or ""
    assert top_level.split() == ["porch"]
    for name in ("server", "handlers"):
        found = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, cwd="/")
        assert found.returncode != 0, f"a module named {name!r} is importable outside the repository"


def test_an_app_named_like_porchs_folders_passes_check(app_dir: Path, tmp_path: Path) -> None:
    config_path = tmp_path / "porch.yaml"
    config_path.write_text(yaml.safe_dump({"listen": ["127.0.0.1:0"], **app_config(app_dir)}))
    result = subprocess.run(
        [sys.executable, "-m", "porch", "check", "-c", str(config_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "3 mounts (/app wsgi, /server wsgi, /RPC2 xmlrpc)" in result.stdout


def test_an_app_named_like_porchs_folders_is_served_with_its_own_modules(
    app_dir: Path, porch: Callable[..., PorchServer]
) -> None:
    server = porch(app_config(app_dir))
    answer = requests.get(f"{server.url}/app/", timeout=10)
    assert answer.status_code == 200, server.error_text()
    found = answer.json()
    assert found["server"] == "the app's server module"
    assert found["handlers"] == "hello web, from the app's handlers module"
    assert found["config"] == "the app's config module"
    assert found["protocol"] == "the app's protocol module"
    assert all(Path(file).parent == app_dir for file in found["files"]), found["files"]

    plain = requests.get(f"{server.url}/server/", timeout=10)
    assert plain.status_code == 200 and plain.text == "the app's server module"

    rpc = xmlrpc.client.ServerProxy(f"{server.url}/RPC2")
    assert rpc.hello("rpc") == "hello rpc, from the app's handlers module"
    assert rpc.version() == "the app's protocol module"
    assert rpc.greeting() == "the app's config module"
    assert "Traceback" not in server.error_text()


def test_python_dash_m_porch_is_the_porch_command() -> None:
    result = subprocess.run([sys.executable, "-m", "porch", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("usage: porch")
