"""WSGI applications, exactly to PEP 3333.

How this works::

    WSGIHandler(mount)  import the app once (start-up, before sockets are bound): pythonpath,
                        chdir, "module:callable" or "module:factory()"; a failure is an
                        OptionError carrying the traceback, never a 500 per request
    handle(request)
      ├─ environ = the constant part (built once) + CGI keys, HTTP_* fields, wsgi.input
      │            (InputStream over request.body), wsgi.errors (ErrorStream → error log)
      ├─ result = app(environ, exchange.start_response)
      ├─ exchange.respond(result): pull chunks until start_response has been called AND there is
      │    a non-empty chunk or write() data, or the iterable is exhausted.  Only then are the
      │    status and headers fixed, so start_response(exc_info) may replace them until then.
      │    A failure up to here closes the iterable and propagates: the pipeline answers 500.
      └─ Response(status, headers, AppBody)  -- or a FileRegion when the app returned
                                               wsgi.file_wrapper over a regular file (sendfile)
    the connection iterates AppBody -- buffered write() data, the first chunk, then the rest of
    the iterable, write() data queued during iteration in between -- and ALWAYS calls its
    close(), which calls the iterable's close(): after success, an app error or a disconnect.

The connection does the framing: it truncates the body to the app's Content-Length and closes
the connection if the app sends fewer bytes, and uses chunked encoding on HTTP/1.1 when there is
no length.  When the whole body is known before the response starts (a list, or an exhausted
iterable) this module adds the Content-Length so the connection can be kept alive cheaply.

Data passed to ``write()`` before the application returns cannot be streamed (the response
only starts when ``handle`` returns); it is buffered, in memory up to ``WRITE_SPOOL_BYTES`` and
then in a temporary file, which PEP 3333 allows ("or buffered for transmission").
"""

from __future__ import annotations

import ast
import importlib
import logging
import os
import re
import stat
import sys
import tempfile
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from porch.config.settings import setting
from porch.handlers.base import Handler, HandlerContext, OptionError
from porch.handlers.user_code import extend_pythonpath, load_object, refuse_shadowing
from porch.http.errors import ClientDisconnected, HTTPError
from porch.http.grammar import BODILESS_STATUSES, HOP_BY_HOP, HTTP_VARIABLES, MAX_REMEMBERED_NAMES, TOKEN, http_variable
from porch.http.messages import Body, FileRegion, Headers, Request, Response, client_host

if TYPE_CHECKING:
    from porch.config.settings import Mount

log = logging.getLogger(__name__)

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

DEFAULT_CALLABLE = "application"  # "module" alone means "module:application" (mod_wsgi's name)
WRITE_SPOOL_BYTES = 1024 * 1024  # write() data kept in memory before it goes to a temp file
SPOOL_BLOCK_BYTES = 65536
FILE_BLOCK_BYTES = 65536  # default block size of wsgi.file_wrapper when iterated
TRACEBACK_LINES = 20  # how much of an import traceback a config error shows
ERROR_LINE_CHARS = 8192  # an unterminated wsgi.errors line longer than this is logged anyway
ERRORS_LOG_LEVEL = logging.ERROR
MACHINERY_DIRS = frozenset({Path(importlib.__file__).parent, Path(__file__).parent})

# RFC 9110 section 5.5: a field value is VCHAR / obs-text / SP / HTAB -- so no CR, LF or NUL --
# and PEP 3333 "native strings" hold only code points below 256.
FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# PEP 3333 "The start_response() Callable": a 3-digit code, ONE space, the reason phrase
# (RFC 9112 section 4: reason-phrase = *( HTAB / SP / VCHAR / obs-text )).
STATUS_LINE = re.compile(r"([1-5][0-9]{2}) ([\t\x20-\x7e\x80-\xff]*)")
# Request headers that never become HTTP_* keys: CONTENT_* carry the first two; "Proxy" would be
# HTTP_PROXY, which proxy-discovery code reads as a setting (httpoxy, CVE-2016-5385).
NOT_HTTP_VARIABLES = frozenset({"content-type", "content-length", "proxy"})
CONTROL_CHARACTERS = {i: f"\\x{i:02x}" for i in (*range(0x09), *range(0x0A, 0x20), 0x7F)}
# Statuses and header names an application sent before and that passed: apps reuse a handful,
# and remembering them saves a regex or two per header on every request.  Bounded, so an app
# that makes up names cannot grow them without end (past the bound, names are just checked).
_VALID_STATUSES: dict[str, tuple[int, str]] = {}
_VALID_NAMES: dict[str, str] = {}  # name -> its lower-case form


class ApplicationError(Exception):
    """The application broke PEP 3333 (bad status or header, start_response misuse, str body)."""


# ---------------------------------------------------------------------------------------------
# Loading the application


def parse_app_spec(spec: str) -> tuple[str, tuple[Any, ...], dict[str, Any]] | None:
    """Split ``module:name`` / ``module:factory(args)`` into the object path and the call's
    arguments; the arguments are Python literals only.  None: not a call."""
    if not spec.endswith(")"):
        return None
    name = spec.partition("(")[0]
    try:
        call = ast.parse(f"f{spec[len(name) :]}", mode="eval").body
        if not isinstance(call, ast.Call):
            raise ValueError("not a call")
        args = tuple(ast.literal_eval(arg) for arg in call.args)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
        if len(kwargs) != len(call.keywords):
            raise ValueError("**kwargs are not supported")
    except (SyntaxError, ValueError) as exc:
        raise OptionError("app", f"{spec!r}: factory arguments must be Python literals ({exc})") from None
    return name, args, kwargs


def import_tail(exc: BaseException) -> str:
    """``exc``'s traceback without the import machinery's frames or ours, the end kept: enough
    to find the failing line of the app, short enough to read in a config error."""
    summary = traceback.TracebackException.from_exception(exc)
    summary.stack = traceback.StackSummary.from_list(
        [frame for frame in summary.stack if not is_machinery(frame.filename)]
    )
    if not summary.stack and summary.__cause__ is None and summary.__context__ is None:
        return ""  # nothing beyond the message itself: "No module named 'x'"
    lines = "".join(summary.format()).rstrip("\n").splitlines()
    if len(lines) > TRACEBACK_LINES:
        lines = ["Traceback (most recent call last, shortened):", *lines[-TRACEBACK_LINES:]]
    return "\n".join(lines)


def is_machinery(filename: str) -> bool:
    return filename.startswith("<frozen importlib") or Path(filename).parent in MACHINERY_DIRS


def load_application(app: str, pythonpath: tuple[Path, ...], chdir: Path | None) -> WSGIApplication:
    """Import the WSGI callable named by ``app``; OptionError (with the traceback) if it fails."""
    extend_pythonpath(pythonpath)
    if chdir is not None:
        try:
            os.chdir(chdir)
        except OSError as exc:
            raise OptionError("chdir", f"cannot change to '{chdir}': {exc.strerror}") from None
    if ":" not in app:
        app = f"{app}:{DEFAULT_CALLABLE}"
    call = parse_app_spec(app)
    name = call[0] if call else app
    module_name = name.partition(":")[0].split(".")[0]
    before = sys.modules.get(module_name)
    try:
        target = load_object(name)
        if call is not None:
            if not callable(target):
                raise OptionError("app", f"{name!r} is not callable, so it cannot be a factory")
            target = target(*call[1], **call[2])
    except OptionError:
        raise
    except (Exception, SystemExit) as exc:
        where = f" (pythonpath: {', '.join(map(str, pythonpath))})" if pythonpath else ""
        tail = import_tail(exc)
        raise OptionError(
            "app", f"cannot load {app!r}{where}: {type(exc).__name__}: {exc}" + (f"\n{tail}" if tail else "")
        ) from None
    refuse_shadowing(module_name, pythonpath, before, "app")
    if not callable(target):
        raise OptionError("app", f"{app!r} is a {type(target).__name__}, not a WSGI callable")
    return target


# ---------------------------------------------------------------------------------------------
# The streams in the environ


class InputStream:
    """``wsgi.input`` (PEP 3333 "Input and Error Streams") over the request body.

    The body already stops at Content-Length or decodes chunked framing, enforces the body
    limit and triggers ``100 Continue`` on the first read; this adds the file-like surface.
    """

    __slots__ = ("_body",)

    def __init__(self, body: Body) -> None:
        self._body = body

    def read(self, size: int | None = -1) -> bytes:
        """``size`` bytes (fewer only at the end); everything left when no size is given."""
        return self._body.read(-1 if size is None or size < 0 else size)

    def readline(self, size: int | None = -1) -> bytes:
        """One line, at most ``size`` bytes (the optional hint of PEP 3333 note 1)."""
        return self._body.readline(-1 if size is None or size < 0 else size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Lines until the end, or until their total length reaches ``hint``."""
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class ErrorStream:
    """``wsgi.errors``: a text stream whose lines become error-log records.

    One per request, so a line written in pieces stays one record and carries the request id.
    Control characters are escaped so an app echoing client text cannot forge log lines.
    """

    __slots__ = ("_partial", "_source")

    def __init__(self, source: str) -> None:
        self._source = source
        self._partial = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"wsgi.errors takes str, not {type(text).__name__}")
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._emit(line)
        if len(self._partial) > ERROR_LINE_CHARS:
            self.flush()
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = ""

    def _emit(self, line: str) -> None:
        log.log(ERRORS_LOG_LEVEL, "%s: %s", self._source, line.rstrip("\r").translate(CONTROL_CHARACTERS))


class FileWrapper:
    """``wsgi.file_wrapper`` (PEP 3333 "Optional Platform-Specific File Handling").

    Returned as is, it is sent with ``sendfile`` when ``filelike`` is a regular file opened in
    binary mode; otherwise (or when middleware wraps it) it is iterated in blocks.
    """

    def __init__(self, filelike: BinaryIO, block_size: int = FILE_BLOCK_BYTES) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        while block := self.filelike.read(self.block_size):
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def region(self, declared: int | None) -> FileRegion | None:
        """The rest of the file as a FileRegion (``declared`` bytes of it if the app set a
        Content-Length), or None when the object cannot be sent with sendfile."""
        filelike = self.filelike
        try:
            info = os.fstat(filelike.fileno())
            offset = filelike.tell()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            return None
        if not stat.S_ISREG(info.st_mode) or "b" not in getattr(filelike, "mode", "b"):
            return None
        length = declared if declared is not None else max(info.st_size - offset, 0)
        return FileRegion(filelike, offset, length)


# ---------------------------------------------------------------------------------------------
# start_response, write() and the response body


def check_status(status: object) -> tuple[int, str]:
    """The code and reason of a PEP 3333 status string; ApplicationError if it is not one."""
    if type(status) is str and (known := _VALID_STATUSES.get(status)) is not None:
        return known
    match = STATUS_LINE.fullmatch(status) if isinstance(status, str) else None
    if match is None:
        raise ApplicationError(f"invalid status {status!r}: expected a str like '200 OK'")
    code = int(match.group(1))
    if code < HTTPStatus.OK:  # RFC 9110 section 15.2: a 1xx is never a final response
        raise ApplicationError(f"invalid status {status!r}: an application cannot send a 1xx status")
    if len(_VALID_STATUSES) < MAX_REMEMBERED_NAMES:
        _VALID_STATUSES[match.string] = (code, match.group(2))
    return code, match.group(2)


def check_headers(headers: object) -> int | None:
    """Validate response headers (PEP 3333 "The start_response() Callable"); the app's
    Content-Length, if any."""
    if not isinstance(headers, list):
        raise ApplicationError(f"response headers must be a list, not {type(headers).__name__}")
    length: int | None = None
    for item in headers:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], str)):
            raise ApplicationError(f"invalid header {item!r}: expected a (str, str) tuple")
        name, value = item
        lower = _VALID_NAMES.get(name) or _checked_name(name)
        if not FIELD_VALUE.fullmatch(value):
            raise ApplicationError(f"invalid value for header {name}: {value!r}")
        if lower == "content-length":
            if not value.isdigit() or not value.isascii() or (length is not None and int(value) != length):
                raise ApplicationError(f"invalid Content-Length {value!r}")
            length = int(value)
    return length


def _checked_name(name: str) -> str:
    """The lower-case form of a header name an application may send; ApplicationError if not."""
    if not TOKEN.fullmatch(name):  # RFC 9110 section 5.1: a field name is a token
        raise ApplicationError(f"invalid header name {name!r}")
    lower = name.lower()
    if lower in HOP_BY_HOP:  # PEP 3333 "Other HTTP Features": framing is the server's job
        raise ApplicationError(f"hop-by-hop header {name!r} is the server's to send (PEP 3333)")
    if len(_VALID_NAMES) < MAX_REMEMBERED_NAMES and type(name) is str:
        _VALID_NAMES[name] = lower
    return lower


def close_iterable(result: object) -> None:
    """PEP 3333: the iterable's ``close()``, if it has one, is called once the request is over."""
    close = getattr(result, "close", None)
    if close is not None:
        close()


def check_chunk(chunk: object) -> bytes:
    if not isinstance(chunk, bytes):
        raise ApplicationError(f"the application yielded {type(chunk).__name__}, not bytes")
    return chunk


class Exchange:
    """One request's response state: what start_response and write() were given."""

    __slots__ = (
        "code",
        "errors",
        "headers",
        "headers_sent",
        "length",
        "queue",
        "reason",
        "returned",
        "spool",
    )

    def __init__(self, errors: ErrorStream) -> None:
        self.errors = errors
        self.code = 0  # 0 until start_response has been called
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.length: int | None = None  # the app's Content-Length
        self.headers_sent = False  # PEP 3333 sense: exc_info must now be re-raised
        self.returned = False  # handle() returned: write() data is queued for the body iterator
        self.spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        self.queue: deque[bytes] = deque()

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        """PEP 3333 start_response: validate and remember; nothing is sent yet."""
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])  # PEP 3333: too late, re-raise
            finally:
                exc_info = None  # avoid the frame <-> traceback cycle PEP 3333 warns about
        elif self.code:
            raise ApplicationError("start_response() called a second time without exc_info")
        code, reason = check_status(status)
        length = check_headers(headers)
        self.code, self.reason, self.headers, self.length = code, reason, list(headers), length
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333 write(): the data is buffered (before return) or queued (during iteration)."""
        if not self.code:
            raise ApplicationError("write() called before start_response()")
        if not isinstance(data, bytes):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if not data:
            return
        self.headers_sent = True
        if self.returned:
            self.queue.append(data)
            return
        if self.spool is None:
            self.spool = tempfile.SpooledTemporaryFile(WRITE_SPOOL_BYTES)
        self.spool.write(data)

    def respond(self, result: Iterable[bytes], method: str) -> Response:
        """Pull from ``result`` until the headers are fixed; the Response for the connection."""
        if isinstance(result, FileWrapper) and self.code and self.spool is None:
            region = result.region(self.length)
            if region is not None:
                self.headers_sent = self.returned = True
                self.finish()  # the connection closes the file: FileWrapper.close() in effect
                return Response(self.code, Headers(self.headers), region, self.reason or None)
        returned: object = result  # annotated as the PEP says; an application may return anything
        if returned is None or isinstance(returned, (str, bytes)):  # PEP 3333: an iterable OF bytes
            raise ApplicationError(
                f"the application returned {type(returned).__name__}, not an iterable of bytes (return [body] instead)"
            )
        chunks: list[bytes] = []
        iterator: Iterator[bytes] | None = None
        if type(result) in (list, tuple):  # all in memory already: take it whole
            chunks = [check_chunk(chunk) for chunk in result]
        else:
            iterator = iter(result)
            while not self.headers_sent:  # set by write() or by the first non-empty chunk
                try:
                    chunk = check_chunk(next(iterator))
                except StopIteration:
                    iterator = None
                    break
                if chunk:
                    if not self.code:
                        raise ApplicationError("body data produced before start_response() was called")
                    chunks.append(chunk)
                    self.headers_sent = True
        if not self.code:
            raise ApplicationError("the application returned without calling start_response()")
        self.headers_sent = self.returned = True
        headers = Headers(self.headers)
        if iterator is None and self.length is None and method != "HEAD" and self.code not in BODILESS_STATUSES:
            total = sum(map(len, chunks)) + (self.spool.tell() if self.spool is not None else 0)
            headers.add("Content-Length", str(total))
        return Response(self.code, headers, AppBody(self, chunks, iterator, result), self.reason or None)

    def finish(self) -> None:
        """Release per-request resources: the write() spool; flush wsgi.errors."""
        if self.spool is not None:
            self.spool.close()
        self.errors.flush()


class AppBody:
    """The response body handed to the connection; ``close()`` closes the app's iterable."""

    __slots__ = ("chunks", "closed", "exchange", "iterator", "result")

    def __init__(
        self, exchange: Exchange, chunks: list[bytes], iterator: Iterator[bytes] | None, result: Iterable[bytes]
    ) -> None:
        self.exchange = exchange
        self.chunks = chunks
        self.iterator = iterator
        self.result = result
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        exchange = self.exchange
        if exchange.spool is not None:
            exchange.spool.seek(0)
            while block := exchange.spool.read(SPOOL_BLOCK_BYTES):
                yield block
        chunks, self.chunks = self.chunks, []
        yield from chunks
        if self.iterator is None:
            return
        queue = exchange.queue
        for chunk in self.iterator:
            while queue:  # write() called while the iterable produced this chunk comes first
                yield queue.popleft()
            if check_chunk(chunk):
                yield chunk
        while queue:
            yield queue.popleft()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            close_iterable(self.result)
        finally:
            self.exchange.finish()


# ---------------------------------------------------------------------------------------------
# The handler


class WSGIHandler(Handler):
    """Serves one WSGI application at the mount's prefix (SCRIPT_NAME) per PEP 3333."""

    @dataclass(frozen=True)
    class Options:
        app: str = setting(
            doc='the WSGI callable: "module:callable", "module:factory()" (literal '
            'arguments allowed) or "module" for module:application'
        )
        pythonpath: tuple[Path, ...] = setting(
            default_factory=tuple, doc="directories put in front of sys.path before importing"
        )
        chdir: Path | None = setting(
            None, doc="working directory of the server process, set before importing (process-wide)"
        )

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, context)
        options = mount.options
        self.app = load_application(options.app, tuple(options.pythonpath), options.chdir)
        self.prefix = mount.path.rstrip("/")
        # PEP 3333: SCRIPT_NAME is a "bytes as latin-1" native string like PATH_INFO.
        script_name = self.prefix.encode("utf-8").decode("latin-1")
        self.base_environ: dict[str, Any] = {
            "SCRIPT_NAME": script_name,
            "SERVER_SOFTWARE": context.software,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "wsgi.version": (1, 0),
            "wsgi.multithread": context.concurrency == "threading",
            "wsgi.multiprocess": context.workers > 1 or context.concurrency == "forking",
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,  # reading to b"" is safe: the body ends at its end
            "wsgi.file_wrapper": FileWrapper,
        }

    def handle(self, request: Request) -> Response:
        """Run the app for ``request``; see the module docstring for the sequence."""
        exchange = Exchange(ErrorStream(self.mount.path))
        environ = self.environ(request, exchange.errors)
        try:
            result = self.app(environ, exchange.start_response)
        except BaseException as error:
            exchange.finish()
            self.count_exception(error)
            raise
        try:
            return exchange.respond(result, request.method)
        except BaseException as error:
            self.count_exception(error)
            try:
                close_iterable(result)
            except Exception:
                log.exception("close() of the application's iterable failed too")
            finally:
                exchange.finish()
            raise

    def count_exception(self, error: BaseException) -> None:
        """An exception out of the application (not the client leaving, not an HTTP answer)."""
        if not isinstance(error, (HTTPError, ClientDisconnected)):
            self.context.metrics.wsgi_exception(self.mount.path)

    def environ(self, request: Request, errors: ErrorStream) -> dict[str, Any]:
        """The PEP 3333 environ for ``request`` (CGI keys per RFC 3875 section 4.1)."""
        environ = self.base_environ.copy()
        path_info = request.path[len(self.prefix) :]
        if not path_info.isascii():  # PEP 3333 "Unicode Issues": the raw bytes, as latin-1
            path_info = path_info.encode("utf-8", "surrogateescape").decode("latin-1")
        scheme = request.scheme
        environ["REQUEST_METHOD"] = request.method
        environ["PATH_INFO"] = path_info
        environ["QUERY_STRING"] = request.query
        environ["REQUEST_URI"] = environ["RAW_URI"] = request.target
        environ["SERVER_PROTOCOL"] = request.version
        environ["REMOTE_ADDR"] = client_host(request.client)
        if isinstance(request.client, tuple):
            environ["REMOTE_PORT"] = str(request.client[1])
        environ["wsgi.url_scheme"] = scheme
        if scheme == "https":
            environ["HTTPS"] = "on"
        environ["wsgi.input"] = InputStream(request.body)
        environ["wsgi.errors"] = errors
        environ["porch.request_id"] = request.request_id
        if request.user is not None:  # the mount's auth checked the credentials (RFC 3875 4.1.1, 4.1.11)
            environ["AUTH_TYPE"] = "Basic"
            environ["REMOTE_USER"] = request.user.encode().decode("latin-1")  # PEP 3333: bytes as latin-1
        # One pass over the header fields: the HTTP_* keys, and the fields other keys come from.
        host = content_type = None
        has_length = False
        for name, value in request.headers:
            lower = name.lower()
            if lower in NOT_HTTP_VARIABLES:
                if lower == "content-length":
                    has_length = True
                elif lower == "content-type" and content_type is None:
                    content_type = value
                continue
            # A name with "_" is dropped: as HTTP_* it would be indistinguishable from the same
            # name with "-", so X_Forwarded_For could pose as (or join) X-Forwarded-For.
            if "_" in name:
                continue
            if lower == "host" and host is None:
                host = value
            key = HTTP_VARIABLES.get(lower) or http_variable(lower)
            if key in environ:  # RFC 9110 section 5.3: repeated fields join with ", "
                environ[key] += ("; " if lower == "cookie" else ", ") + value
            else:
                environ[key] = value
        environ["SERVER_NAME"], environ["SERVER_PORT"] = server_name_port(request, host)
        if content_type is not None:
            environ["CONTENT_TYPE"] = content_type
        if request.body.length is not None and has_length:
            environ["CONTENT_LENGTH"] = str(request.body.length)
        return environ


def server_name_port(request: Request, host: str | None) -> tuple[str, str]:
    """SERVER_NAME and SERVER_PORT: from Host (RFC 9110 section 7.2), else the bound address."""
    default_port = "443" if request.scheme == "https" else "80"
    if host:
        if host.startswith("["):
            name, _, rest = host.partition("]")
            name, port = name + "]", rest[1:] if rest.startswith(":") else ""
        else:
            name, _, port = host.partition(":")
        return name, port if port.isdigit() else default_port
    if isinstance(request.server, tuple):
        name, port_number = request.server[0], request.server[1]
        return (f"[{name}]" if ":" in name else name), str(port_number)
    return "localhost", default_port
