"""The two logs: ``porch.access`` (one line per request) and ``porch.error`` (everything else).

The error log also receives the records of the ``server`` and ``handlers`` package loggers, so
modules log with ``logging.getLogger(__name__)`` and still land in the one error log.  Every
error-log line carries the id of the request being served (a context variable set by the
pipeline), so a traceback can be matched to its access line.  Text that came from the client is
escaped before it reaches either log: a request line cannot forge a second log line.
USR1 makes ``reopen()`` close and reopen the files, for logrotate.

A log never fails a request or a process: an access line that cannot be written (a full disk, a
closed pipe) is counted and the count reported on the error log at most once every
``LOST_REPORT_SECONDS``; a file that cannot be reopened (its directory is gone) stays open where
it was, and the error log says so.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from typing import TextIO

from porch.config.settings import LogSettings
from porch.http.messages import Request, escape
from porch.timing import SecondCache

ACCESS_LOGGER = "porch.access"
ERROR_LOGGER = "porch.error"
PACKAGE_LOGGERS = ("porch",)
LOST_REPORT_SECONDS = 10.0  # at most one "access lines lost" report per this many seconds

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every error-log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


class ReopenableFileHandler(logging.StreamHandler[TextIO]):
    """Appends to a file; ``reopen()`` starts writing to a fresh file at the same path."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        """Write to a fresh file at the path; OSError (and the old file kept) if it cannot be opened."""
        with self.lock:  # type: ignore[union-attr]
            old = self.stream
            self.stream = self._open()
        close_quietly(old)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            close_quietly(self.stream)
        super().close()


def close_quietly(stream: TextIO) -> None:
    """Close a log file whose last buffered lines may not be writable: those were already
    reported when their write failed, and a process must not fail on its way out."""
    try:
        stream.close()
    except OSError:
        pass


def _handler_for(target: str, default_stream: TextIO) -> logging.Handler:
    if target == "-":
        return logging.StreamHandler(default_stream)
    return ReopenableFileHandler(target)


class Logs:
    """Owns the handlers of both logs for one server process."""

    def __init__(self, settings: LogSettings) -> None:
        """Open both logs, then install them: a file that cannot be opened (OSError) changes nothing."""
        self.settings = settings
        self.handlers: list[logging.Handler] = []
        self.access = logging.getLogger(ACCESS_LOGGER)
        self.error = logging.getLogger(ERROR_LOGGER)
        self.access_enabled = settings.access is not False
        self.lost = 0  # access lines not written since the last report
        self.lost_reported = -LOST_REPORT_SECONDS
        self.lost_reason = ""

        error_handler = _handler_for(settings.error, sys.stderr)
        access_handler: logging.Handler | None = None
        if self.access_enabled:
            try:
                access_handler = _handler_for(str(settings.access), sys.stdout)
            except OSError:
                error_handler.close()
                raise
        self.access.propagate = False
        self.error.propagate = False
        level = getattr(logging, settings.level.upper())
        error_handler.setFormatter(error_formatter(settings.format, error_handler))
        error_handler.addFilter(RequestIdFilter())
        for name in (ERROR_LOGGER, *PACKAGE_LOGGERS):
            logger = logging.getLogger(name)
            logger.handlers = [error_handler]
            logger.setLevel(level)
            logger.propagate = False
        self.handlers.append(error_handler)

        self.access.handlers = []
        if access_handler is not None:
            access_handler.setFormatter(logging.Formatter("%(message)s"))
            self.access.addHandler(access_handler)
            self.handlers.append(access_handler)
        self.access.setLevel(logging.INFO)
        self.format_access = ACCESS_FORMATS[settings.access_format]

    def reopen(self) -> None:
        """USR1 (logrotate): reopen every log file; one that cannot be reopened keeps its old file."""
        reopened = True
        for handler in self.handlers:
            if isinstance(handler, ReopenableFileHandler):
                try:
                    handler.reopen()
                except OSError as error:
                    reopened = False
                    self.error.error(
                        "cannot reopen %s (%s): still writing to the file opened before",
                        handler.path,
                        error.strerror or error,
                    )
        if reopened:
            self.error.info("log files reopened")

    def fork(self) -> int:
        """``os.fork()`` with every handler's lock held across it, so that no other thread is
        part way through a write: a child would inherit that stream's own lock taken and wait on
        it for ever.  The access log's is taken first, as ``log_request`` takes them; a child
        gives each handler a new lock (the held ones belong to a thread of its parent)."""
        held = self.handlers[::-1]  # the error log's handler comes first in the list
        for handler in held:
            handler.acquire()
        pid = -1  # stays so if the fork fails
        try:
            pid = os.fork()
        finally:
            for handler in held:
                if pid == 0:
                    handler.createLock()
                else:
                    handler.release()
        return pid

    def close(self) -> None:
        if self.lost:
            self.report_lost(time.monotonic())
        for handler in self.handlers:
            handler.close()

    def log_request(
        self,
        request: Request | None,
        client: str,
        request_line: str,
        status: int,
        sent: int,
        duration: float,
        request_id: str,
    ) -> None:
        """Write one access line; ``request`` is None for requests rejected before parsing.

        The line goes straight to the handlers' streams, under their locks (so USR1's reopen is
        safe): a LogRecord, caller lookup and formatter per request would cost more than the
        line itself."""
        if not self.access_enabled:
            return
        line = self.format_access(request, client, request_line, status, sent, duration, request_id) + "\n"
        for handler in self.access.handlers:
            if isinstance(handler, logging.StreamHandler):
                with handler.lock:  # type: ignore[union-attr]
                    try:
                        handler.stream.write(line)
                        handler.stream.flush()
                    except (OSError, ValueError) as error:  # ValueError: a stream closed under us
                        self.lost += 1
                        self.lost_reason = str(getattr(error, "strerror", None) or error)
                    if self.lost:
                        now = time.monotonic()
                        if now - self.lost_reported >= LOST_REPORT_SECONDS:
                            self.report_lost(now)

    def report_lost(self, now: float) -> None:
        """Say on the error log how many access lines could not be written since the last report."""
        target = "stdout" if self.settings.access == "-" else self.settings.access
        self.error.error(
            "cannot write the access log %s (%s): %d line%s lost",
            target,
            self.lost_reason,
            self.lost,
            "" if self.lost == 1 else "s",
        )
        self.lost = 0
        self.lost_reported = now


TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] [%(request_id)s] %(name)s: %(message)s"
# SGR colours of the level names on a terminal: warnings yellow, errors red (bold when critical).
LEVEL_COLOURS = {"WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}


class ColourFormatter(logging.Formatter):
    """The text format, its warnings and errors coloured: for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        colour = LEVEL_COLOURS.get(record.levelname)
        return f"\033[{colour}m{line}\033[0m" if colour else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line, as the access log's json format, so log shippers read both logs."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": ISO_TIME.at(record.created),
            "pid": record.process,
            "level": record.levelname.lower(),
            "request_id": getattr(record, "request_id", "-"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["traceback"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=True)


def error_formatter(form: str, handler: logging.Handler) -> logging.Formatter:
    """The error log's formatter: json, or text -- coloured only on a terminal (and not under NO_COLOR)."""
    if form == "json":
        return JsonFormatter()
    stream = getattr(handler, "stream", None)
    terminal = stream is not None and hasattr(stream, "isatty") and stream.isatty()
    if terminal and not os.environ.get("NO_COLOR"):
        return ColourFormatter(TEXT_FORMAT)
    return logging.Formatter(TEXT_FORMAT)


CLF_TIME = SecondCache(lambda second: time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second)))
ISO_TIME = SecondCache(lambda second: time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second)))


def _clf_time() -> str:
    return CLF_TIME.now()


def _common(request: Request | None, client: str, request_line: str, status: int, sent: int) -> str:
    return f'{client} - - [{_clf_time()}] "{escape(request_line)}" {status} {sent if sent else "-"}'


def format_common(
    request: Request | None, client: str, request_line: str, status: int, sent: int, duration: float, request_id: str
) -> str:
    """Apache common log format."""
    return _common(request, client, request_line, status, sent)


def format_combined(
    request: Request | None, client: str, request_line: str, status: int, sent: int, duration: float, request_id: str
) -> str:
    """Apache combined format, then the request time in seconds and the request id."""
    headers = request.headers if request is not None else None
    referer = escape(headers.get("referer", "-") or "-") if headers else "-"
    agent = escape(headers.get("user-agent", "-") or "-") if headers else "-"
    return (
        f'{_common(request, client, request_line, status, sent)} "{referer}" "{agent}" '
        f"{duration:.6f} {escape(request_id)}"
    )


def format_json(
    request: Request | None, client: str, request_line: str, status: int, sent: int, duration: float, request_id: str
) -> str:
    """One JSON object per line; json.dumps escapes every control character."""
    headers = request.headers if request is not None else None
    return json.dumps(
        {
            "time": ISO_TIME.now(),
            "client": client,
            "request": request_line,
            "method": request.method if request else None,
            "path": request.raw_path if request else None,
            "query": request.query if request else None,
            "host": headers.get("host") if headers else None,
            "status": status,
            "bytes": sent,
            "referer": headers.get("referer") if headers else None,
            "user_agent": headers.get("user-agent") if headers else None,
            "duration": round(duration, 6),
            "request_id": request_id,
        },
        ensure_ascii=True,
    )


ACCESS_FORMATS = {"common": format_common, "combined": format_combined, "json": format_json}
