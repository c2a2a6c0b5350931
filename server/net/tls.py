"""TLS for HTTPS listeners: one ``ssl.SSLContext`` per listener, built when it is bound.

How this works: ``server_context(settings)`` loads the certificate chain and key once, in the
process that binds (before privileges are dropped, so a key readable only by root works), and
sets the protocol floor, ALPN and client-certificate checking.  Workers inherit the context with
the listening socket when they fork, so every worker shares the same session-ticket keys and a
client resumes its session whichever worker it reaches.

Accepted connections are wrapped with ``do_handshake_on_connect=False``: the handshake is never
done by the acceptor in one blocking call.  ``porch.net.connection.Connection`` drives it step
by step on a non-blocking socket, as data arrives (``Connection.fill``), under the header timeout.
"""

from __future__ import annotations

import errno
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from porch.config.settings import TLSSettings

ALPN_PROTOCOLS = ["http/1.1"]  # RFC 7301: the only protocol porch speaks
MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
VERIFY_MODES = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL}


class TLSSetupError(ValueError):
    """The certificate, key or CA file cannot be used; the message says which and why."""


def server_context(settings: TLSSettings) -> ssl.SSLContext:
    """A server context for ``settings``; TLSSetupError names the file that is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[settings.min_version]
    # Client-initiated renegotiation costs the server a handshake for every request the client
    # makes it do, and HTTP/1.1 over TLS never needs it.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    try:
        texts = [Path(path).read_bytes() for path in (settings.cert, settings.key)]
    except OSError as error:
        raise TLSSetupError(f"cannot read {error.filename}: {error.strerror}") from error
    try:
        context.load_cert_chain(settings.cert, settings.key, password=_no_passphrase)
    except _Passphrase:
        raise TLSSetupError(f"the key {settings.key} is encrypted; porch needs it without a passphrase") from None
    except ssl.SSLError as error:
        raise TLSSetupError(_chain_problem(settings, error, *texts)) from error
    if settings.ca is not None:
        try:
            context.load_verify_locations(cafile=settings.ca)
        except (ssl.SSLError, OSError) as error:
            reason = getattr(error, "reason", None) or error.strerror or str(error)
            raise TLSSetupError(f"cannot use the CA file {settings.ca}: {reason}") from error
        context.verify_mode = VERIFY_MODES[settings.verify_client]
    return context


def failure_reason(error: OSError) -> str:
    """A short reason for a failed handshake, for the error log."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    return error.strerror or errno.errorcode.get(error.errno or 0, "") or str(error) or type(error).__name__


class _Passphrase(Exception):
    """Raised by the password callback: the key is encrypted."""


def _no_passphrase() -> str:
    """Without a callback OpenSSL would ask for the passphrase on the terminal and hang a daemon."""
    raise _Passphrase()


def _chain_problem(settings: TLSSettings, error: ssl.SSLError, cert: bytes, key: bytes) -> str:
    """Which of the two files is wrong: OpenSSL's reason alone ("PEM lib") does not say."""
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        return f"{settings.cert} holds no PEM certificate"
    if b"PRIVATE KEY-----" not in key:
        return f"{settings.key} holds no PEM private key"
    if "KEY_VALUES_MISMATCH" in (error.reason or ""):
        return f"the key {settings.key} does not belong to the certificate {settings.cert}"
    return f"cannot use {settings.cert} with {settings.key}: {error.reason or error}"
