"""The workloads, and the targets porch must meet on them (ratios measured in one run).

A ``Workload`` names the request (method, path, body, wrk Lua script), how a correct response
looks (checked once per server before measuring), the unit of its throughput and the servers it
runs on.  Each peer is compared with the porch variant named in its ``ServerSpec.compare_to``
(same process and thread counts where the peer has them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

HELLO = b"Hello, world!\n"
UPLOAD_BYTES = 65536
STATIC_SMALL_BYTES = 1024
STATIC_LARGE_BYTES = 10 * 2**20
IDLE_CONNECTIONS = 10_000
XMLRPC_ADD = (
    b"<?xml version='1.0'?>\n<methodCall>\n<methodName>add</methodName>\n<params>\n"
    b"<param>\n<value><int>2</int></value>\n</param>\n<param>\n<value><int>3</int></value>\n"
    b"</param>\n</params>\n</methodCall>\n"
)

WSGI_SERVERS = (
    "porch-2x8",
    "porch-compiled-2x8",
    "porch-1x8",
    "gunicorn-sync",
    "gunicorn-gthread",
    "waitress",
    "uwsgi",
)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    path: str
    script: str  # file in bench/wrk
    servers: tuple[str, ...]
    check: Callable[[bytes], bool]
    method: str = "GET"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    unit: str = "req/s"  # or "MiB/s"
    idle_connections: int = 0  # > 0: the idle-10k procedure


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "wsgi-hello",
            "WSGI app answering 14 bytes; keep-alive",
            "/hello",
            "get.lua",
            (*WSGI_SERVERS, "porch-2x8-nometrics"),  # the cost of counting: porch-2x8 with metrics off
            lambda body: body == HELLO,
        ),
        Workload(
            "wsgi-hello-close",
            "the same with `Connection: close` (a new TCP connection per request)",
            "/hello",
            "close.lua",
            WSGI_SERVERS,
            lambda body: body == HELLO,
            headers={"Connection": "close"},
        ),
        Workload(
            "wsgi-post-64k",
            "POST of 64 KiB that the app reads whole; keep-alive",
            "/upload",
            "post-64k.lua",
            WSGI_SERVERS,
            lambda body: body == b"%d\n" % UPLOAD_BYTES,
            method="POST",
            body=b"x" * UPLOAD_BYTES,
            headers={"Content-Type": "application/octet-stream"},
        ),
        Workload(
            "static-1k",
            "a 1 KiB file; keep-alive",
            "/1k.txt",
            "get.lua",
            ("porch-static", "porch-compiled-static", "porch-static-nometrics", "http.server", "nginx"),
            lambda body: len(body) == STATIC_SMALL_BYTES,
        ),
        Workload(
            "static-10m",
            "a 10 MiB file; keep-alive; throughput in MiB/s",
            "/10m.bin",
            "get.lua",
            ("porch-static", "porch-compiled-static", "http.server", "nginx"),
            lambda body: len(body) == STATIC_LARGE_BYTES,
            unit="MiB/s",
        ),
        Workload(
            "cgi-sh",
            "a two-line sh script (`printf` of a header and 14 bytes)",
            "/cgi-bin/hello.sh",
            "get.lua",
            ("porch-cgi", "porch-compiled-cgi", "http.server-cgi", "lighttpd"),
            lambda body: body == HELLO,
        ),
        Workload(
            "cgi-py",
            "the same in Python (`/usr/bin/python3`, no imports beyond sys)",
            "/cgi-bin/hello.py",
            "get.lua",
            ("porch-cgi", "porch-compiled-cgi", "http.server-cgi", "lighttpd"),
            lambda body: body == HELLO,
        ),
        Workload(
            "xmlrpc-add",
            "XML-RPC call add(2, 3); keep-alive",
            "/RPC2",
            "xmlrpc-add.lua",
            ("porch-xmlrpc", "porch-compiled-xmlrpc", "xmlrpc.server"),
            lambda body: b"<int>5</int>" in body,
            method="POST",
            body=XMLRPC_ADD,
            headers={"Content-Type": "text/xml"},
        ),
        Workload(
            "idle-10k",
            f"wsgi-hello while {IDLE_CONNECTIONS:,} idle keep-alive connections are held open",
            "/hello",
            "get.lua",
            ("porch-idle",),
            lambda body: body == HELLO,
            idle_connections=IDLE_CONNECTIONS,
        ),
    ]
}


@dataclass(frozen=True)
class Target:
    """porch's throughput on ``workload`` is at least ``minimum`` × the peer's.

    ``peer`` is a server key, or ``"python"`` for the best (fastest) Python peer of the workload.
    Kind ``"p99"``: porch's p99 is at most the p99 of the Python peer with the lowest p99.
    Kind ``"idle"``: hello throughput with idle connections >= ``minimum`` × without, and no
    thread per idle connection.  ``compiled``: the ratio of porch's compiled build (the
    ``porch-compiled-*`` twin of the variant the peer is compared with) instead.
    """

    workload: str
    kind: str  # "ratio" | "p99" | "idle"
    peer: str = ""
    minimum: float = 0.0
    compiled: bool = False


# The workloads of one request after another, which profile.py and instructions.py can run
# (idle-10k is a procedure of its own).
REQUEST_WORKLOADS = [name for name, workload in WORKLOADS.items() if not workload.idle_connections]

TARGETS = [
    Target("wsgi-hello", "ratio", "gunicorn-gthread", 1.5),
    Target("wsgi-hello", "ratio", "uwsgi", 1.0),
    Target("wsgi-hello-close", "ratio", "python", 1.2),
    Target("wsgi-post-64k", "ratio", "python", 1.3),
    Target("static-1k", "ratio", "http.server", 3.0),
    Target("static-1k", "ratio", "nginx", 0.25),
    Target("static-10m", "ratio", "nginx", 0.9),
    Target("cgi-sh", "ratio", "lighttpd", 0.7),
    Target("cgi-sh", "ratio", "http.server-cgi", 4.0),
    Target("cgi-py", "ratio", "lighttpd", 0.95),
    Target("xmlrpc-add", "ratio", "xmlrpc.server", 1.3),
    # The compiled build's (the compiled-build issue's targets).
    Target("wsgi-hello", "ratio", "uwsgi", 1.0, compiled=True),
    Target("wsgi-post-64k", "ratio", "uwsgi", 1.0, compiled=True),
    Target("static-1k", "ratio", "nginx", 0.5, compiled=True),
    Target("xmlrpc-add", "ratio", "xmlrpc.server", 2.0, compiled=True),
    Target("cgi-sh", "ratio", "lighttpd", 1.0, compiled=True),
    Target("cgi-py", "ratio", "lighttpd", 1.0, compiled=True),
    *[
        Target(name, "p99")
        for name in (
            "wsgi-hello",
            "wsgi-hello-close",
            "wsgi-post-64k",
            "static-1k",
            "static-10m",
            "cgi-sh",
            "cgi-py",
            "xmlrpc-add",
        )
    ],
    Target("idle-10k", "idle", minimum=0.8),
]
IDLE_THREAD_ALLOWANCE = 10  # more threads than this with the idle connections = a thread per connection
