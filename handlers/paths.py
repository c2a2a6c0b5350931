"""Walking a directory root safely: the rules the static and the CGI handler share.

A request path is checked, then walked one name at a time below a root resolved once at
start-up; nothing is ever "cleaned" -- what could name something other than it seems is
refused (404), so a path either names exactly one thing inside the root or nothing::

    check()   NUL, "\\", "%2F" / "%5C" in the raw path, "." and ".." segments (also in the
              target as sent), hidden segments (".name") unless dotfiles -- except
              "/.well-known" at an origin's root
    entry()   one name whose parent is inside the root: one lstat; a symbolic link is resolved
              and must land inside the root unless follow_symlinks, and on no hidden name
              unless dotfiles (with follow_symlinks a link may lead anywhere)
    locate()  the whole walk for a path naming a file or directory; with follow_symlinks a
              single stat of the full path does it
    refusal() a failed stat or open: 403 when permission is denied, else 404
"""

from __future__ import annotations

import os
import stat
from urllib.parse import unquote

from porch.http.errors import Forbidden, HTTPError, NotFound
from porch.http.messages import Request

WELL_KNOWN = ".well-known"  # RFC 8615: public by definition, served even when dotfiles is false


class Root:
    """A directory whose names are served (or run) only while they stay inside it."""

    def __init__(
        self, directory: str | os.PathLike[str], *, follow_symlinks: bool, dotfiles: bool, well_known: bool
    ) -> None:
        """``well_known``: "/.well-known" is public; true only where the mount is the origin's root."""
        self.directory = os.path.realpath(directory)  # once, so every walk compares strings only
        self.prefix = self.directory.rstrip("/") + "/"
        self.follow_symlinks = follow_symlinks
        self.dotfiles = dotfiles
        self.well_known = well_known

    def check(self, request: Request, path_info: str, *, whole_path: bool = True) -> None:
        """404 for a request path that could name something other than it seems.

        ``path_info`` is the decoded path below the mount.  ``whole_path``: every segment names
        something on disk (static files); a CGI mount passes False, as the segments after the
        script are its PATH_INFO, and asks ``hidden()`` about each name it walks instead.
        """
        if path_info and path_info[0] != "/":
            raise NotFound()
        if "\x00" in path_info or "\\" in path_info:
            raise NotFound()
        raw_path = request.raw_path
        if "%" in raw_path:
            lowered = raw_path.lower()
            # RFC 3875 4.1.5: a decoded "%2F" loses the information of which "/" is a separator;
            # an encoded separator is never part of a name.
            if "%2f" in lowered or "%5c" in lowered:
                raise NotFound()
        if "/." in path_info:  # only then can a segment be ".", ".." or hidden
            for position, segment in enumerate(path_info.split("/")[1:]):
                if segment == "." or segment == "..":
                    raise NotFound()
                if whole_path and self.hidden(segment, position):
                    raise NotFound()
        target = request.target
        if "/." in target or "/%2" in target:  # only then can a segment sent be "." or ".."
            check_target(target)  # RFC 3986 5.2.4: the parser may have resolved it already

    def hidden(self, segment: str, position: int) -> bool:
        """Whether path segment number ``position`` (0: first below the mount) must stay unseen."""
        if not segment.startswith(".") or self.dotfiles:
            return False
        return not (position == 0 and segment == WELL_KNOWN and self.well_known)

    def locate(self, path_info: str) -> tuple[str, os.stat_result]:
        """The filesystem path (no trailing slash) and stat of a checked ``path_info``.

        Raises OSError or ValueError (see ``refusal``), or NotFound for a link that breaks a rule.
        """
        relative = path_info.lstrip("/")
        if self.follow_symlinks or not relative:
            full = self.prefix + relative
            return full.rstrip("/") or "/", os.stat(full)
        base, path, info = self.prefix, self.directory, None
        for part in relative.split("/"):
            if part:
                path, info = self.entry(base + part)
                base = path.rstrip("/") + "/"
        if info is None:
            info = os.stat(self.directory)
        return path, info

    def entry(self, candidate: str) -> tuple[str, os.stat_result]:
        """One step of a walk: the path and stat of ``candidate``, whose parent is inside the root.

        The path is ``candidate`` itself, or for a symbolic link the file it resolves to -- which
        must be inside the root unless follow_symlinks, and not hidden unless dotfiles: a link
        must not reveal what its own name would not.  The common case costs one lstat.
        """
        info = os.lstat(candidate)
        if not stat.S_ISLNK(info.st_mode):
            return candidate, info
        real = os.path.realpath(candidate)
        if not self.follow_symlinks:
            if not (real + "/").startswith(self.prefix):
                raise NotFound()
            if not self.dotfiles and "/." in real[len(self.prefix) - 1 :]:
                raise NotFound()
        return real, os.stat(real)


def check_target(target: str) -> None:
    """404 for a dot-segment in the request-target as sent, even if the parser resolved it.

    RFC 3986 5.2.4 lets a parser turn "/a/../b" into "/b"; a server that refuses rather than
    cleans must look at what the client actually sent.
    """
    path = target.partition("?")[0]
    if not path.startswith("/"):  # absolute-form: drop "scheme://authority"
        path = "/" + path.partition("//")[2].partition("/")[2]
    for segment in path.split("/"):
        if segment in (".", "..") or ("%" in segment and unquote(segment) in (".", "..")):
            raise NotFound()


def refusal(error: OSError | ValueError) -> HTTPError:
    """The answer for a failed stat or open: 403 when permission is denied, else 404.

    ValueError is what os functions raise for a name they cannot pass to the system at all.
    """
    if isinstance(error, PermissionError):
        return Forbidden("permission denied")
    return NotFound()
