"""Streams SIZE bytes (from the query string, default 5 MiB) in 64 KiB writes."""

import os
import sys

size = int(os.environ.get("QUERY_STRING") or 5 * 1024 * 1024)
out = sys.stdout.buffer
out.write(b"Content-Type: application/octet-stream\n\n")
block = bytes(range(256)) * 256
while size > 0:
    out.write(block[:size])
    size -= len(block)
out.flush()
