"""TLS for HTTPS listeners: one ``ssl.SSLContext`` per listener, built when it is bound.

How this works: ``server_context(settings)`` loads the certificate chain and key once, in the
process that binds (before privileges are dropped, so a key readable only by root works), and
sets the protocol floor, ALPN and client-certificate checking.  Workers inherit the context with
the listening socket when they fork, so every worker shares the same session-ticket keys and a
client resumes its session whichever worker it reaches.

Accepted connections are wrapped with ``do_handshake_on_connect=False``: the handshake is never
done by the acceptor in one blocking call.  ``porch.net.connection.Connection`` drives it step
by step on a non-blocking socket, as data arrives (``Connection.fill``), under the header timeout.

A listener with several certificates gets one context per certificate, all built alike; the
first is the listener's, and its ``sni_callback`` moves each connection to the context whose
certificate names the host the client asked for (SNI), before the certificate is sent.  The names
are the DNS entries of each certificate's subjectAltName, read from the certificate itself (a
few lines of DER below: the ``ssl`` module has no public way to decode a certificate it did not
receive from a peer); an exact name beats a wildcard, ``*.example.org`` covers one label (RFC
6125), and a client that sends no name or one no certificate has gets the first certificate.
"""

from __future__ import annotations

import base64
import errno
import re
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from porch.config.environment import CertificateProblem, load_certificate

if TYPE_CHECKING:
    from porch.config.settings import Certificate, TLSSettings

ALPN_PROTOCOLS = ["http/1.1"]  # RFC 7301: the only protocol porch speaks
MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
VERIFY_MODES = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL}
PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)
SUBJECT_ALT_NAME = b"\x55\x1d\x11"  # the OID 2.5.29.17, as DER writes it
EXTENSIONS, DNS_NAME = 0xA3, 0x82  # tbsCertificate's [3] extensions; GeneralName's [2] dNSName


class TLSSetupError(ValueError):
    """The certificate, key or CA file cannot be used; the message says which and why."""


def server_context(settings: TLSSettings) -> ssl.SSLContext:
    """A server context for ``settings``; TLSSetupError names the file that is wrong.

    With several certificates, the first one's context, choosing among all of them by SNI.
    """
    contexts = [_certificate_context(settings, certificate) for certificate in settings.pairs]
    if len(contexts) > 1:
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}  # by the name after "*."
        for index, (certificate, context) in enumerate(zip(settings.pairs, contexts, strict=True)):
            names = _names(certificate)
            if not names and index:
                message = (
                    f"{certificate.cert} names no DNS host in its subjectAltName, so no client would be sent it "
                    "(only the first certificate serves clients asking for a name no certificate has)"
                )
                raise TLSSetupError(_located(certificate, message))
            for name in names:  # a name in two certificates is the first one's
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], context)
                else:
                    exact.setdefault(name, context)
        contexts[0].sni_callback = _chooser(exact, wildcard)
    return contexts[0]


def _chooser(
    exact: dict[str, ssl.SSLContext], wildcard: dict[str, ssl.SSLContext]
) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]:
    """The SNI callback: the context of the certificate naming ``server_name``; no change (the default) otherwise."""

    def choose(connection: ssl.SSLObject, server_name: str | None, default: ssl.SSLContext) -> None:
        if server_name:
            name = server_name.lower().removesuffix(".")
            chosen = exact.get(name) or wildcard.get(name.partition(".")[2])
            if chosen is not None and chosen is not default:
                connection.context = chosen

    return choose


def _certificate_context(settings: TLSSettings, certificate: Certificate) -> ssl.SSLContext:
    """A context serving one certificate, with the listener's protocol and client-certificate choices."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[settings.min_version]
    # Client-initiated renegotiation costs the server a handshake for every request the client
    # makes it do, and HTTP/1.1 over TLS never needs it.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    try:
        load_certificate(context, certificate)
    except CertificateProblem as problem:
        raise TLSSetupError(_located(certificate, str(problem))) from problem
    if settings.ca is not None:
        try:
            context.load_verify_locations(cafile=settings.ca)
        except (ssl.SSLError, OSError) as error:
            reason = getattr(error, "reason", None) or error.strerror or str(error)
            raise TLSSetupError(f"cannot use the CA file {settings.ca}: {reason}") from error
        context.verify_mode = VERIFY_MODES[settings.verify_client]
    return context


def _located(certificate: Certificate, message: str) -> str:
    """``message`` preceded by where the certificate is configured, when the loader said."""
    return f"{certificate.location}: {message}" if certificate.location else message


def failure_reason(error: OSError) -> str:
    """A short reason for a failed handshake, for the error log."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    return error.strerror or errno.errorcode.get(error.errno or 0, "") or str(error) or type(error).__name__


def _names(certificate: Certificate) -> tuple[str, ...]:
    """The DNS names (lower-case) of the certificate's subjectAltName; called after OpenSSL loaded it."""
    found = PEM_CERTIFICATE.search(Path(certificate.cert).read_bytes())
    if found is None:  # load_cert_chain accepted the file, so it holds one
        raise TLSSetupError(_located(certificate, f"{certificate.cert} holds no PEM certificate"))
    try:
        return dns_names(base64.b64decode(found.group(1)))
    except (IndexError, ValueError) as error:
        raise TLSSetupError(_located(certificate, f"cannot read the names of {certificate.cert}: {error}")) from error


def dns_names(der: bytes) -> tuple[str, ...]:
    """The subjectAltName DNS names of a DER certificate (RFC 5280 section 4.2.1.6), lower-case.

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { ... [3] SEQUENCE OF Extension } ... };
    Extension ::= SEQUENCE { OID, critical BOOLEAN optional, OCTET STRING holding the value }.
    """
    _, start, end = _element(der, 0)
    _, start, end = _element(der, start)  # tbsCertificate
    for extensions in (field for field in _elements(der, start, end) if field[0] == EXTENSIONS):
        _, start, end = _element(der, extensions[1])  # the SEQUENCE OF Extension
        for _, ext_start, ext_end in _elements(der, start, end):
            parts = list(_elements(der, ext_start, ext_end))
            if der[parts[0][1] : parts[0][2]] != SUBJECT_ALT_NAME:
                continue
            _, start, end = _element(der, parts[-1][1])  # GeneralNames ::= SEQUENCE OF GeneralName
            return tuple(
                der[name_start:name_end].decode("ascii").lower()
                for tag, name_start, name_end in _elements(der, start, end)
                if tag == DNS_NAME
            )
    return ()


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at ``at``: its content is ``der[start:end]``."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[at : at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("a DER element runs past the end")
    return tag, at, at + length


def _elements(der: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The elements one after another in ``der[start:end]``."""
    while start < end:
        element = _element(der, start)
        yield element
        start = element[2]
