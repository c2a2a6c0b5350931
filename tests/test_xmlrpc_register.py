"""Existing XML-RPC service code mounted as it is: ``register: "module:function"`` receives the
dispatcher (as ``register(server)`` does with SimpleXMLRPCServer), and ``signatures:`` (or an
instance's ``_methodSignature``) answers system.methodSignature where annotations cannot."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from porchtest import PorchServer

SERVICE = '''
import math

SIGNATURES = {"area": [["double", "double"]], "greet": [["string", "string"], ["string"]]}


def area(radius):
    return math.pi * radius * radius


def greet(name="world"):
    return "hello " + name


class Inventory:
    def count(self, item):
        return len(item)

    def _methodSignature(self, name):
        return [["int", "string"]] if name == "count" else "undef"


def register(server):
    """What a SimpleXMLRPCServer script does at start-up."""
    server.register_function(area)
    server.register_function(greet, "greet")
    server.register_instance(Inventory())


def register_nothing(server):
    pass


def register_badly(server):
    raise RuntimeError("database not reachable")


BAD_TABLE = {"area": [["double", "float"]]}
'''


def write_service(tmp_path: Path) -> Path:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "legacy_service.py").write_text(textwrap.dedent(SERVICE))
    return apps


def mount(apps: Path, **options: Any) -> dict[str, Any]:
    return {"path": "/RPC2", "type": "xmlrpc", "pythonpath": [str(apps)], **options}


def test_register_and_signatures_from_the_service(porch: Callable[..., PorchServer], tmp_path: Path) -> None:
    apps = write_service(tmp_path)
    server = porch(
        {
            "mounts": [
                mount(apps, register="legacy_service:register", signatures="legacy_service:SIGNATURES"),
            ]
        }
    )
    proxy = xmlrpc.client.ServerProxy(server.url + "/RPC2")
    assert proxy.area(1.0) == pytest.approx(3.14159, rel=1e-4)
    assert proxy.greet("porch") == "hello porch"
    assert proxy.count("abc") == 3
    assert {"area", "greet", "count", "system.listMethods"} <= set(proxy.system.listMethods())
    assert proxy.system.methodSignature("area") == [["double", "double"]], "from the table"
    assert proxy.system.methodSignature("greet") == [["string", "string"], ["string"]]
    assert proxy.system.methodSignature("count") == [["int", "string"]], "from the instance's hook"
    with pytest.raises(xmlrpc.client.Fault) as fault:
        proxy.nothing_here()
    assert fault.value.faultCode == -32601


def check(tmp_path: Path, apps: Path, **options: Any) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "porch.yaml"
    config.write_text(yaml.safe_dump({"mounts": [mount(apps, **options)]}, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "porch", "check", "-c", str(config)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"register": "legacy_service:register_badly"}, "raised RuntimeError: database not reachable"),
        ({"register": "legacy_service:register_nothing"}, "registered no function and no instance"),
        ({"register": "legacy_service:SIGNATURES"}, "is not callable"),
        (
            {"register": "legacy_service:register", "signatures": "legacy_service:BAD_TABLE"},
            "area: expected a list of signatures",
        ),
    ],
)
def test_service_mistakes_are_config_errors(tmp_path: Path, options: dict[str, str], message: str) -> None:
    result = check(tmp_path, write_service(tmp_path), **options)
    assert result.returncode == 1, result.stdout + result.stderr
    key = "register" if "signatures" not in options else "signatures"
    assert f"mounts[0].{key}:" in result.stderr
    assert message in result.stderr
