"""Telling systemd how the service is doing: the sd_notify(3) protocol, without libsystemd.

How this works: a service started with ``Type=notify`` (or ``notify-reload``) finds the path
of a Unix datagram socket in ``$NOTIFY_SOCKET`` -- an absolute path, or a name in the abstract
namespace when it starts with "@".  Each call sends one datagram of newline-separated
``KEY=VALUE`` assignments: ``READY=1`` once the listeners are bound and the workers serve,
``RELOADING=1`` (with ``MONOTONIC_USEC``) when a reload starts and ``READY=1`` again when it is
done, ``STOPPING=1`` when a stop begins, ``STATUS=...`` as free text for ``systemctl status``,
``WATCHDOG=1`` as a keep-alive when the unit sets ``WatchdogSec=``.  Outside systemd the
variable is unset and every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (e.g. "READY=1", "STATUS=serving") to the service manager.

    True if it was sent; False when there is no ``$NOTIFY_SOCKET`` or sending failed (logged:
    a service manager that cannot be told must not stop the server).
    """
    target = environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    if target.startswith("@"):
        address: str | bytes = b"\0" + target[1:].encode()  # the abstract namespace
    elif target.startswith("/"):
        address = target
    else:
        log.warning("NOTIFY_SOCKET=%r is neither an absolute path nor @name; not notifying", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as error:
        log.warning("cannot notify the service manager at %s: %s", target, error.strerror or error)
        return False
    return True


def notify_ready(names: Sequence[str], environ: Mapping[str, str] = os.environ) -> bool:
    """READY=1 with a status line naming the addresses served, and this process as the main one."""
    status = "serving on " + ", ".join(names) if names else "serving (no listeners)"
    return notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={status}", environ)


def notify_reloading(environ: Mapping[str, str] = os.environ) -> bool:
    """RELOADING=1 with the CLOCK_MONOTONIC time ``Type=notify-reload`` requires with it."""
    microseconds = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={microseconds}", environ)


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``); None when not asked.

    sd_watchdog_enabled(3): ``WATCHDOG_USEC`` applies to this process only if ``WATCHDOG_PID``
    is unset or names it.
    """
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
