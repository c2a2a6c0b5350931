"""The sample scripts in cgi-bin/, served the way the default config serves them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from porchtest import PorchServer

CGI_BIN = Path(__file__).parent.parent / "cgi-bin"
SAMPLES = ("env.cgi", "form.py", "stream.sh")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    srv = PorchServer.start(
        {"mounts": [{"path": "/cgi-bin", "type": "cgi", "root": str(CGI_BIN)}]}, tmp_path_factory.mktemp("samples")
    )
    yield srv
    srv.stop()


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_are_executable_programs(name: str) -> None:
    path = CGI_BIN / name
    assert os.access(path, os.X_OK)
    assert path.read_bytes().startswith(b"#!")


def test_environment_viewer_escapes_everything(server: PorchServer) -> None:
    response = requests.get(
        server.url + "/cgi-bin/env.cgi/%3Cb%3Ex%3C/b%3E", timeout=10, headers={"X-Probe": "<script>alert(1)</script>"}
    )
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "<code>/&lt;b&gt;x&lt;/b&gt;</code>" in page and "<b>x</b>" not in page  # PATH_INFO
    for name in ("GATEWAY_INTERFACE", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "HTTP_X_PROBE"):
        assert f"<th>{name}</th>" in page


def test_form_by_get(server: PorchServer) -> None:
    page = requests.get(server.url + "/cgi-bin/form.py", params={"name": "<Ann>", "colour": "red"}, timeout=10).text
    assert "Received by GET" in page and "&lt;Ann&gt;" in page and "<Ann>" not in page


def test_form_by_post(server: PorchServer) -> None:
    response = requests.post(server.url + "/cgi-bin/form.py", data={"name": "Bob", "message": "a<b & c"}, timeout=10)
    assert response.status_code == 200
    assert "Received by POST" in response.text and "a&lt;b &amp; c" in response.text


@pytest.mark.parametrize(
    "method, kwargs, status",
    [
        ("POST", {"json": {"name": "x"}}, 415),
        ("PUT", {"data": "name=x"}, 405),
    ],
)
def test_form_refusals(server: PorchServer, method: str, kwargs: dict, status: int) -> None:
    assert requests.request(method, server.url + "/cgi-bin/form.py", timeout=10, **kwargs).status_code == status


def test_stream_arrives_line_by_line(server: PorchServer) -> None:
    started = time.monotonic()
    arrivals = []
    with requests.get(server.url + "/cgi-bin/stream.sh?4", stream=True, timeout=10) as response:
        assert response.headers.get("Transfer-Encoding") == "chunked"
        for line in response.iter_lines(chunk_size=1):
            if line:
                arrivals.append((time.monotonic() - started, line.decode()))
    assert [text.split(" at ")[0] for _, text in arrivals] == [f"line {n} of 4" for n in range(1, 5)]
    assert arrivals[-1][0] - arrivals[0][0] >= 1.2  # the first line came while the script still ran
