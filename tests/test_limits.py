"""Rate limits per mount and connections per client, shared by every worker of an instance.

The table of client addresses is tested directly (collisions, reuse of idle entries, a full
table failing open, v4-mapped addresses, counts across processes and after a process died);
then through real servers with two workers: a burst against a rate-limited mount, a reload that
keeps the buckets, connections held open from 127.0.0.1, a worker killed with SIGKILL while it
held connections, and the counters in the status JSON and the Prometheus text.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from porchtest import PorchServer, wait_until

from porch.http.errors import TooManyRequests
from porch.spine.clients import CONNECTIONS, ClientTable, address_key

Porch = Callable[..., PorchServer]
SCOPE = 7  # a mount's number in the table, for the unit tests
LIMITED = {"path": "/limited", "type": "health", "rate_limit": {"rate": 5, "burst": 4}}
FREE = {"path": "/free", "type": "health"}
STATUS = {"path": "/status", "type": "status"}
METRICS = {"path": "/metrics", "type": "metrics"}


# -- the table ------------------------------------------------------------------------------------


def test_addresses_name_clients_whatever_their_spelling() -> None:
    assert address_key("192.0.2.7") == address_key("::ffff:192.0.2.7") == address_key("::FFFF:c000:0207")
    assert address_key("fe80::1%eth0") == address_key("fe80::1")
    assert address_key("2001:db8::1") != address_key("2001:db8::2")
    assert address_key("192.0.2.7") != address_key("192.0.2.8")
    assert address_key("") is None and address_key("not-an-address") is None


def test_v4_mapped_clients_share_a_bucket() -> None:
    table = ClientTable()
    assert table.take_token("::ffff:192.0.2.7", SCOPE, rate=1, burst=0, now=100.0) == 0.0
    assert table.take_token("192.0.2.7", SCOPE, rate=1, burst=0, now=100.0) > 0
    assert table.take_token("192.0.2.8", SCOPE, rate=1, burst=0, now=100.0) == 0.0


def test_a_bucket_holds_one_plus_burst_and_refills_at_the_rate() -> None:
    table = ClientTable()
    now = 50.0
    taken = [table.take_token("192.0.2.1", SCOPE, rate=5, burst=4, now=now) for _ in range(8)]
    assert taken[:5] == [0.0] * 5
    assert all(wait == pytest.approx(0.2) for wait in taken[5:])
    assert table.take_token("192.0.2.1", SCOPE, rate=5, burst=4, now=now + 0.2) == 0.0  # one token back
    assert table.take_token("192.0.2.1", SCOPE, rate=5, burst=4, now=now + 0.2) > 0
    assert table.take_token("192.0.2.1", SCOPE + 1, rate=5, burst=4, now=now) == 0.0  # another mount
    assert dict(TooManyRequests(0.2).headers) == {"Retry-After": "1"}
    assert dict(TooManyRequests(4.01).headers) == {"Retry-After": "5"}


def homes(table: ClientTable, scope: int, count: int) -> dict[int, list[str]]:
    """Addresses by the entry their key starts from, until one entry has ``count`` of them."""
    found: dict[int, list[str]] = {}
    for n in range(1, 10000):
        host = f"198.51.{n // 256}.{n % 256}"
        key = address_key(host)
        assert key is not None
        same = found.setdefault(table.home(key, scope), [])
        same.append(host)
        if len(same) == count:
            return {table.home(key, scope): same}
    raise AssertionError("no collision found")


def test_colliding_keys_keep_their_own_buckets() -> None:
    table = ClientTable(entries=64)
    [(_, hosts)] = homes(table, SCOPE, 3).items()
    for host in hosts:
        assert table.take_token(host, SCOPE, rate=1, burst=1, now=10.0) == 0.0
    for host in hosts:
        assert table.take_token(host, SCOPE, rate=1, burst=1, now=10.0) == 0.0
        assert table.take_token(host, SCOPE, rate=1, burst=1, now=10.0) > 0


def test_idle_entries_are_reused_and_a_full_table_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    table = ClientTable(entries=4)
    hosts = [f"203.0.113.{n}" for n in range(1, 6)]
    for host in hosts[:4]:
        assert table.take_token(host, SCOPE, rate=1, burst=0, now=0.0) == 0.0
    with caplog.at_level(logging.WARNING, logger="porch.spine.clients"):
        # Every entry holds a bucket that is not full again: the fifth client is not limited.
        assert [table.take_token(hosts[4], SCOPE, rate=1, burst=0, now=0.5) for _ in range(3)] == [0.0] * 3
    assert "client table full (4): 1 admitted unchecked" in caplog.text
    # A second later the buckets are full again, as good as no entry: the fifth client gets one.
    assert table.take_token(hosts[4], SCOPE, rate=1, burst=0, now=1.5) == 0.0
    assert table.take_token(hosts[4], SCOPE, rate=1, burst=0, now=1.5) > 0
    assert table.take_token(hosts[0], SCOPE, rate=1, burst=0, now=1.5) == 0.0  # it lost nothing by it


def test_connections_are_counted_up_to_the_limit_and_off_again() -> None:
    table = ClientTable()
    first, second = table.open_connection("192.0.2.1", 2), table.open_connection("::ffff:192.0.2.1", 2)
    assert first is not None and second is not None
    assert table.open_connection("192.0.2.1", 2) is None
    assert table.open_connection("192.0.2.2", 2) is not None
    first()
    third = table.open_connection("192.0.2.1", 2)
    assert third is not None
    assert table.open_connection("192.0.2.1", 2) is None


def test_a_table_full_of_open_connections_admits_unchecked() -> None:
    table = ClientTable(entries=2)
    assert table.open_connection("192.0.2.1", 1) is not None
    assert table.open_connection("192.0.2.2", 1) is not None
    assert table.open_connection("192.0.2.3", 1) is not None  # no entry for it: not limited
    assert table.open_connection("192.0.2.3", 1) is not None
    assert table.open_connection("192.0.2.1", 1) is None


def in_child(action: Callable[[], None]) -> int:
    """Run ``action`` in a forked process that then exits at once (closing nothing): its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            action()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_counts_are_shared_between_processes_and_a_dead_ones_are_forgotten() -> None:
    table = ClientTable()
    child = in_child(lambda: [table.open_connection("192.0.2.9", 3) for _ in range(2)] and None)
    assert table.open_connection("192.0.2.9", 3) is not None  # the third, counted in this process
    assert table.open_connection("192.0.2.9", 3) is None
    table.forget(child)  # what the master does when it reaps a worker
    assert table.open_connection("192.0.2.9", 3) is not None
    assert table.open_connection("192.0.2.9", 3) is not None
    assert table.open_connection("192.0.2.9", 3) is None


def test_a_lock_left_by_a_dead_process_is_released_by_the_master() -> None:
    table = ClientTable()
    child = in_child(lambda: table.hold() and None)  # dies holding the lock
    started = time.monotonic()
    assert table.take_token("192.0.2.1", SCOPE, rate=1, burst=0) == 0.0  # busy: admitted, not blocked
    assert table.take_token("192.0.2.1", SCOPE, rate=1, burst=0) == 0.0
    assert time.monotonic() - started < 1.0
    table.forget(child)
    assert table.take_token("192.0.2.1", SCOPE, rate=1, burst=0) == 0.0
    assert table.take_token("192.0.2.1", SCOPE, rate=1, burst=0) > 0  # checked again


def test_connection_entries_are_apart_from_rate_limits() -> None:
    table = ClientTable()
    assert table.open_connection("192.0.2.1", 1) is not None
    assert table.take_token("192.0.2.1", CONNECTIONS + 1, rate=1, burst=0) == 0.0
    assert table.open_connection("192.0.2.1", 1) is None


# -- real servers -----------------------------------------------------------------------------------


def get(server: PorchServer, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (so that every worker takes some)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def status(server: PorchServer) -> dict[str, Any]:
    code, _, body = get(server, "/status?format=json")
    assert code == 200
    found: dict[str, Any] = json.loads(body)
    return found


def serving(server: PorchServer, count: int = 2) -> list[dict[str, Any]]:
    """The workers of the status JSON, once ``count`` of them serve."""

    def listed() -> list[dict[str, Any]] | None:
        workers = status(server).get("workers", [])  # none before the master's first snapshot
        found = [worker for worker in workers if worker["state"] == "serving"]
        return found if len(found) == count else None

    return wait_until(listed, "workers")


def limited_config(concurrency: str, **settings: Any) -> dict[str, Any]:
    return {"concurrency": concurrency, "workers": 2, "mounts": [LIMITED, FREE, STATUS, METRICS], **settings}


def worker_of(sock: socket.socket, workers: set[int]) -> int:
    """The worker serving a kept-alive connection: the pid that answers, or under forking the
    parent of that child."""
    pid = int(json.loads(request_on(sock)[2])["pid"])
    if pid in workers:
        return pid
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def two_processes(server: PorchServer) -> list[socket.socket]:
    """Two kept-alive connections served by two processes: the two workers under threading (made
    at once, connections spread over both), two forked children under forking (of one worker or
    of both, as the kernel hands the connections out).  The other connections are closed."""
    document = status(server)
    workers = {worker["pid"] for worker in serving(server)}
    found: dict[int, socket.socket] = {}
    for _ in range(20):
        socks = [server.connect() for _ in range(16)]
        for sock in socks:
            found.setdefault(json.loads(request_on(sock)[2])["pid"], sock)
        for sock in socks:
            if sock not in found.values():
                sock.close()
        if len(found) >= 2:
            break
    assert len(found) >= 2, "every connection went to one process"
    if document["concurrency"] == "threading":
        assert set(found) == workers
    return list(found.values())[:2]


def test_a_burst_gets_the_bucket_then_429_across_workers(porch: Porch, concurrency: str) -> None:
    server = porch(limited_config(concurrency))
    pair = two_processes(server)
    started = time.monotonic()
    answers = [request_on(pair[n % 2], "/limited")[:2] for n in range(12)]  # the processes take turns
    elapsed = time.monotonic() - started
    for sock in pair:
        sock.close()
    codes = [code for code, _ in answers]
    allowed = codes.count(200)
    assert codes[:5] == [200] * 5
    assert 5 <= allowed <= 5 + math.floor(elapsed * 5), (codes, elapsed)
    assert codes.count(429) == 12 - allowed
    assert all(retry_after == "1" for code, retry_after in answers if code == 429)
    # Another mount is not limited; the bucket refills at 5 a second.
    assert [get(server, "/free")[0] for _ in range(20)] == [200] * 20
    time.sleep(0.5)
    assert get(server, "/limited")[0] == 200
    refused = codes.count(429)
    document = wait_until(lambda: (d := status(server))["limits"]["rate_limited"] >= refused and d, "the count")
    assert document["limits"] == {"rate_limited": refused, "connections_refused": 0}
    code, _, text = get(server, "/metrics")
    assert code == 200
    assert f"porch_rate_limited_total {float(refused)}\n".encode() in text
    assert b"porch_connections_refused_total 0.0\n" in text


def test_a_reload_keeps_the_buckets(porch: Porch) -> None:
    slow = {"path": "/limited", "type": "health", "rate_limit": {"rate": 0.2, "burst": 0}}
    server = porch({"workers": 2, "mounts": [slow, STATUS]})
    assert get(server, "/limited")[0] == 200
    code, headers, _ = get(server, "/limited")
    assert code == 429 and 1 <= int(headers["Retry-After"]) <= 5
    server.signal(signal.SIGHUP)
    # .get: the status JSON has no snapshot fields before the master's first publication
    wait_until(lambda: (d := status(server)).get("generation") == 1 and d.get("state") == "ready", "the reload", 15)
    wait_until(lambda: all(w["generation"] == 1 for w in status(server).get("workers", [])), "old workers gone", 15)
    code, headers, _ = get(server, "/limited")
    assert code == 429, "the new workers started with a full bucket"


def usable(sock: socket.socket) -> bool:
    """Whether the server answers a request on ``sock`` (else it closed it)."""
    try:
        sock.sendall(b"GET /free HTTP/1.1\r\nHost: x\r\n\r\n")
        return sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    except OSError:  # reset: the server closed it before the request came
        return False


def connect(server: PorchServer, count: int) -> list[socket.socket]:
    """``count`` connections, one at a time, each given time to be accepted (or closed)."""
    socks = []
    for _ in range(count):
        socks.append(server.connect())
        time.sleep(0.05)
    return socks


def all_usable(server: PorchServer, count: int) -> list[socket.socket] | None:
    """``count`` new connections if the server serves them all; else None (and they are closed)."""
    socks = connect(server, count)
    if all(usable(sock) for sock in socks):
        return socks
    for sock in socks:
        sock.close()
    return None


def test_connections_per_client_across_workers(porch: Porch, concurrency: str) -> None:
    server = porch(limited_config(concurrency, limits={"connections_per_client": 3}))
    socks = connect(server, 5)
    try:
        assert sorted(usable(sock) for sock in socks) == [False, False, True, True, True]
        kept = [sock for sock in socks if usable(sock)]
        assert len(kept) == 3, "a connection that served a request stays usable"
        for sock in kept[:2]:
            sock.close()
        socks.extend(wait_until(lambda: all_usable(server, 2), "connections admitted again after others closed"))
        [extra] = connect(server, 1)
        socks.append(extra)
        assert not usable(extra)
    finally:
        for sock in socks:
            sock.close()
    # The connections just closed come off the count at once (threading), or once the acceptor has
    # reaped the children serving them (forking): until then a new one may be refused.
    wait_until(lambda: refused_count(server) >= 3, "the refusals counted")
    # the status request's own connection may still count (forking: its child not collected yet)
    code, _, text = wait_until(lambda: admitted_get(server, "/metrics"), "the metrics request admitted")
    [line] = [line for line in text.decode().splitlines() if line.startswith("porch_connections_refused_total ")]
    assert code == 200 and float(line.split()[1]) >= 3
    assert "connections since the last line: their clients held limits.connections_per_client (3)" in (
        server.error_text()
    )


def admitted_get(server: PorchServer, path: str) -> tuple[int, dict[str, str], bytes] | None:
    """``get``, or None while this client is still at its limit (the connection is refused)."""
    try:
        return get(server, path)
    except OSError:
        return None


def refused_count(server: PorchServer) -> int:
    """The status JSON's count of refused connections; 0 while this client is still at its limit."""
    try:
        return int(status(server)["limits"]["connections_refused"])
    except OSError:
        return 0


def test_a_worker_killed_with_connections_leaves_none_counted(porch: Porch, concurrency: str) -> None:
    server = porch(
        {"concurrency": concurrency, "workers": 1, "mounts": [FREE, STATUS], "limits": {"connections_per_client": 2}}
    )
    [worker] = {worker["pid"] for worker in serving(server, 1)}
    # Under forking, the status request's connection counts until its child has been collected.
    held = wait_until(lambda: all_usable(server, 2), "two connections admitted")
    assert {worker_of(sock, {worker}) for sock in held} == {worker}
    [refused] = connect(server, 1)
    assert not usable(refused)
    refused.close()
    os.kill(worker, signal.SIGKILL)
    for sock in held:  # forking: the worker's children would hold them on
        sock.close()
    wait_until(lambda: f"worker {worker} died" in server.error_text(), "the master to reap the worker")
    fresh = wait_until(lambda: all_usable(server, 2), "new connections admitted after the worker was replaced")
    for sock in fresh:
        sock.close()


def request_on(sock: socket.socket, path: str = "/free") -> tuple[int, str | None, bytes]:
    """A request on a kept-alive connection: its answer's status, Retry-After and body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.getheader("Retry-After"), response.read()
