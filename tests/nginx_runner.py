"""A real nginx in front of porch for the tests: ``run_nginx(server_blocks, tmp)`` writes the
blocks (an http{} include, as a site's conf.d file is) into a minimal nginx.conf of its own --
no daemon, one process, every path under ``tmp`` -- and yields once it accepts connections."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from conftest import need_program
from porchtest import wait_until

NGINX_CONF = """
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""


def accepting(port: int, proc: subprocess.Popen[bytes]) -> bool:
    """Whether a server process accepts on ``port`` yet (True too once it died: stop waiting)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return proc.poll() is not None
    return True


@contextlib.contextmanager
def run_nginx(site: str, tmp: Path, port: int) -> Iterator[int]:
    """nginx serving ``site`` (which listens on ``port``); stopped afterwards."""
    program = need_program("nginx")
    (tmp / "site.conf").write_text(site)
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp))
    proc = subprocess.Popen([program, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: accepting(port, proc), "nginx to listen")
        assert proc.poll() is None, (tmp / "nginx-error.log").read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
