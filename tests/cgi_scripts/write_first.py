"""Writes 1 MiB before reading its input: deadlocks a server that feeds stdin before reading stdout."""

import hashlib
import sys

sys.stdout.buffer.write(b"Content-Type: application/octet-stream\n\n")
sys.stdout.buffer.write(b"x" * (1 << 20))
sys.stdout.buffer.flush()
data = sys.stdin.buffer.read()
sys.stdout.buffer.write(hashlib.sha256(data).hexdigest().encode())
