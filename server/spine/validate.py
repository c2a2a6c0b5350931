"""The validate stage: policy beyond syntax, applied before any handler runs.

The parser has already rejected what is not HTTP.  Here: methods this server implements
(RFC 9110 section 9: unknown → 501, TRACE disabled → 405), access rules (global, then the mount's;
deny wins over allow; Unix-socket clients are local and always admitted) and the body limit of the
mount (a declared Content-Length above it → 413 before the handler reads a byte).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from porch.config.settings import AccessRules, Config
from porch.http.errors import Forbidden, MethodNotAllowed, MethodNotImplemented, PayloadTooLarge
from porch.http.messages import Request
from porch.spine.dispatch import Route

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"})
SERVED_METHODS = KNOWN_METHODS - {"TRACE", "CONNECT"}


@lru_cache(maxsize=4096)
def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def admitted(rules: AccessRules, client: object) -> bool:
    """Whether ``client`` passes ``rules``: in no deny network and in some allow network."""
    if not isinstance(client, tuple) or rules.admits_everyone:
        return True
    address = _address(client[0])
    if any(address in network for network in rules.deny):
        return False
    return any(address in network for network in rules.allow)


def validate(request: Request, route: Route, config: Config) -> Request:
    """Raise the HTTPError that answers ``request`` if policy rejects it; else the request to serve
    (the mount's gates -- rate limit, authentication -- may add what they learned)."""
    if request.method not in SERVED_METHODS:
        if request.method in KNOWN_METHODS:
            raise MethodNotAllowed(sorted(SERVED_METHODS), f"{request.method} is disabled")
        raise MethodNotImplemented(f"method {request.method} is not implemented")
    if not (admitted(config.access, request.client) and admitted(route.mount.access, request.client)):
        raise Forbidden("access to this resource is not allowed from your address")
    limit = route.mount.limits.body
    body = request.body
    if body.length is not None and body.length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    body.limit = limit if body.limit is None else min(limit, body.limit)
    for gate in route.gates:
        request = gate(request)
    return request
