"""porch behind a real nginx, configured as the README's "Behind a proxy" section says: the client
nginx saw is the client porch's applications see, and a forged X-Forwarded-For is not believed."""

from __future__ import annotations

import http.client
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nginx_runner import run_nginx
from porchtest import PorchServer, free_port

APP = """
import json

def application(environ, start_response):
    seen = {key: environ.get(key) for key in ("REMOTE_ADDR", "wsgi.url_scheme", "HTTP_HOST")}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(seen).encode()]
"""

# The location block is the README's, word for word.
SITE = """
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://127.0.0.1:{upstream};
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
    }}
}}
"""


@pytest.fixture
def nginx_in_front(porch: Callable[..., PorchServer], tmp_path: Path) -> Iterator[int]:
    """nginx on a free loopback port, proxying to a porch that trusts 127.0.0.1 only."""
    (tmp_path / "proxied.py").write_text(APP)
    server = porch(
        {
            "trusted_proxies": ["127.0.0.1"],
            "mounts": [{"path": "/", "type": "wsgi", "app": "proxied:application", "pythonpath": [str(tmp_path)]}],
        }
    )
    port = free_port()
    with run_nginx(textwrap.dedent(SITE.format(port=port, upstream=server.port)), tmp_path, port):
        yield port


def through(port: int, source: str, headers: dict[str, str]) -> dict[str, str]:
    """GET / through nginx from the loopback address ``source`` (127.0.0.1 is the trusted proxy)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", "/", headers={"Host": "site.example", **headers})
        response = connection.getresponse()
        assert response.status == 200
        seen: dict[str, str] = json.loads(response.read())
        return seen
    finally:
        connection.close()


def test_applications_see_the_client_nginx_saw(nginx_in_front: int) -> None:
    seen = through(nginx_in_front, "127.0.0.5", {})
    assert seen == {"REMOTE_ADDR": "127.0.0.5", "wsgi.url_scheme": "http", "HTTP_HOST": "site.example"}


def test_a_forged_forwarded_for_is_not_believed(nginx_in_front: int) -> None:
    seen = through(nginx_in_front, "127.0.0.7", {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"})
    assert seen["REMOTE_ADDR"] == "127.0.0.7", "the rightmost untrusted address: the one nginx saw"
    assert seen["wsgi.url_scheme"] == "http", "nginx sets the scheme it served, whatever the client said"
