"""The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): who the client is, said
by the proxy in a header before anything else on the connection -- before TLS and HTTP.

How this works::

    accepted socket on a listener with proxy_protocol (not wrapped in TLS yet)
      └─ Connection.fill() ──► ProxyPreface.step() each time the socket is readable:
             peek at what has arrived → parse(): None (need more) | ProxyHeader | ProxyProtocolError
             → only header bytes are taken off the socket: all that arrived while it is
               incomplete, exactly the rest once it is, so what follows (a TLS ClientHello, a
               request head) is still there for whoever reads next

``parse`` is sans-I/O: bytes in, an answer out.  Version 1 is a text line (``PROXY TCP4 src dst
sport dport\\r\\n``, at most 107 bytes; ``PROXY UNKNOWN ...`` names nobody); version 2 is binary:
a 12-byte signature, the version and command (``0x21`` PROXY, ``0x20`` LOCAL: the proxy's own
connection, a health check), the family and transport, a 2-byte length, the addresses, then TLVs,
which are walked with bounds checks and skipped.  A header that names nobody (LOCAL, UNKNOWN, the
UNSPEC family or transport, or a Unix-socket address: never an address of this network) leaves
the connection's peer as its client.  Anything else is an error: the connection closes without a
response, since nothing said on it can be trusted.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX_BYTES = 107  # "PROXY TCP6 " + two longest IPv6 addresses + two ports + spaces + CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_BYTES = 16  # signature, version/command, family/transport, length
MAX_HEADER_BYTES = V2_FIXED_BYTES + 0xFFFF
LOCAL, PROXY = 0x0, 0x1  # version 2 commands (the low nibble; the high one is the version, 2)
# version 2 family → (socket family, bytes of one address, bytes of the address block)
V2_FAMILIES = {0x1: (socket.AF_INET, 4, 12), 0x2: (socket.AF_INET6, 16, 36), 0x3: (socket.AF_UNIX, 0, 216)}
STREAM, UNSPEC = 0x1, 0x0  # version 2 transports; DGRAM (0x2) has no place before HTTP
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")  # decimal, no leading zeros
TLV_FIXED_BYTES = 3  # type, 2-byte length


class ProxyProtocolError(Exception):
    """The connection does not start with a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header: its length in bytes, and the client's and the proxy's addresses --
    None when the header names nobody (the connection's own peer is then the client)."""

    length: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None while more bytes are needed to tell."""
    if V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        return parse_v2(data) if len(data) >= V2_FIXED_BYTES else None
    if V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        return parse_v1(data) if len(data) > len(V1_PREFIX) else None
    raise ProxyProtocolError("not a PROXY protocol header")


def parse_v1(data: bytes) -> ProxyHeader | None:
    """``PROXY TCP4|TCP6 src dst sport dport\\r\\n`` or ``PROXY UNKNOWN[ anything]\\r\\n``."""
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES or b"\n" in data:
            raise ProxyProtocolError("version 1 header without CRLF within 107 bytes")
        return None
    fields = data[:end].split(b" ")
    length = end + 2
    if fields[1] == b"UNKNOWN":
        return ProxyHeader(length)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("version 1 header is not PROXY TCP4|TCP6 src dst sport dport")
    version = 4 if fields[1] == b"TCP4" else 6
    source, destination = (v1_address(fields[i], version) for i in (2, 3))
    source_port, destination_port = (v1_port(fields[i]) for i in (4, 5))
    return ProxyHeader(length, (source, source_port), (destination, destination_port))


def v1_address(field: bytes, version: int) -> str:
    try:
        text = field.decode("ascii")
        address = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyProtocolError(f"version 1 header: {field[:45]!r} is not an IPv{version} address") from None
    return str(address)


def v1_port(field: bytes) -> int:
    if not _V1_PORT.fullmatch(field) or int(field) > 0xFFFF:
        raise ProxyProtocolError(f"version 1 header: {field[:8]!r} is not a port")
    return int(field)


def parse_v2(data: bytes) -> ProxyHeader | None:
    """The binary header: fixed part, addresses by family, then TLVs up to the stated length."""
    version_command, family_transport, size = struct.unpack_from("!BBH", data, len(V2_SIGNATURE))
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"version 2 signature with version {version_command >> 4}")
    command = version_command & 0xF
    if command not in (LOCAL, PROXY):
        raise ProxyProtocolError(f"version 2 header with unknown command {command:#x}")
    length = V2_FIXED_BYTES + size
    if len(data) < length:
        return None
    if command == LOCAL:  # the proxy's own connection: the address block is to be discarded
        return ProxyHeader(length)
    family, transport = family_transport >> 4, family_transport & 0xF
    if family not in V2_FAMILIES and family != 0:
        raise ProxyProtocolError(f"version 2 header with unknown address family {family:#x}")
    if transport not in (STREAM, UNSPEC):
        raise ProxyProtocolError(f"version 2 header with transport {transport:#x}, not a stream")
    addresses = 0 if family == 0 else V2_FAMILIES[family][2]
    if size < addresses:
        raise ProxyProtocolError(f"version 2 header of {size} bytes is too short for its addresses")
    skip_tlvs(data, V2_FIXED_BYTES + addresses, length)
    if family in (0, 0x3) or transport == UNSPEC:
        return ProxyHeader(length)
    kind, width, _ = V2_FAMILIES[family]
    body = V2_FIXED_BYTES
    source = socket.inet_ntop(kind, data[body : body + width])
    destination = socket.inet_ntop(kind, data[body + width : body + 2 * width])
    source_port, destination_port = struct.unpack_from("!HH", data, body + 2 * width)
    return ProxyHeader(length, (source, source_port), (destination, destination_port))


def skip_tlvs(data: bytes, start: int, end: int) -> None:
    """Walk the TLVs between ``start`` and ``end``: each must fit whole (none is used)."""
    position = start
    while position < end:
        if end - position < TLV_FIXED_BYTES:
            raise ProxyProtocolError("version 2 header ends inside a TLV")
        (size,) = struct.unpack_from("!H", data, position + 1)
        position += TLV_FIXED_BYTES + size
        if position > end:
            raise ProxyProtocolError("version 2 TLV runs past the end of the header")


class PeerClosed(ProxyProtocolError):
    """The peer closed the connection before its PROXY header was complete."""


class ProxyPreface:
    """Reading the PROXY header off one accepted, non-blocking socket without taking a byte
    more: what follows may be TLS, wrapped afterwards.  Each step peeks at what has arrived and
    takes off the socket only bytes of the header -- all of them while it is incomplete, so a
    level-triggered wait never sees the same bytes again."""

    __slots__ = ("received", "sock", "tls")

    def __init__(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        self.sock = sock
        self.tls = tls  # what follows the header is TLS under this context (the listener's)
        self.received = b""  # the header's bytes taken so far

    def step(self) -> ProxyHeader | None:
        """The header once it has all arrived (and been taken off the socket), else None: wait
        for the socket to be readable again.  ProxyProtocolError when it is not one (PeerClosed
        when the peer closed first); OSError as the socket raises it."""
        try:
            data = self.sock.recv(MAX_HEADER_BYTES - len(self.received), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return None
        if not data:
            raise PeerClosed("the peer closed inside its PROXY header" if self.received else "the peer sent nothing")
        header = parse(self.received + data)
        wanted = len(data) if header is None else header.length - len(self.received)
        taken = self.sock.recv(wanted)
        if len(taken) != wanted:
            raise ProxyProtocolError("the PROXY header could not be taken off the socket")
        self.received += taken
        return header
