"""The ``cgi`` handler: CGI/1.1 scripts (RFC 3875), run with ``subprocess`` and never a shell.

How this works::

    handle(request)
      ├─ resolve()       which file is the script; the SCRIPT_NAME / PATH_INFO split
      │                  (404 missing, 403 not runnable; in a mixed tree, other files → static)
      ├─ command()       argv = [interpreter..., script] or [script]; never the query string
      ├─ script_input()  stdin: nothing | the body through a pipe | a de-chunked body in a temp file
      ├─ environment()   the RFC 3875 meta-variables over a clean base (PATH, env, pass_env)
      ├─ ScriptRun       (cgi_process) own process group, stdin feeder, stderr → error log
      └─ respond()       header block (cgi_output), plus whatever output is ready at once, then
            document        → Response(status, fields, body=ScriptOutput streaming stdout), or
                              body=bytes when the output had ended (< 64 KiB; the run is over)
            local redirect  → raise InternalRedirect: the pipeline serves that path (6.2.2)
            client redirect → 302 with Location (6.2.3)
            nph-* script    → its own status line and fields, body sent the same ways

A mount is one of three shapes: ``root`` (every file below it is a script), ``root`` plus
``extensions`` (a static tree in which files with those extensions run as CGI, like Apache's
``AddHandler cgi-script``), or ``script`` (one program; everything below the mount prefix is its
PATH_INFO -- how ``git-http-backend`` is deployed).  The response head goes out as soon as the
script's header block is parsed; the body streams while the script runs -- unless the whole
output was already there with the head: then the script is reaped and its place given back first,
and head and body go out in one write with a Content-Length.  Whatever ends a streamed response
-- its end, a timeout, the client leaving -- ``ScriptOutput.close()`` ends the script's whole
process group and reaps it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from porch.config.settings import Mount
from porch.handlers.base import Handler, HandlerContext, OptionError
from porch.handlers.cgi.options import CGIOptions
from porch.handlers.cgi.output import (
    HeaderBlockReader,
    MalformedOutput,
    ResponseKind,
    parse_cgi_head,
    parse_nph_head,
)
from porch.handlers.cgi.process import (
    BLOCK_BYTES,
    ResourceLimits,
    ScriptInput,
    ScriptOutput,
    ScriptRun,
    Slot,
    SlotPool,
    describe_exit,
)
from porch.handlers.paths import Root, refusal
from porch.http.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    HTTPError,
    InternalRedirect,
    InternalServerError,
    NotFound,
    ServiceUnavailable,
)
from porch.http.grammar import http_variable
from porch.http.messages import Headers, Request, Response, client_host

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1  # told to clients turned away because max_concurrent scripts are running
# Output this short that is complete once the header block is parsed is answered whole, with a
# Content-Length; anything longer, or still being written, streams.
WHOLE_BODY_BYTES = 65536
# The names the server sets for every request (RFC 3875 section 4.1 plus the customary ones);
# ``env`` and ``pass_env`` may not shadow them.
META_VARIABLES = frozenset(
    {
        "AUTH_TYPE",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "GATEWAY_INTERFACE",
        "PATH_INFO",
        "PATH_TRANSLATED",
        "QUERY_STRING",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_IDENT",
        "REMOTE_USER",
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
        "REQUEST_URI",
        "REQUEST_ID",
        "SCRIPT_FILENAME",
        "DOCUMENT_ROOT",
        "REMOTE_PORT",
        "HTTPS",
    }
)
# Request fields never turned into HTTP_* variables: given as CONTENT_* already (RFC 3875
# 4.1.18), ``Proxy`` (httpoxy: HTTP_PROXY is read as a proxy setting by many libraries), and
# Transfer-Encoding (the script always receives the decoded body, RFC 3875 4.2).
UNPASSED_FIELDS = frozenset({"content-length", "content-type", "proxy", "transfer-encoding"})
# Why a script answers 403, and what fixes it: for `porch check` and the error log.
NOT_EXECUTABLE_FIX = (
    "not executable, so requests for it get 403: run `chmod +x` on it (or set an interpreter for its extension)"
)
CREDENTIAL_FIELDS = frozenset({"authorization", "proxy-authorization"})  # only with pass_auth
VARIABLE_SAFE_NAME = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class ScriptTarget:
    """A resolved request: the script file and how the URL path splits around it."""

    path: Path
    script_name: str  # SCRIPT_NAME: the mount prefix plus the segments naming the script
    path_info: str  # PATH_INFO: "" or "/..." (RFC 3875 4.1.5)

    @property
    def nph(self) -> bool:
        """RFC 3875 5.1: NPH scripts are identified by name, by the customary ``nph-`` prefix."""
        return self.path.name.startswith("nph-")


def normalise_extension(extension: str, key: str) -> str:
    """``py``, ``.py`` and ``.PY`` all mean ``.py``."""
    text = extension.strip().lower()
    text = text if text.startswith(".") else "." + text
    if text == "." or "/" in text:
        raise OptionError(key, f"invalid file extension {extension!r}")
    return text


def wire_text(value: str) -> str:
    """A latin-1 decoded header value as the str that os.fsencode turns back into its bytes.

    Header values are decoded byte for byte (latin-1); environment values are encoded with the
    file-system encoding, so non-ASCII bytes would otherwise reach the script changed.
    """
    if value.isascii():
        return value
    try:
        return os.fsdecode(value.encode("latin-1"))
    except UnicodeEncodeError:
        return value


class CGIHandler(Handler):
    """Runs CGI scripts for one mount."""

    Options = CGIOptions

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, context)
        options: CGIOptions = self.options
        if (options.root is None) == (options.script is None):
            raise OptionError("root", "give exactly one of root (a directory of scripts) or script (one program)")
        if options.extensions and options.root is None:
            raise OptionError("extensions", "only applies to a root directory, not to a single script")
        self.base_env = self._base_environment(options)
        self.interpreters = self._interpreters(options)
        self.cgi_extensions: tuple[str, ...] = ()
        if options.extensions:
            # Extensions with an interpreter run too: serving them static would show their source.
            names = {normalise_extension(e, "extensions") for e in options.extensions} | set(self.interpreters)
            self.cgi_extensions = tuple(sorted(names, key=len, reverse=True))
        self.root: Root | None = None
        self.script: Path | None = None
        if options.root is not None:
            if not Path(options.root).is_dir():
                raise OptionError("root", f"directory '{options.root}' does not exist")
            # Hidden names are never scripts, nor served as a mixed tree's static files: no
            # dotfiles, and no /.well-known exception.
            self.root = Root(options.root, follow_symlinks=options.follow_symlinks, dotfiles=False, well_known=False)
            default_root = Path(self.root.directory)
        else:
            assert options.script is not None
            self.script = self._single_script(Path(options.script))
            default_root = self.script.parent
        self.document_root = Path(options.document_root).resolve() if options.document_root else default_root
        self.preexec = ResourceLimits(options.cpu_seconds, options.address_space, options.open_files).preexec()
        self.static: Handler | None = self._static_handler() if self.cgi_extensions else None
        self.slots = SlotPool(options.max_concurrent) if options.max_concurrent else None
        self._runs: set[ScriptRun] = set()
        self._runs_lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def _base_environment(options: CGIOptions) -> dict[str, str]:
        """PATH, the passed-through variables and ``env``: never the daemon's whole environment."""
        for key, names in (("env", list(options.env)), ("pass_env", list(options.pass_env))):
            for name in names:
                if not name or "=" in name or "\x00" in name:
                    raise OptionError(key, f"invalid variable name {name!r}")
                if name.upper() in META_VARIABLES or name.upper().startswith("HTTP_"):
                    raise OptionError(key, f"{name} is set by the server for every request")
        for name, value in options.env.items():
            if "\x00" in value:
                raise OptionError("env", f"{name}: NUL in value")
        env = {"PATH": os.environ.get("PATH", os.defpath)}
        env.update({name: os.environ[name] for name in options.pass_env if name in os.environ})
        env.update(options.env)
        return env

    def _interpreters(self, options: CGIOptions) -> dict[str, list[str]]:
        """Extension → argv prefix, programs looked up now on the scripts' PATH."""
        found: dict[str, list[str]] = {}
        for extension, command in options.interpreters.items():
            try:
                words = shlex.split(command)  # split like a shell would; none ever runs it
            except ValueError as error:
                raise OptionError("interpreters", f"{extension}: {error}") from None
            if not words:
                raise OptionError("interpreters", f"{extension}: empty command")
            program = shutil.which(words[0], path=self.base_env["PATH"])
            if program is None:
                raise OptionError("interpreters", f"{extension}: program {words[0]!r} not found")
            found[normalise_extension(extension, "interpreters")] = [program, *words[1:]]
        return dict(sorted(found.items(), key=lambda item: len(item[0]), reverse=True))

    def _single_script(self, script: Path) -> Path:
        if not script.is_file():
            raise OptionError("script", f"file '{script}' does not exist")
        script = Path(os.path.abspath(script))  # the configured name counts (nph-), not a link's target
        if self._interpreter_for(script.name) is None and not os.access(script, os.X_OK):
            raise OptionError("script", f"'{script}' is not executable and no interpreter is set for it")
        return script

    def _static_handler(self) -> Handler:
        """The static handler serving the non-script files of a mixed tree."""
        try:
            from porch.handlers.static.handler import StaticHandler
        except ImportError as error:
            raise OptionError("extensions", f"needs the static handler: {error}") from error
        assert self.root is not None
        options = StaticHandler.Options(root=Path(self.root.directory), follow_symlinks=self.options.follow_symlinks)
        return StaticHandler(dataclasses.replace(self.mount, options=options), self.context)

    def warnings(self) -> list[str]:
        """Every script under ``root`` that would answer 403 because it cannot be executed."""
        if self.root is None:
            return []
        found = []
        for directory, subdirectories, files in os.walk(self.root.directory):
            subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
            for name in sorted(files):
                path = Path(directory) / name
                if (
                    name.startswith(".")
                    or (self.cgi_extensions and not self.is_script_name(name))
                    or self._interpreter_for(name) is not None
                    or not path.is_file()
                    or os.access(path, os.X_OK)
                ):
                    continue
                found.append(f"{path}: {NOT_EXECUTABLE_FIX}")
        return found

    def close(self) -> None:
        """Stop every script still running (server shutdown) and close the slot files."""
        with self._runs_lock:
            runs = list(self._runs)
        for run in runs:
            run.stop()
        if self.slots is not None:
            self.slots.close()
        if self.static is not None:
            self.static.close()

    # -- resolving the script -----------------------------------------------------------------

    def _interpreter_for(self, name: str) -> list[str] | None:
        lower = name.lower()
        for extension in self.interpreters:  # longest first: ".tar.py" before ".py"
            if lower.endswith(extension):
                return self.interpreters[extension]
        return None

    def is_script_name(self, name: str) -> bool:
        """In a mixed tree: whether a file of this name runs as CGI."""
        lower = name.lower()
        return any(lower.endswith(extension) for extension in self.cgi_extensions)

    def resolve(self, request: Request) -> ScriptTarget | None:
        """The script and the SCRIPT_NAME / PATH_INFO split; None: a static file of a mixed tree.

        The first path segment that names a regular file is the script, the rest is PATH_INFO
        (RFC 3875 3.2).  The traversal rules are the static handler's (``porch.handlers.paths``):
        "\\", NUL, encoded separators (RFC 3875 4.1.5) and dot-segments, also in the target as
        sent (RFC 3986 5.2.4), are 404 anywhere in the path; hidden names are 404 up to the
        script (what follows is the script's PATH_INFO, not names on disk); a symbolic link must
        resolve inside the root, onto no hidden name, unless ``follow_symlinks``.
        """
        prefix = self.mount.path.rstrip("/")
        path_info = self.path_info(request)
        if self.script is not None:
            if path_info and not path_info.startswith("/"):
                raise NotFound()
            return ScriptTarget(self.script, prefix, path_info)
        root = self.root
        assert root is not None
        root.check(request, path_info, whole_path=False)
        segments = path_info.split("/")[1:] if path_info else []
        base = root.prefix
        for index, segment in enumerate(segments):
            if not segment:
                continue
            if root.hidden(segment, index):
                raise NotFound()
            candidate = base + segment  # the name as asked for: nph- and interpreters go by it
            try:
                path, info = root.entry(candidate)  # path: where a symbolic link leads
            except (OSError, ValueError) as error:  # missing, not a directory, ENAMETOOLONG, ELOOP
                raise refusal(error) from None
            if stat.S_ISDIR(info.st_mode):
                base = path.rstrip("/") + "/"
                continue
            if self.static is not None and not self.is_script_name(segment):
                if path != candidate and self.is_script_name(path):  # a link to a script
                    raise Forbidden("this name leads to a script")  # never serve a script's source
                return None
            if not stat.S_ISREG(info.st_mode):
                raise Forbidden("not a regular file")
            rest = segments[index + 1 :]
            return ScriptTarget(
                path=Path(candidate),
                script_name=prefix + "/" + "/".join(segments[: index + 1]),
                path_info="/" + "/".join(rest) if rest else "",
            )
        if self.static is not None:
            return None
        raise Forbidden("directory listing is not allowed here")

    def command(self, script: Path) -> list[str]:
        """The argv that runs ``script``; 403 when it is neither executable nor interpreted."""
        interpreter = self._interpreter_for(script.name)
        if interpreter is not None:
            return [*interpreter, str(script)]
        if not os.access(script, os.X_OK):
            log.error("%s: %s", script, NOT_EXECUTABLE_FIX)
            raise Forbidden("this script is not executable")
        return [str(script)]

    # -- the CGI request ----------------------------------------------------------------------

    def script_input(self, request: Request) -> ScriptInput:
        """What the script gets on stdin, and CONTENT_LENGTH.

        RFC 3875 4.2: the server MUST remove transfer-codings and recalculate CONTENT_LENGTH, so a
        chunked body is de-chunked into an unlinked temporary file (on disk, never all in memory;
        the body limit bounds it) that becomes stdin.  A Content-Length body streams through a
        pipe; its first block is read here, before the script starts, so that a ``100 Continue``
        goes out before any byte of the response.
        """
        body = request.body
        if "transfer-encoding" in request.headers:
            spool = tempfile.TemporaryFile()
            try:
                size = 0
                while chunk := body.read(BLOCK_BYTES):
                    spool.write(chunk)
                    size += len(chunk)
                spool.seek(0)
            except BaseException:
                spool.close()
                raise
            return ScriptInput(file=spool, content_length=size)
        if "content-length" not in request.headers or body.length is None:
            return ScriptInput()
        if body.length == 0:
            return ScriptInput(content_length=0)
        first = body.read(min(body.length, BLOCK_BYTES))
        return ScriptInput(body=body, first=first, content_length=body.length)

    def environment(self, request: Request, target: ScriptTarget, content_length: int | None) -> dict[str, str]:
        """The script's environment: the clean base, then the RFC 3875 section 4.1 variables."""
        env = dict(self.base_env)
        if isinstance(request.server, tuple):
            port = str(request.server[1])
        else:  # a Unix socket: the port the client asked for
            host_field = request.headers.get("host") or ""
            tail = host_field.rpartition("]")[2]
            port = tail.rpartition(":")[2] if ":" in tail else ("443" if request.scheme == "https" else "80")
        remote = client_host(request.client)
        target_uri = (
            request.target
            if request.target.startswith("/")
            else (request.raw_path + (f"?{request.query}" if request.query else ""))
        )
        env.update(
            {
                "GATEWAY_INTERFACE": "CGI/1.1",  # 4.1.4
                "SERVER_SOFTWARE": self.context.software,  # 4.1.17
                "SERVER_NAME": request.host,  # 4.1.14: from Host, as virtual hosts need
                "SERVER_PORT": port,  # 4.1.15
                "SERVER_PROTOCOL": request.version,  # 4.1.16
                "REQUEST_METHOD": request.method,  # 4.1.12
                "QUERY_STRING": wire_text(request.query),  # 4.1.7: always set, still URL-encoded
                "SCRIPT_NAME": target.script_name,  # 4.1.13: not URL-encoded
                "PATH_INFO": target.path_info,  # 4.1.5: not URL-encoded
                "REMOTE_ADDR": remote,  # 4.1.8
                "REMOTE_HOST": remote,  # 4.1.9: the address stands in for a name (no DNS lookups)
                "REQUEST_URI": wire_text(target_uri),
                "REQUEST_ID": wire_text(request.request_id),  # the id in porch's access and error logs
                "SCRIPT_FILENAME": str(target.path),
                "DOCUMENT_ROOT": str(self.document_root),
            }
        )
        if isinstance(request.client, tuple):
            env["REMOTE_PORT"] = str(request.client[1])
        if target.path_info:  # 4.1.6: PATH_INFO mapped onto the document tree; unset without it
            env["PATH_TRANSLATED"] = str(self.document_root) + target.path_info
        if content_length is not None:  # 4.1.2: set if and only if there is a body
            env["CONTENT_LENGTH"] = str(content_length)
        content_type = request.headers.get("content-type")
        if content_type is not None:  # 4.1.3
            env["CONTENT_TYPE"] = wire_text(content_type)
        authorization = request.headers.get("authorization")
        if request.user is not None:  # 4.1.1, 4.1.11: the mount's auth checked the credentials
            env["AUTH_TYPE"] = "Basic"
            env["REMOTE_USER"] = request.user
            if authorization:  # still there: the mount's auth.pass_credentials asks to pass it on
                env["HTTP_AUTHORIZATION"] = wire_text(authorization)
        elif authorization:  # 4.1.1: the auth-scheme token only, never the credentials
            env["AUTH_TYPE"] = authorization.split(None, 1)[0]
        if request.scheme == "https":
            env["HTTPS"] = "on"
        env.update(self.header_variables(request.headers))
        if any("\x00" in value for value in env.values()):
            raise BadRequest("NUL in a value passed to the script")
        return env

    def header_variables(self, headers: Headers) -> dict[str, str]:
        """``HTTP_*`` variables from request fields (RFC 3875 4.1.18).

        Fields whose names contain "_" (or anything but letters, digits and "-") are dropped, so
        ``X_Forwarded_For`` can never pose as ``X-Forwarded-For``; repeated fields are joined
        into one value (", ", or "; " for cookies).
        """
        variables: dict[str, str] = {}
        seen: set[str] = set()
        for name, _ in headers:
            lower = name.lower()
            if lower in seen:
                continue
            seen.add(lower)
            if lower in UNPASSED_FIELDS or (lower in CREDENTIAL_FIELDS and not self.options.pass_auth):
                continue
            if not VARIABLE_SAFE_NAME.issuperset(name):
                continue
            value = headers.joined(name) or ""
            variables[http_variable(lower)] = wire_text(value)
        return variables

    # -- running it ---------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        target = self.resolve(request)
        if target is None:
            assert self.static is not None
            return self.static.handle(request)
        argv = self.command(target.path)
        slot = self._take_slot()
        try:
            stdin = self.script_input(request)
            try:
                env = self.environment(request, target, stdin.content_length)
                run = self._start(argv, target, env, stdin, request)
            finally:
                stdin.close()  # a spooled body: the child holds its own descriptor now
        except BaseException:
            slot.release()
            raise
        try:
            return self.respond(target, run, slot)
        except BaseException:
            self._end(run, slot)
            raise

    def _take_slot(self) -> Slot:
        if self.slots is None:
            return Slot(None)
        slot = self.slots.acquire()
        if slot is None:
            raise ServiceUnavailable(
                "too many scripts running; try again shortly", headers=[("Retry-After", str(RETRY_AFTER_SECONDS))]
            )
        return slot

    def _start(
        self, argv: list[str], target: ScriptTarget, env: dict[str, str], stdin: ScriptInput, request: Request
    ) -> ScriptRun:
        try:
            run = ScriptRun(
                argv,
                cwd=os.path.dirname(target.path),  # no Path made (and str()-ed) for it
                env=env,
                stdin=stdin,
                timeout=self.options.timeout,
                tag=str(target.path),
                preexec=self.preexec,
                client_gone=request.client_gone,
                before_wait=request.before_wait,
            )
        except (OSError, subprocess.SubprocessError) as error:
            log.error("%s: cannot run: %s", target.path, error)
            if isinstance(error, PermissionError):
                raise Forbidden("this script cannot be run") from None
            raise InternalServerError() from None
        with self._runs_lock:
            self._runs.add(run)
        self.context.metrics.add("cgi_started")
        self.context.metrics.add("cgi_running")
        return run

    def _end(self, run: ScriptRun, slot: Slot) -> None:
        """Release a run: its process group ended and reaped, its place given back."""
        try:
            run.close()
        finally:
            self._release(run, slot)

    def _release(self, run: ScriptRun, slot: Slot) -> None:
        """Give a closed run's place back and count how it ended (once, whichever path comes first)."""
        slot.release()
        with self._runs_lock:
            if run not in self._runs:
                return
            self._runs.discard(run)
        metrics = self.context.metrics
        metrics.add("cgi_running", -1)
        if run.timed_out:
            metrics.add("cgi_timed_out")
        if run.killed:
            metrics.add("cgi_killed")

    def respond(self, target: ScriptTarget, run: ScriptRun, slot: Slot) -> Response:
        """Read the header block and answer as RFC 3875 section 6.2 (or 5 for NPH) says."""
        reader = HeaderBlockReader(self.options.max_header_bytes)
        try:
            while True:
                data = run.read()
                if not data:
                    raise self._ended_early(run, reader.received)
                parsed = reader.feed(data)
                if parsed is not None:
                    break
            block, rest = parsed
            head = parse_nph_head(block) if target.nph else parse_cgi_head(block)
        except MalformedOutput as problem:
            log.error("%s: malformed CGI response: %s", run.tag, problem)
            raise BadGateway() from None
        more, ended = run.read_available(WHOLE_BODY_BYTES - len(rest))
        rest += more
        if not target.nph and head.kind() is ResponseKind.LOCAL_REDIRECT:
            if not rest and not ended:
                rest = run.read()
            if not rest:  # 6.2.2: Location alone and no body: serve that local path instead
                run.conclude()
                raise InternalRedirect(head.location or "/")  # handle() releases the run
            # A body after a local Location is not a local redirect; the client gets the 302.
        if ended and not run.feeding and head.length_matches(len(rest)):
            # The whole output is here: bytes go out with the head in one write, with a
            # Content-Length (so no chunking), and a bytes body has no close() to end the run.
            run.conclude()
            self._end(run, slot)
            return Response(head.response_status(), Headers(head.fields), rest, reason=head.reason)
        body = ScriptOutput(run, rest, lambda: self._release(run, slot))
        return Response(head.response_status(), Headers(head.fields), body, reason=head.reason)

    def _ended_early(self, run: ScriptRun, received: int) -> HTTPError:
        """The output ended inside the header block: 500 if the script failed, else 502."""
        status = run.finish()
        what = "no output" if received == 0 else f"{received} bytes of an unfinished header block"
        if status != 0:
            log.error("%s: %s after %s", run.tag, describe_exit(status), what)
            return InternalServerError()
        log.error("%s: exited after %s (RFC 3875 6.1 requires a header block)", run.tag, what)
        return BadGateway()
