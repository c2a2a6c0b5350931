"""HTTP dates (RFC 9110 5.6.7): IMF-fixdate written, all three historical formats read."""

from __future__ import annotations

import email.utils
import functools
from datetime import UTC


@functools.lru_cache(maxsize=1024)
def format_http_date(seconds: int) -> str:
    """An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"); kept, as files share few mtimes."""
    return email.utils.formatdate(seconds, usegmt=True)


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch of an HTTP-date, or None if it is not one."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())
