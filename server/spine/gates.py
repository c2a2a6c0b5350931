"""The gates of each mount, in the order requests meet them: the rate limit, then authentication.

A rate limit comes first, as in nginx (``limit_req`` before ``auth_basic``): a client guessing
passwords is slowed down before a password is checked.
"""

from __future__ import annotations

from porch.config.settings import Mount
from porch.metrics.counters import NO_METRICS, Recorder
from porch.spine.auth import BasicAuth
from porch.spine.clients import ClientTable
from porch.spine.dispatch import Gate
from porch.spine.ratelimit import rate_limit_gate


def gates_for(mount: Mount, clients: ClientTable, metrics: Recorder = NO_METRICS) -> tuple[Gate, ...]:
    """The gates ``mount``'s settings ask for; none for most mounts.  ``clients`` is the instance's
    table of client addresses, ``metrics`` where refusals are counted."""
    gates: list[Gate] = []
    if mount.rate_limit is not None:
        gates.append(rate_limit_gate(mount, mount.rate_limit, clients, metrics))
    if mount.auth is not None:
        gates.append(BasicAuth(mount.auth))
    return tuple(gates)
