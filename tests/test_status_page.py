"""The status page: negotiation, its assets and headers, the JSON, and the page drawn in a real browser.

The handler is tested three ways: called directly with a known snapshot (``SAMPLE``, the shape
documented in ``porch.metrics``); through a real server, over ``requests`` and ``http.client``;
and in headless Chromium driven by Selenium -- once drawing ``SAMPLE`` (a server whose status
mount is ``SampleStatusHandler``), once drawing what a real two-worker server counts under load.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from conftest import need_program
from porchtest import PorchServer, wait_until

from porch.config.settings import Mount
from porch.handlers.base import HandlerContext, NoOptions
from porch.handlers.status.handler import PAGE_POLICY, StatusHandler, wants_html
from porch.http.errors import HTTPError
from porch.http.messages import Headers, Request, Response

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

TESTS_DIR = Path(__file__).parent
ENV = {"PYTHONPATH": str(TESTS_DIR)}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
CURL_ACCEPT = "*/*"
# A client's path that would run script if it ever reached the page as markup.  The raw form has no
# space, so it can travel unencoded in a request line (where a space cannot) and reach `busy` as is.
XSS_PATH = "/<img src=x onerror=alert(1)>"
XSS_RAW_PATH = "/<img/src=x/onerror=alert(1)>"
BROWSER_TIMEOUT_SECONDS = 20.0


class NoBody:
    length: int | None = 0
    limit: int | None = None
    done = True
    trailers = Headers()
    received = 0

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""


def sample_snapshot() -> dict[str, Any]:
    """What a master publishes two minutes into a reload: two workers of two generations, a busy
    request with a hostile path, a gap in the latency (seconds without a request)."""
    points = 120
    start = 1_765_000_000.0
    rate = [round(40 + 25 * math.sin(i / 9) + (i % 7), 3) for i in range(points)]
    quiet = range(40, 45)  # no request: the quantiles are null and the chart shows a gap
    for i in quiet:
        rate[i] = 0.0

    def latency(scale: float) -> list[float | None]:
        return [None if i in quiet else round(scale * (1.5 + math.sin(i / 13)), 6) for i in range(points)]

    def share(fraction: float) -> list[float]:
        return [round(value * fraction, 3) for value in rate]

    def worker(pid: int, generation: int, state: str, busy: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "pid": pid,
            "generation": generation,
            "state": state,
            "started": start - 300 + generation * 100,
            "requests": 10_000 + pid,
            "rss_bytes": 48 * 1024 * 1024 + pid,
            "threads": 8,
            "children": 0,
            "connections": {"open": 5, "idle": 5 - len(busy), "active": len(busy)},
            "busy": busy,
        }

    hostile = {
        "thread": "porch-worker-3",
        "method": "GET",
        "path": XSS_PATH,
        "client": "127.0.0.1",
        "age_seconds": 3.25,
        "request_id": "00c0ffee00c0ffee",
    }
    upload = {**hostile, "thread": "porch-worker-1", "method": "POST", "path": "/app/upload", "age_seconds": 0.4}
    upload["request_id"] = "00c0ffee00c0fff0"
    return {
        "software": "porch/0.1.0",
        "version": "0.1.0",
        "python": "3.11.7 (cpython)",
        "build": "pure",
        "concurrency": "threading",
        "master_pid": 4100,
        "started": start - 300,
        "time": start + points,
        "uptime_seconds": 420.5,
        "generation": 3,
        "state": "reloading",
        "workers_target": 2,
        "requests": [
            {"mount": "/", "method": "GET", "code": "2xx", "count": 18_000},
            {"mount": "/", "method": "GET", "code": "4xx", "count": 420},
            {"mount": "/app", "method": "POST", "code": "5xx", "count": 3},
        ],
        "bounds": [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        "durations": [],
        "bytes": [{"mount": "/", "received": 0, "sent": 123_456_789}],
        "connections": {"accepted": 2400, "open": 10, "idle": 7, "active": 3},
        "in_flight": 3,
        "cgi": {"running": 0, "started": 0, "timed_out": 0, "killed": 0},
        "wsgi_exceptions": [],
        "xmlrpc_faults": [],
        "worker_events": {"started": 4, "respawned": 0, "exited": {"reload": 2}},
        "reloads": {"succeeded": 2, "refused": 0},
        "workers": [
            worker(4101, 2, "retiring", [hostile, upload]),
            worker(4102, 3, "serving", [{**hostile, "thread": "porch-worker-0", "path": "/", "age_seconds": 0.01}]),
        ],
        "mounts": [
            {"mount": "/", "type": "static", "requests": 18_420, "errors": 0, "sent": 123_456_789}
            | {"p50": 0.0008, "p95": 0.004, "p99": 0.012},
            {"mount": "/app", "type": "wsgi", "requests": 3, "errors": 3, "sent": 200}
            | {"p50": None, "p95": None, "p99": None},
        ],
        "history": {
            "interval_seconds": 1.0,
            "time": [start + i for i in range(points)],
            "requests_per_second": rate,
            "p50": latency(0.002),
            "p95": latency(0.009),
            "p99": latency(0.03),
            "codes": {"1xx": share(0.0), "2xx": share(0.9), "3xx": share(0.04), "4xx": share(0.05), "5xx": share(0.01)},
            "connections": [5 + i % 6 for i in range(points)],
            "in_flight": [i % 4 for i in range(points)],
        },
    }


SAMPLE = sample_snapshot()
SAMPLE_POINTS = len(SAMPLE["history"]["time"])
SAMPLE_LATENCY_POINTS = sum(value is not None for value in SAMPLE["history"]["p50"])


def sample_snapshot_now() -> dict[str, Any]:
    return SAMPLE


class SampleStatusHandler(StatusHandler):
    """The status handler fed ``SAMPLE`` instead of the master's snapshot, so a real server and a
    real browser show known numbers."""

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, replace(context, snapshot=sample_snapshot_now))


class MasterlessStatusHandler(StatusHandler):
    """The status handler where no master publishes (``{}``): an in-process server, a unit test."""

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, replace(context, snapshot=dict))


# ---------------------------------------------------------------------------------------------
# The handler called directly


def handler(path: str = "/status", snapshot: Callable[[], dict[str, Any]] = sample_snapshot_now) -> StatusHandler:
    return StatusHandler(Mount(path=path, type="status", options=NoOptions()), HandlerContext(snapshot=snapshot))


def serve(status: StatusHandler, target: str, *fields: tuple[str, str], method: str = "GET") -> Response:
    """The response the pipeline would send: raised HTTP errors become their status."""
    path, _, query = target.partition("?")
    request = Request(
        method=method,
        target=target,
        raw_path=path,
        path=path,
        query=query,
        version="HTTP/1.1",
        headers=Headers([("Host", "localhost"), *fields]),
        body=NoBody(),
        client=("127.0.0.1", 40000),
        server=("127.0.0.1", 8000),
    )
    try:
        return status.handle(request)
    except HTTPError as error:
        return Response(int(error.status), Headers(error.headers), error.body())


def body_of(response: Response) -> bytes:
    assert isinstance(response.body, bytes)
    return response.body


def test_json_is_the_snapshot_with_the_answering_workers_identity() -> None:
    response = serve(handler(), "/status", ("Accept", CURL_ACCEPT))
    document = json.loads(body_of(response))
    assert response.headers.get("Content-Type") == "application/json"
    assert response.headers.get("Cache-Control") == "no-store"
    assert document["status"] == "ok"
    assert document["pid"] == os.getpid(), "the worker answering, never the master"
    assert document["history"] == SAMPLE["history"]
    assert document["workers"] == SAMPLE["workers"]
    assert document["uptime_seconds"] == SAMPLE["uptime_seconds"], "the server's uptime is the master's"


def test_json_without_a_master_still_says_who_answers() -> None:
    response = serve(handler(snapshot=dict), "/status/", ("Accept", CURL_ACCEPT))
    document = json.loads(body_of(response))
    assert set(document) == {"status", "pid", "software", "uptime_seconds", "concurrency"}
    assert (document["status"], document["pid"], document["concurrency"]) == ("ok", os.getpid(), "threading")
    assert 0 <= document["uptime_seconds"] < 60


@pytest.mark.parametrize(
    ("accept", "query", "html"),
    [
        (None, "", False),
        (CURL_ACCEPT, "", False),
        ("application/json", "", False),
        ("text/*", "", False),  # does not name text/html: a script, not a browser
        ("application/json, text/html;q=0.9", "", False),
        ("text/html;q=0, */*", "", False),
        ("text/html;q=0.5, application/*;q=0.8", "", False),
        ("text/html;q=high, */*", "", False),  # an invalid weight refuses
        (BROWSER_ACCEPT, "", True),
        ("TEXT/HTML", "", True),
        ("text/html, application/json", "", True),  # a tie goes to the page
        (BROWSER_ACCEPT, "format=json", False),
        (CURL_ACCEPT, "format=html", True),
        (CURL_ACCEPT, "refresh=5&format=html", True),
    ],
)
def test_negotiation(accept: str | None, query: str, html: bool) -> None:
    fields = [("Accept", accept)] if accept is not None else []
    response = serve(handler(), f"/status?{query}" if query else "/status", *fields)
    assert response.status == 200
    assert response.headers.get("Content-Type") == ("text/html; charset=utf-8" if html else "application/json")
    assert response.headers.get("Vary") == "Accept"


def test_wants_html_reads_every_accept_field() -> None:
    request = Request(
        "GET", "/", "/", "/", "", "HTTP/1.1", Headers([("Accept", "*/*"), ("Accept", "text/html")]), NoBody(), "", ""
    )
    assert wants_html(request)


def test_unknown_format_is_a_bad_request() -> None:
    assert serve(handler(), "/status?format=xml").status == 400


class Shell(HTMLParser):
    """Every tag and its attributes, and the text inside script and style elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_code = ""
        self.inside: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.inside = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self.inside = None

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.inline_code += data.strip()


@pytest.mark.parametrize(
    ("mount", "assets", "json_url"),
    [
        ("/status", "/status", "/status?format=json"),
        ("/", "", "/?format=json"),
        ("/ops/live status/", "/ops/live%20status", "/ops/live%20status?format=json"),
    ],
)
def test_page_is_a_static_shell_naming_its_assets_below_the_mount(mount: str, assets: str, json_url: str) -> None:
    response = serve(handler(mount), (mount.rstrip("/") or "") + "/?format=html")
    shell = Shell()
    shell.feed(body_of(response).decode())
    scripts = [attrs for tag, attrs in shell.tags if tag == "script"]
    sheets = [attrs for tag, attrs in shell.tags if tag == "link" and attrs.get("rel") == "stylesheet"]
    assert [attrs.get("src") for attrs in scripts] == [f"{assets}/status.js"]
    assert [attrs.get("href") for attrs in sheets] == [f"{assets}/status.css"]
    assert [attrs.get("data-json") for tag, attrs in shell.tags if tag == "body"] == [json_url]
    assert shell.inline_code == "", "no inline script or style: the CSP refuses them"
    assert not any(tag == "style" for tag, _ in shell.tags)
    for tag, attrs in shell.tags:
        assert not any(name == "style" or name.startswith("on") for name in attrs), (tag, attrs)
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert value.startswith(("/", "data:")) or value == "", f"{tag} {name}={value} leaves the origin"
    assert response.headers.get("Content-Security-Policy") == PAGE_POLICY


def test_assets_revalidate_with_their_etag() -> None:
    status = handler()
    first = serve(status, "/status/status.js")
    etag = first.headers.get("ETag")
    assert first.status == 200 and etag and etag.startswith('"')
    assert serve(status, "/status/status.js", ("If-None-Match", etag)).status == 304
    assert serve(status, "/status/status.js", ("If-None-Match", f'"other", W/{etag}')).status == 304
    assert serve(status, "/status/status.js", ("If-None-Match", '"other"')).status == 200
    assert serve(status, "/status/status.css").headers.get("ETag") != etag


# ---------------------------------------------------------------------------------------------
# A real server


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("status-site")
    (root / "index.html").write_text("<!DOCTYPE html><title>home</title><p>home</p>\n")
    (root / "data.txt").write_text("x" * 4000)
    return root


@pytest.fixture(scope="module")
def live(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PorchServer]:
    """One worker: the product's status mount, and the sample one deeper in the tree."""
    server = PorchServer.start(
        {
            "mounts": [
                {"path": "/", "type": "static", "root": str(site)},
                {"path": "/status", "type": "status"},
                {"path": "/ops/sample", "type": "test_status_page:SampleStatusHandler"},
                {"path": "/ops/masterless", "type": "test_status_page:MasterlessStatusHandler"},
            ]
        },
        tmp_path_factory.mktemp("status-live"),
        env=ENV,
    )
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["/status", "/status/"])
def test_live_curl_gets_json_and_a_browser_the_page(live: PorchServer, path: str) -> None:
    as_curl = requests.get(live.url + path, timeout=5)  # requests sends Accept: */* like curl
    assert as_curl.status_code == 200
    assert as_curl.headers["Content-Type"] == "application/json"
    assert as_curl.headers["Cache-Control"] == "no-store"
    assert as_curl.json()["status"] == "ok" and as_curl.json()["pid"] > 0

    as_browser = requests.get(live.url + path, headers={"Accept": BROWSER_ACCEPT}, timeout=5)
    assert as_browser.status_code == 200
    assert as_browser.headers["Content-Type"] == "text/html; charset=utf-8"
    assert as_browser.headers["Content-Security-Policy"] == PAGE_POLICY
    assert as_browser.headers["X-Content-Type-Options"] == "nosniff"
    assert as_browser.headers["Referrer-Policy"] == "no-referrer"
    assert '<script src="/status/status.js" defer></script>' in as_browser.text


def test_live_head_on_the_mount_is_the_headers_only(live: PorchServer) -> None:
    connection = http.client.HTTPConnection(live.host, live.port, timeout=5)
    try:
        for accept, content_type in ((CURL_ACCEPT, "application/json"), (BROWSER_ACCEPT, "text/html; charset=utf-8")):
            connection.request("HEAD", "/status", headers={"Accept": accept})
            response = connection.getresponse()
            assert (response.status, response.getheader("Content-Type"), response.read()) == (200, content_type, b"")
            assert int(response.getheader("Content-Length") or 0) > 0
    finally:
        connection.close()


def test_live_format_overrides_accept(live: PorchServer) -> None:
    forced_json = requests.get(live.url + "/status?format=json", headers={"Accept": BROWSER_ACCEPT}, timeout=5)
    assert forced_json.headers["Content-Type"] == "application/json" and forced_json.json()["status"] == "ok"
    forced_html = requests.get(live.url + "/status?format=html&refresh=5", timeout=5)
    assert forced_html.headers["Content-Type"] == "text/html; charset=utf-8"
    assert forced_html.text.startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/status/status.js", "text/javascript; charset=utf-8"), ("/status/status.css", "text/css; charset=utf-8")],
)
def test_live_assets(live: PorchServer, path: str, content_type: str) -> None:
    response = requests.get(live.url + path, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    again = requests.get(live.url + path, headers={"If-None-Match": response.headers["ETag"]}, timeout=5)
    assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", response.headers["ETag"])

    connection = http.client.HTTPConnection(live.host, live.port, timeout=5)
    try:
        connection.request("HEAD", path)
        head = connection.getresponse()
        assert (head.status, head.read()) == (200, b""), "HEAD: the headers only"
        assert int(head.getheader("Content-Length") or -1) == len(response.content)
    finally:
        connection.close()


def test_live_script_is_plain_strict_javascript(live: PorchServer) -> None:
    script = requests.get(live.url + "/status/status.js", timeout=5).text
    assert script.startswith("'use strict';")
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script
    assert "http://" not in script.replace("http://www.w3.org/2000/svg", "") and "https://" not in script


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/status"), ("PUT", "/status/"), ("DELETE", "/status/status.js")]
)
def test_live_other_methods_are_405(live: PorchServer, method: str, path: str) -> None:
    response = requests.request(method, live.url + path, data=b"x", timeout=5)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", ["/status/status.png", "/status/status.js/x", "/status/assets/status.js", "/status//"])
def test_live_unknown_paths_are_404(live: PorchServer, path: str) -> None:
    assert requests.get(live.url + path, timeout=5).status_code == 404


def test_live_hostile_path_is_never_markup(live: PorchServer) -> None:
    """Below the mount it is a 404 that repeats nothing; in the JSON it is a string like any other."""
    connection = http.client.HTTPConnection(live.host, live.port, timeout=5)
    try:
        connection.request("GET", "/status" + XSS_RAW_PATH)  # unencoded: '<' and '>' are visible ASCII
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 404
    assert b"<img" not in body and b"onerror" not in body
    sample = requests.get(live.url + "/ops/sample", timeout=5).json()
    assert sample["workers"][0]["busy"][0]["path"] == XSS_PATH


# ---------------------------------------------------------------------------------------------
# A real browser


def need_selenium() -> None:
    """Selenium, or a skip -- except under CI, where it must be installed (the test extra)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("selenium is required under CI=true (pip install '.[test]')")
        pytest.skip("selenium is not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium, its console kept for the tests to read."""
    chromium, chromedriver = need_program("chromium"), need_program("chromedriver")
    need_selenium()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    try:
        driver.set_page_load_timeout(BROWSER_TIMEOUT_SECONDS)
        driver.set_script_timeout(BROWSER_TIMEOUT_SECONDS)
        yield driver
    finally:
        driver.quit()


# What the page shows, read in one script call so a redraw between reads cannot tear it.
READ_PAGE = """
const charts = {};
for (const figure of document.querySelectorAll('figure.chart')) charts[figure.id] = Number(figure.dataset.points);
const rows = (selector) => Array.from(document.querySelectorAll(selector));
return {
  charts,
  workers: rows('#workers tbody tr').map((row) => ({
    pid: Number(row.dataset.pid),
    cells: Array.from(row.cells).map((cell) => cell.textContent),
    slots: row.querySelectorAll('.slot').length,
    busySlots: row.querySelectorAll('.slot.busy').length,
  })),
  busyPaths: rows('#busy tbody tr td.path').map((cell) => cell.textContent),
  mounts: rows('#mounts tbody tr').map((row) => row.dataset.mount),
  facts: Object.fromEntries(rows('#facts .fact').map((fact) => [fact.dataset.fact, fact.lastChild.textContent])),
  state: (document.querySelector('[data-fact="state"]') || {}).className,
  connection: document.getElementById('connection').dataset.state,
  connectionText: document.getElementById('connection').textContent,
  noMetrics: !document.getElementById('no-metrics').hidden,
  sameDocument: window.loadedOnce === true,
  images: document.images.length,
  background: getComputedStyle(document.body).backgroundColor,
};
"""


def read_page(driver: WebDriver) -> dict[str, Any]:
    found: dict[str, Any] = driver.execute_script(READ_PAGE)
    return found


def severe_console_lines(driver: WebDriver) -> list[str]:
    """Errors the page caused: script errors, CSP refusals, failed loads."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page as a PNG (the window grown to its height for the shot), for people to look at."""
    size = driver.get_window_size()
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(size["width"], min(max(height + 150, size["height"]), 4000))
    try:
        assert driver.save_screenshot(str(path)), "the screenshot could not be taken"
    finally:
        driver.set_window_size(size["width"], size["height"])
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_browser_draws_the_sample(live: PorchServer, browser: WebDriver, tmp_path: Path) -> None:
    browser.get(live.url + "/ops/sample?refresh=0.2")  # below the minimum: once a second

    def drawn() -> dict[str, Any] | None:
        page = read_page(browser)
        return page if page["connection"] == "ok" and page["charts"]["chart-requests"] > 0 else None

    page = wait_until(drawn, "the sample to be drawn", timeout=BROWSER_TIMEOUT_SECONDS)
    assert page["charts"] == {
        "chart-requests": SAMPLE_POINTS,
        "chart-latency": SAMPLE_LATENCY_POINTS,
        "chart-codes": SAMPLE_POINTS,
        "chart-connections": SAMPLE_POINTS,
    }
    assert [worker["pid"] for worker in page["workers"]] == [4101, 4102]
    retiring = page["workers"][0]
    assert retiring["cells"][:5] == ["4101", "2", "retiring", "14,101", "48 MiB"]
    assert (retiring["slots"], retiring["busySlots"]) == (8, 2), "one cell per thread, the busy ones marked"
    assert XSS_PATH in page["busyPaths"], "a hostile path is shown as text"
    assert page["images"] == 0, "and never became an element"
    assert page["mounts"] == ["/", "/app"]
    assert "alert" in page["state"], "a state other than ready stands out"
    assert page["background"] == "rgb(247, 248, 250)", "the stylesheet loaded under the CSP"
    assert page["connectionText"].endswith("every 1 s")
    assert not page["noMetrics"]
    hover_over_the_middle_of(browser, "#chart-latency svg")
    readout = browser.execute_script("return document.querySelector('#chart-latency .legend .when').textContent")
    assert readout.endswith(" s ago"), "the legend reads the values under the pointer"
    assert severe_console_lines(browser) == []
    screenshot(browser, tmp_path / "status-sample.png")


def hover_over_the_middle_of(driver: WebDriver, selector: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ActionChains(driver).move_to_element(driver.find_element(By.CSS_SELECTOR, selector)).perform()


def test_browser_without_a_master_shows_the_worker(live: PorchServer, browser: WebDriver) -> None:
    browser.get(live.url + "/ops/masterless/")
    page = wait_until(
        lambda: (found := read_page(browser))["connection"] == "ok" and found, "the page", BROWSER_TIMEOUT_SECONDS
    )
    assert page["noMetrics"], "the page says why it has no charts"
    assert page["charts"] == dict.fromkeys(("chart-requests", "chart-latency", "chart-codes", "chart-connections"), 0)
    assert page["workers"] == [] and page["mounts"] == []
    assert page["facts"]["pid"] == str(requests.get(live.url + "/ops/masterless", timeout=5).json()["pid"])
    assert page["facts"]["concurrency"] == "threading"
    assert page["connectionText"].endswith("every 2 s"), "the default refresh"
    assert severe_console_lines(browser) == []


def drive_load(url: str, stop: threading.Event, deadline: float, made: list[int]) -> None:
    """A few hundred requests over a few seconds, some of them 404s; bounded in count and time."""
    with requests.Session() as session:
        for number in range(400):
            if stop.is_set() or time.monotonic() > deadline:
                return
            path = "/missing" if number % 5 == 0 else "/data.txt" if number % 2 else "/"
            made.append(session.get(url + path, timeout=5).status_code)
            time.sleep(0.015)


def send_slow(server: PorchServer, target: str, stop: threading.Event) -> None:
    """Requests that stay in flight (the echo handler sleeps), one after another until told to stop."""
    while not stop.is_set():
        connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
        try:
            connection.request("GET", target)
            connection.getresponse().read()
        except OSError:
            return
        finally:
            connection.close()


def test_browser_shows_a_live_two_worker_server(
    porch: Callable[..., PorchServer], site: Path, browser: WebDriver, tmp_path: Path
) -> None:
    server = porch(
        {
            "workers": 2,
            "mounts": [
                {"path": "/", "type": "static", "root": str(site)},
                {"path": "/echo", "type": "core_handlers:EchoHandler"},
                {"path": "/status", "type": "status"},
            ],
        },
        env=ENV,
    )
    stop = threading.Event()
    made: list[int] = []
    slow_path = "/echo" + XSS_RAW_PATH
    threads = [
        threading.Thread(target=drive_load, args=(server.url, stop, time.monotonic() + 6, made), daemon=True),
        threading.Thread(target=send_slow, args=(server, slow_path + "?sleep=2", stop), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        browser.get(server.url + "/status?refresh=1")
        browser.execute_script("window.loadedOnce = true")  # gone if the page reloaded instead of redrawing
        first = wait_until(
            lambda: (found := read_page(browser))["connection"] == "ok" and found,
            "a first draw",
            BROWSER_TIMEOUT_SECONDS,
        )

        def ready() -> dict[str, Any] | None:
            page = read_page(browser)
            enough = all(points >= 2 for points in page["charts"].values()) and len(page["workers"]) == 2
            redrawn = page["facts"]["uptime"] != first["facts"]["uptime"]
            return page if enough and redrawn and slow_path in page["busyPaths"] else None

        page = wait_until(ready, "two workers, two points per chart and the slow request", BROWSER_TIMEOUT_SECONDS)
        document = requests.get(server.url + "/status", timeout=5).json()
        assert sorted(worker["pid"] for worker in page["workers"]) == sorted(w["pid"] for w in document["workers"])
        assert page["images"] == 0, "the hostile path in flight stayed text"
        assert "/" in page["mounts"] and "/status" in page["mounts"]
        assert "alert" not in page["state"], "a ready server is not flagged"
        assert page["sameDocument"], "the page redraws in place"
        assert severe_console_lines(browser) == []
        screenshot(browser, tmp_path / "status-live.png")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert 404 in made and 200 in made
