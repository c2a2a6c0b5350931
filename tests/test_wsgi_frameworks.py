"""Real frameworks on porch: a Flask app and a Django project mounted from one YAML config.

Both apps are wrapped in ``wsgiref.validate.validator`` (see ``wsgi_apps/``), mounted below a
prefix so SCRIPT_NAME handling shows in the URLs they build, and driven with ``requests``:
routing, Flask's multipart upload and streamed response, Django's CSRF-protected form.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import CONCURRENCY_MODELS
from porchtest import PorchServer

APPS_DIR = Path(__file__).resolve().parent / "wsgi_apps"
VALIDATOR_COMPLAINTS = re.compile(r"AssertionError|WSGIWarning|unraisable")


@pytest.fixture(scope="module", params=CONCURRENCY_MODELS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    config = {
        "concurrency": request.param,
        "threads": 4,
        "limits": {"body": 16 * 1024 * 1024},
        "mounts": [
            {"path": "/flask", "type": "wsgi", "app": "wsgitest_flask:application", "pythonpath": [str(APPS_DIR)]},
            {
                "path": "/django",
                "type": "wsgi",
                "app": "wsgitest_django.wsgi:application",
                "pythonpath": [str(APPS_DIR)],
            },
        ],
    }
    srv = PorchServer.start(config, tmp_path_factory.mktemp(f"frameworks-{request.param}"))
    srv.wait_serving()  # the workers import Flask and Django as they boot
    yield srv
    srv.stop()


class TestFlask:
    def test_routing(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/flask/", timeout=5).text == "flask index"
        assert requests.get(server.url + "/flask/hello/porch", timeout=5).text == "hello porch"
        assert requests.get(server.url + "/flask/items/500", timeout=5).status_code == 404
        assert requests.get(server.url + "/flask/nowhere", timeout=5).status_code == 404

    def test_urls_carry_the_mount_prefix(self, server: PorchServer) -> None:
        data = requests.get(server.url + "/flask/items/7", timeout=5).json()
        assert data["url"] == "/flask/items/7" and data["script_root"] == "/flask"
        assert data["path"] == "/items/7"
        assert data["external"] == f"{server.url}/flask/items/7"

    def test_file_upload(self, server: PorchServer) -> None:
        payload = os.urandom(3 * 1024 * 1024)
        response = requests.post(
            server.url + "/flask/upload",
            timeout=10,
            data={"note": "a note"},
            files={"file": ("data.bin", payload, "application/octet-stream")},
        )
        assert response.status_code == 200
        assert response.json() == {
            "filename": "data.bin",
            "size": len(payload),
            "note": "a note",
            "sha256": hashlib.sha256(payload).hexdigest(),
        }

    def test_streamed_response_arrives_incrementally(self, server: PorchServer) -> None:
        started = time.monotonic()
        with requests.get(server.url + "/flask/stream?count=4&delay=0.4", stream=True, timeout=5) as response:
            assert response.headers.get("Transfer-Encoding") == "chunked"
            lines = response.iter_lines()
            first = next(lines)
            first_at = time.monotonic() - started
            rest = list(lines)
        assert first == b"line 0 of /stream" and rest[-1] == b"line 3 of /stream" and len(rest) == 3
        assert first_at < time.monotonic() - started - 0.8  # not buffered until the end

    def test_no_validator_complaint(self, server: PorchServer) -> None:
        assert not VALIDATOR_COMPLAINTS.search(server.error_text()), server.error_text()[-3000:]


class TestDjango:
    def test_routing(self, server: PorchServer) -> None:
        assert requests.get(server.url + "/django/", timeout=5).text == "django home"
        data = requests.get(server.url + "/django/items/3/", timeout=5).json()
        assert data == {
            "id": 3,
            "path": "/django/items/3/",
            "path_info": "/items/3/",
            "reverse": "/django/items/3/",
            "absolute": f"{server.url}/django/items/3/",
        }
        assert requests.get(server.url + "/django/nowhere/", timeout=5).status_code == 404

    def test_append_slash_redirect_keeps_the_prefix(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/django/form", timeout=5, allow_redirects=False)
        assert response.status_code == 301 and response.headers["Location"] == "/django/form/"

    def test_unknown_host_is_refused_by_django(self, server: PorchServer) -> None:
        response = requests.get(server.url + "/django/", headers={"Host": "evil.example"}, timeout=5)
        assert response.status_code == 400

    def test_form_post_with_csrf(self, server: PorchServer) -> None:
        with requests.Session() as session:
            page = session.get(server.url + "/django/form/", timeout=5)
            assert page.status_code == 200 and "csrftoken" in session.cookies
            match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            assert match, page.text
            assert 'action="/django/form/"' in page.text
            ok = session.post(
                server.url + "/django/form/", timeout=5, data={"csrfmiddlewaretoken": match.group(1), "name": "Ada"}
            )
            assert (ok.status_code, ok.text) == (200, "thanks Ada")
            refused = session.post(server.url + "/django/form/", data={"name": "Mallory"}, timeout=5)
            assert refused.status_code == 403

    def test_post_without_any_csrf_cookie_is_403(self, server: PorchServer) -> None:
        response = requests.post(server.url + "/django/form/", data={"name": "x"}, timeout=5)
        assert response.status_code == 403

    def test_no_validator_complaint(self, server: PorchServer) -> None:
        assert not VALIDATOR_COMPLAINTS.search(server.error_text()), server.error_text()[-3000:]
