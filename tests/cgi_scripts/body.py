"""Reads exactly CONTENT_LENGTH bytes, as RFC 3875 4.2 tells scripts to, and reports them."""

import hashlib
import json
import os
import sys

length = os.environ.get("CONTENT_LENGTH")
data = sys.stdin.buffer.read(int(length)) if length else b""
sys.stdout.write("Content-Type: application/json\n\n")
sys.stdout.write(
    json.dumps({"content_length": length, "received": len(data), "sha256": hashlib.sha256(data).hexdigest()})
)
