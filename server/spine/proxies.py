"""Believing the proxies in front of porch: the client's address, scheme and host, as they say.

A request whose peer is in ``trusted_proxies`` may carry what its proxies learned of the client
-- RFC 7239 ``Forwarded`` or the de facto ``X-Forwarded-For/-Proto/-Host/-Port`` -- and only the
headers ``proxy_headers`` lists are read.  The address list is walked from the right (the entry
the nearest proxy added) past the entries that are trusted proxies themselves; the first that is
not is the client.  Entries further left were written by the client or by proxies nobody vouches
for, so a spoofed leftmost entry is never believed.  When every entry is a trusted proxy, the
leftmost is the client.

``TrustedProxies.apply`` turns the request into the one the client made: ``client``, ``scheme``
and the ``Host`` field replaced (a new ``Request`` with new ``Headers``; the parsed ones are
shared).  A value that is malformed, not an address (``unknown``, an obfuscated ``_name``) or a
scheme other than http/https is ignored with a debug line -- never an error answer: the proxy,
not the client, wrote it.  From an untrusted peer nothing is read and the headers reach
applications as sent.  ``Pipeline`` applies it first, so access rules, logs, metrics and
handlers all see the client; with no ``trusted_proxies`` it is never built (nothing to pay).

Which headers count, when both kinds are listed: a ``Forwarded`` field that parses decides
alone; else the ``X-Forwarded-*`` ones.  ``X-Forwarded-Proto``, ``-Host`` and ``-Port`` may be
lists too (proxies that append): the entry at the client's position from the right is taken, or
the leftmost when the list is shorter (a proxy that overwrote it spoke for the whole chain).
``X-Forwarded-Port`` is the port the client connected to at the proxy (ELB, HAProxy, Traefik
use it so), so it joins the Host the application sees (``SERVER_PORT``); the client's own port
comes from a ``for=`` node or an ``X-Forwarded-For`` entry that has one, else it is 0.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from porch.config.settings import AccessRules
from porch.http.errors import ProtocolError
from porch.http.grammar import TCHAR, list_elements
from porch.http.head import MAX_PORT, check_authority
from porch.http.messages import Headers, Request, escape
from porch.spine.validate import admitted

log = logging.getLogger(__name__)

SCHEMES = frozenset({"http", "https"})
# RFC 7239 4: forwarded-pair = token "=" value; value = token / quoted-string.  The scanner takes
# one pair and the separator after it (";" next pair, "," next element, or the end).
_PAIR = re.compile(rf'[ \t]*([{TCHAR}]+)=([{TCHAR}]+|"(?:[^"\\]|\\.)*")[ \t]*([;,]|$)')
_EMPTY = re.compile(r"[ \t]*([;,])")  # empty pairs and elements are allowed (1#, *(";" [pair]))
_ESCAPED = re.compile(r"\\(.)")
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+")  # RFC 7239 6.3 obfnode, 6.4 obfport
_PORT = re.compile(r"[0-9]{1,5}")

Node = tuple[str, int] | None  # an address and port; None when not an address (unknown, obfuscated)


class Unusable(ValueError):
    """A header value a trusted proxy sent that cannot be read; it is ignored."""


@dataclass(frozen=True, slots=True)
class Said:
    """What the proxies say of the client; None where they say nothing believable."""

    client: Node = None
    scheme: str | None = None
    host: str | None = None  # a Host field value: uri-host [":" port]
    port: str | None = None  # the port the client connected to (X-Forwarded-Port)


NOTHING = Said()


def forwarded_elements(values: list[str]) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` (every line, in order) as its elements, each a mapping of
    lower-cased parameter names to unquoted values; Unusable if it does not parse."""
    elements: list[dict[str, str]] = []
    for value in values:
        element: dict[str, str] = {}
        position = 0
        while position < len(value):
            if (pair := _PAIR.match(value, position)) is not None:
                name, raw, separator = pair[1].lower(), pair[2], pair[3]
                if name in element:
                    raise Unusable(f"{name}= twice in one element")
                element[name] = _ESCAPED.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
                position = pair.end()
            elif (empty := _EMPTY.match(value, position)) is not None:
                separator, position = empty[1], empty.end()
            elif not value[position:].strip(" \t"):
                break
            else:
                raise Unusable(f"unreadable at {value[position : position + 20]!r}")
            if separator == ",":
                elements.append(element)
                element = {}
        elements.append(element)
    return [element for element in elements if element]


def forwarded_node(value: str) -> Node:
    """A ``for=`` node (RFC 7239 6): ``198.51.100.7``, ``"198.51.100.7:4711"``,
    ``"[2001:db8::1]:4711"``; None for ``unknown`` and obfuscated names; Unusable otherwise."""
    if value.lower() == "unknown" or _OBFUSCATED.fullmatch(value):
        return None
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket:
            raise Unusable(f"unclosed bracket in {value!r}")
        address = ip_text(host, version=6)
        port_text = rest.removeprefix(":") if rest else None
        if rest and not rest.startswith(":"):
            raise Unusable(f"text after the address in {value!r}")
    else:
        host, colon, port_text = value.partition(":")
        address = ip_text(host, version=4)
        port_text = port_text if colon else None
    if port_text is None or _OBFUSCATED.fullmatch(port_text):
        return address, 0
    return address, port_number(port_text)


def forwarded_for_entry(value: str) -> Node:
    """One ``X-Forwarded-For`` entry: an address, ``[v6]``, ``[v6]:port`` or ``v4:port``; None
    for ``unknown`` and obfuscated names; Unusable otherwise."""
    if value.count(":") > 1 and not value.startswith("["):
        return ip_text(value, version=6), 0
    return forwarded_node(value)


def ip_text(text: str, version: int) -> str:
    """The address ``text`` of IP ``version``, written canonically; Unusable if it is not one."""
    try:
        address = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise Unusable(f"{text!r} is not an IPv{version} address") from None
    return str(address)


def port_number(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > MAX_PORT:
        raise Unusable(f"{text!r} is not a port")
    return int(text)


def scheme_of(value: str) -> str:
    scheme = value.strip(" \t").lower()
    if scheme not in SCHEMES:
        raise Unusable(f"scheme {value!r} is neither http nor https")
    return scheme


def host_of(value: str) -> str:
    host = value.strip(" \t")
    try:
        check_authority(host, port_required=False, what="forwarded host")
    except ProtocolError as error:
        raise Unusable(str(error)) from None
    return host


def port_of(value: str) -> str:
    return str(port_number(value.strip(" \t")))


def with_port(host: str, port: str) -> str:
    """``host`` (a Host value) with its port replaced by ``port``."""
    bracket = host.rfind("]")
    name = host[: bracket + 1] if bracket >= 0 else host.partition(":")[0]
    return f"{name}:{port}"


class TrustedProxies:
    """The proxies porch believes and the headers it reads from them; one per server process."""

    def __init__(self, rules: AccessRules, headers: Iterable[str]) -> None:
        self.rules = rules  # allow: the trusted_proxies networks (``admitted``, one address rule for porch)
        self.headers = frozenset(headers)
        self.forwarded = "forwarded" in self.headers
        self.x_forwarded = bool(self.headers - {"forwarded"})

    def trusts(self, client: object) -> bool:
        """Whether ``client`` is a trusted proxy (a Unix-socket peer has no address: never)."""
        return isinstance(client, tuple) and admitted(self.rules, client)

    def apply(self, request: Request) -> Request:
        """The request as the client made it, when a trusted proxy says so; else ``request``."""
        if not self.trusts(request.client):
            return request
        said = self.said(request.headers)
        if said == NOTHING:
            return request
        headers = request.headers
        host = said.host
        if said.port is not None and (base := host or headers.get("host")):
            host = with_port(base, said.port)
        if host:
            headers = Headers([item for item in headers if item[0].lower() != "host"])
            headers.add("Host", host)
        return replace(
            request,
            client=said.client or request.client,
            scheme=said.scheme or request.scheme,
            headers=headers,
        )

    def said(self, headers: Headers) -> Said:
        """What the listed headers say, Forwarded first."""
        if self.forwarded and (values := headers.get_all("forwarded")):
            try:
                return self.from_forwarded(forwarded_elements(values))
            except Unusable as problem:
                log.debug("Forwarded ignored: %s", escape(str(problem)))
        if self.x_forwarded:
            return self.from_x_forwarded(headers)
        return NOTHING

    def from_forwarded(self, elements: list[dict[str, str]]) -> Said:
        """The element whose ``for=`` is the client (walked from the right) says its proto and host."""
        index = self.client_index([element.get("for") for element in elements], forwarded_node)
        if index is None:
            return NOTHING
        element = elements[index]
        return Said(
            client=self.node(element.get("for"), forwarded_node),
            scheme=self.value(element.get("proto"), scheme_of, "Forwarded proto"),
            host=self.value(element.get("host"), host_of, "Forwarded host"),
        )

    def from_x_forwarded(self, headers: Headers) -> Said:
        """X-Forwarded-For walked from the right; the others read at the client's position."""
        client: Node = None
        depth = 1  # the client's position from the right
        if "x-forwarded-for" in self.headers:
            entries = list_elements(headers.get_all("x-forwarded-for"))
            index = self.client_index(entries, forwarded_for_entry)
            if index is not None:
                client = self.node(entries[index], forwarded_for_entry)
                depth = len(entries) - index
        said: dict[str, str | None] = {}
        for name, read in (("proto", scheme_of), ("host", host_of), ("port", port_of)):
            if f"x-forwarded-{name}" in self.headers:
                entries = list_elements(headers.get_all(f"x-forwarded-{name}"))
                entry = entries[-depth] if len(entries) >= depth else (entries[0] if entries else None)
                said[name] = self.value(entry, read, f"X-Forwarded-{name.title()}")
        return Said(client=client, scheme=said.get("proto"), host=said.get("host"), port=said.get("port"))

    def client_index(self, entries: Sequence[str | None], read: Callable[[str], Node]) -> int | None:
        """The index of the client's entry: from the right, the first that is not a trusted
        proxy (an entry that is no address stops the walk too); None when there are none."""
        for index in range(len(entries) - 1, -1, -1):
            entry = entries[index]
            try:
                node = read(entry) if entry is not None else None
            except Unusable:
                return index
            if node is None or not self.trusts(node):
                return index
        return 0 if entries else None

    @staticmethod
    def node(entry: str | None, read: Callable[[str], Node]) -> Node:
        """The client's node, or None (with a debug line) when it is not a usable address."""
        if entry is None:
            return None
        try:
            node = read(entry)
        except Unusable as problem:
            log.debug("forwarded client ignored: %s", escape(str(problem)))
            return None
        return node

    @staticmethod
    def value(entry: str | None, read: Callable[[str], str], what: str) -> str | None:
        """``read(entry)``, or None (with a debug line) when absent or unusable."""
        if entry is None:
            return None
        try:
            text = read(entry)
        except Unusable as problem:
            log.debug("%s ignored: %s", what, escape(str(problem)))
            return None
        return text
