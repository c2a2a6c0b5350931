"""The standard library's ``http.server`` as a peer: static files (HTTP/1.1) or CGI.

    python bench/peers/httpserver.py --port N --root DIR [--cgi]

Static: ``ThreadingHTTPServer`` + ``SimpleHTTPRequestHandler`` with ``protocol_version``
HTTP/1.1, so connections are kept alive (``python -m http.server --protocol HTTP/1.1``).
CGI: ``CGIHTTPRequestHandler`` for ``/cgi-bin/``; it stays on HTTP/1.0 because its CGI responses
carry no length and end when the connection closes (under HTTP/1.1 they would never end).
Request logging stays on, as it cannot be turned off without code; the runner sends stderr to
/dev/null.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import signal
import sys
import warnings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--cgi", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    base: type[http.server.SimpleHTTPRequestHandler] = http.server.SimpleHTTPRequestHandler
    if args.cgi:
        if not hasattr(http.server, "CGIHTTPRequestHandler"):
            print("http.server has no CGIHTTPRequestHandler in this Python version", file=sys.stderr)
            return 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in 3.13, gone in 3.15
            base = http.server.CGIHTTPRequestHandler

    class Handler(base):  # type: ignore[misc, valid-type]
        protocol_version = "HTTP/1.0" if args.cgi else "HTTP/1.1"

    handler = functools.partial(Handler, directory=args.root)
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
