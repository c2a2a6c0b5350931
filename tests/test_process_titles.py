"""With the ``proctitle`` extra, ps and top name the master and each worker."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from porchtest import PorchServer


def title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_master_and_workers_are_named(porch: Callable[..., PorchServer]) -> None:
    if importlib.util.find_spec("setproctitle") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("setproctitle is required under CI=true (the test extra installs it)")
        pytest.skip("setproctitle is not installed (pip install 'porch[proctitle]')")
    server = porch({"workers": 2, "mounts": [{"path": "/status", "type": "status"}]})
    worker = int(requests.get(server.url + "/status", timeout=5).json()["pid"])
    assert title(server.proc.pid).startswith("porch: master ")
    assert str(server.config_path) in title(server.proc.pid)
    assert title(worker).startswith("porch: worker ")
