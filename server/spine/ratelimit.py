"""The rate-limit gate: a token bucket per (mount, client address), shared by the whole instance.

The buckets live in the instance's ``ClientTable`` (``porch.spine.clients``), so a client gets
``rate`` requests a second (and ``burst`` more at once) from a mount however its connections fall
between workers and forked children, and a reload keeps them.  A mount is known there by a
number made from its host and path, so a reload that adds or moves other mounts keeps its
buckets too.  The client is ``request.client`` as the connection resolved it (a client behind a
trusted proxy is limited by its own address); Unix-socket clients are local and never limited.
"""

from __future__ import annotations

import zlib

from porch.config.settings import Mount, RateLimit
from porch.http.errors import TooManyRequests
from porch.http.messages import Request
from porch.metrics.counters import Recorder
from porch.spine.clients import CONNECTIONS, ClientTable
from porch.spine.dispatch import Gate


def mount_number(mount: Mount) -> int:
    """The mount's scope in the client table: stable across reloads, never a reserved scope."""
    return CONNECTIONS + 1 + zlib.crc32(f"{','.join(mount.host)}\0{mount.path}".encode()) % (2**32 - CONNECTIONS - 1)


def rate_limit_gate(mount: Mount, limit: RateLimit, clients: ClientTable, metrics: Recorder) -> Gate:
    """A gate answering ``429 Too Many Requests`` (with Retry-After) to a client over ``limit``."""
    scope = mount_number(mount)

    def rate_limited(request: Request) -> Request:
        client = request.client
        if isinstance(client, tuple) and (wait := clients.take_token(client[0], scope, limit.rate, limit.burst)):
            metrics.add("rate_limited")
            raise TooManyRequests(wait, "too many requests from your address")
        return request

    return rate_limited
