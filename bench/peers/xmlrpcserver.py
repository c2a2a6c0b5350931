"""The standard library's ``SimpleXMLRPCServer`` as a peer: threaded, HTTP/1.1 keep-alive.

    python bench/peers/xmlrpcserver.py --port N

A thread per connection (``socketserver.ThreadingMixIn``), ``protocol_version`` HTTP/1.1 so
wrk's connections are kept alive, ``logRequests=False`` (porch runs without an access log too),
and the one function ``add`` of ``bench/apps/rpc.py`` at ``/RPC2``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socketserver
import sys
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps"))
from rpc import add


class KeepAliveHandler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"
    rpc_paths = ("/RPC2",)


class ThreadedXMLRPCServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with ThreadedXMLRPCServer(
        ("127.0.0.1", args.port), requestHandler=KeepAliveHandler, logRequests=False, allow_none=False
    ) as server:
        server.register_function(add, "add")
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
