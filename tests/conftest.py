"""Shared fixtures: a real porch server process per test (or per module), both concurrency models."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from porchtest import PorchServer

# Property tests explore the same examples on every run, so CI results do not depend on luck.
settings.register_profile("porch", derandomize=True, database=None, deadline=None)
settings.load_profile("porch")

CONCURRENCY_MODELS = ["threading", "forking"]


def need_program(name: str) -> str:
    """The path of an outside program; skip without it, except under CI where it must exist."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI=true (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture(params=CONCURRENCY_MODELS)
def concurrency(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def porch(tmp_path: Path) -> Iterator[Callable[..., PorchServer]]:
    """``porch(config_dict, **kw)`` starts a server for this test; all are stopped afterwards."""
    started: list[PorchServer] = []

    def start(config: dict[str, Any], **kwargs: Any) -> PorchServer:
        server = PorchServer.start(config, tmp_path / f"server{len(started)}", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
