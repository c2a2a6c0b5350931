"""HTTP Basic authentication of a mount (RFC 7617) against an Apache htpasswd file.

``BasicAuth`` is a gate (``porch.spine.dispatch.Gate``): a request without valid credentials is
answered ``401`` with the mount's challenge; an authenticated one goes on with ``Request.user``
set (REMOTE_USER for CGI and WSGI) and, unless ``pass_credentials``, without its Authorization
header, so the password reaches no application that does not ask for it.

Refusals are logged at info level with the user name tried and the client -- what fail2ban
needs -- and never the password.  The file is re-read when it changes (checked at most once a
second, from whichever pool thread serves a request then), so ``htpasswd`` edits apply without a
reload; a file that became unreadable or invalid keeps the last good users, and the error log
says so once.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, replace

from porch.config.htpasswd import Htpasswd, HtpasswdError, dummy_entry, read
from porch.config.settings import AuthSettings
from porch.http.errors import Unauthorized
from porch.http.grammar import TEXT_FORBIDDEN
from porch.http.messages import Headers, Request, client_host, escape

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0  # how often the file's identity is looked at (one stat)
# RFC 7617 section 2: "Basic" (any case), one or more spaces, then token68 -- for Basic, base64
# with its padding.
BASIC_CREDENTIALS = re.compile(r"[Bb][Aa][Ss][Ii][Cc] +([A-Za-z0-9+/]+=*)")
CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # RFC 7617 section 2: never in a user-id or password
NO_USERS = Htpasswd({}, dummy_entry({}))

Signature = tuple[int, int, int, int]  # device, inode, size, mtime (ns): "the same file, unchanged"


@dataclass(frozen=True, slots=True)
class Users:
    """The table in use and what it was read from; replaced whole, so readers need no lock."""

    table: Htpasswd
    signature: Signature | None  # None: the last look at the file failed
    checked: float  # monotonic time of that look
    failure: str | None = None  # the last error logged, so it is logged once


def file_signature(path: os.PathLike[str]) -> Signature:
    status = os.stat(path)
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def quoted_string(text: str) -> str:
    """``text`` as an RFC 9110 quoted-string; control characters, which it cannot carry, dropped."""
    kept = TEXT_FORBIDDEN.sub("", text)
    return '"' + kept.replace("\\", "\\\\").replace('"', '\\"') + '"'


def basic_credentials(headers: Headers) -> tuple[str, bytes] | None:
    """The user-id and password of a Basic Authorization field; None if absent or malformed.

    Strict: one field, base64 with padding, a ":" after the user-id, UTF-8 user-ids (the
    challenge says charset="UTF-8") and no control characters in either part.
    """
    fields = headers.get_all("authorization")
    if len(fields) != 1 or (found := BASIC_CREDENTIALS.fullmatch(fields[0])) is None:
        return None
    try:
        decoded = base64.b64decode(found[1], validate=True)
    except binascii.Error:
        return None
    user_id, colon, password = decoded.partition(b":")
    if not colon or CONTROL.search(decoded):
        return None
    try:
        return user_id.decode(), password
    except UnicodeDecodeError:
        return None


class BasicAuth:
    """The gate of a mount with ``auth:``: Basic credentials checked against its htpasswd file."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.challenge = f'Basic realm={quoted_string(settings.realm)}, charset="UTF-8"'
        self.reloading = threading.Lock()  # one thread re-reads the file; the others use the old table
        self.users = Users(NO_USERS, None, time.monotonic())
        self.refresh(self.users.checked, force=True)

    def __call__(self, request: Request) -> Request:
        now = time.monotonic()
        if now - self.users.checked >= RECHECK_SECONDS:
            self.refresh(now)
        credentials = basic_credentials(request.headers)
        if credentials is None:
            if "authorization" in request.headers:
                log.info("credentials from %s are not valid Basic credentials", client_host(request.client))
            raise Unauthorized(self.challenge)
        user, password = credentials
        matched = self.users.table.check(user, password)
        if not matched:
            reason = "no such user" if matched is None else "wrong password"
            log.info(
                'authentication of user "%s" from %s failed: %s', escape(user), client_host(request.client), reason
            )
            raise Unauthorized(self.challenge)
        if self.settings.pass_credentials:
            return replace(request, user=user)
        headers = Headers(request.headers)
        headers.remove("authorization")
        return replace(request, user=user, headers=headers)

    def refresh(self, now: float, force: bool = False) -> None:
        """Re-read the file if it changed; keep the current users if it cannot be read."""
        if not self.reloading.acquire(blocking=False):
            return  # another thread is at it
        try:
            users = self.users
            if not force and now - users.checked < RECHECK_SECONDS:
                return  # another thread just did it
            path = self.settings.htpasswd
            try:
                signature = file_signature(path)
                if signature == users.signature:
                    self.users = replace(users, checked=now)
                    return
                table = read(path, allow_sha1=self.settings.allow_sha1)
            except (OSError, HtpasswdError) as error:
                failure = str(error) if isinstance(error, HtpasswdError) else f"cannot read it: {error.strerror}"
                if failure != users.failure:
                    kept = "refusing everyone" if users.table is NO_USERS else "keeping the users read before"
                    log.error("htpasswd file %s: %s; %s", path, failure, kept)
                self.users = Users(users.table, None, now, failure)
                return
            if users.signature is not None or users.failure is not None:
                log.info("htpasswd file %s re-read: %d users", path, len(table.entries))
            self.users = Users(table, signature, now)
        finally:
            self.reloading.release()
