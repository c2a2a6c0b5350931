"""Hold N idle keep-alive connections open to a server on 127.0.0.1 (the idle-10k workload).

    python bench/idle_holder.py --port P --count N [--path /hello]

Connects in batches (so the listen backlog never overflows), sends one GET on every connection
and reads its response, which makes each one an *idle keep-alive* connection as a browser leaves
it.  Then prints ``READY <open>`` and holds them, doing nothing, until stdin is closed; then
prints ``OPEN <n>`` -- how many the server had not closed meanwhile -- and exits.  A selector
drives it all in one thread; set-up is bounded by ``SETUP_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import argparse
import errno
import resource
import selectors
import socket
import sys
import time

BATCH = 500
SETUP_TIMEOUT_SECONDS = 90.0


def raise_nofile(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 100
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted, hard)
        )


def response_complete(data: bytes) -> bool:
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    length = 0
    for line in data[:head_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return len(data) >= head_end + 4 + length


def open_batch(port: int, count: int, request: bytes, deadline: float) -> list[socket.socket]:
    """Open ``count`` connections and complete one request on each; those that made it."""
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, bytearray] = {}
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            continue
        pending[sock] = bytearray()
        selector.register(sock, selectors.EVENT_WRITE)
    done: list[socket.socket] = []
    while pending and time.monotonic() < deadline:
        for key, events in selector.select(timeout=1.0):
            sock = key.fileobj  # type: ignore[assignment]
            if events & selectors.EVENT_WRITE:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or sock.send(request) != len(request):
                    selector.unregister(sock)
                    sock.close()
                    del pending[sock]
                    continue
                selector.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            buffer = pending[sock]
            buffer += data
            if not data or response_complete(bytes(buffer)):
                selector.unregister(sock)
                del pending[sock]
                if data:
                    done.append(sock)
                else:
                    sock.close()
    for sock in pending:
        sock.close()
    selector.close()
    return done


def still_open(socks: list[socket.socket]) -> int:
    """Connections the server has not closed: no EOF or error waiting to be read."""
    count = 0
    for sock in socks:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            count += 1
            continue
        except OSError:
            continue
        if data:
            count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--path", default="/hello")
    args = parser.parse_args()
    raise_nofile(args.count)
    request = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n\r\n".encode()
    deadline = time.monotonic() + SETUP_TIMEOUT_SECONDS
    held: list[socket.socket] = []
    while len(held) < args.count and time.monotonic() < deadline:
        held += open_batch(args.port, min(BATCH, args.count - len(held)), request, deadline)
    print(f"READY {len(held)}", flush=True)
    sys.stdin.read()  # hold until the runner closes our stdin
    print(f"OPEN {still_open(held)}", flush=True)
    for sock in held:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
