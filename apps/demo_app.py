"""The demo WSGI application mounted at ``/app`` by the bundled config.

A plain PEP 3333 callable using only the standard library: ``GET`` shows what the server put
in the environ (request line, SCRIPT_NAME/PATH_INFO split, client, headers, the ``wsgi.*``
flags) and a form; ``POST`` of that form (``application/x-www-form-urlencoded``) shows the
submitted fields.  Everything echoed is HTML-escaped, and the form body is read with a size
(CONTENT_LENGTH, capped at ``MAX_FORM_BYTES``), never with a bare ``read()``.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

MAX_FORM_BYTES = 65536
ENVIRON_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_PROTOCOL",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_SOFTWARE",
    "wsgi.url_scheme",
    "wsgi.multithread",
    "wsgi.multiprocess",
    "wsgi.run_once",
    "wsgi.input_terminated",
)

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>porch WSGI demo</title>
<style>body{{font-family:sans-serif;max-width:50em;margin:2em auto}}
th{{text-align:left;padding-right:1em;vertical-align:top}}td{{font-family:monospace}}</style>
</head><body>
<h1>porch WSGI demo</h1>
{result}
<h2>Try the form</h2>
<form method="post" action="{action}">
<p><label>Name <input name="name" maxlength="100"></label></p>
<p><label>Message<br><textarea name="message" rows="4" cols="50"></textarea></label></p>
<p><button type="submit">Send</button></p>
</form>
<h2>This request</h2>
<table>{environ}</table>
<h2>Request headers</h2>
<table>{headers}</table>
</body></html>
"""

StartResponse = Callable[..., Any]


def rows(pairs: Iterable[tuple[str, object]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def request_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """The HTTP_* keys turned back into header names."""
    return sorted(
        (key[5:].replace("_", "-").title(), value) for key, value in environ.items() if key.startswith("HTTP_")
    )


def read_form(environ: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The posted fields; None when the body is too large to be a form of this page.

    Without CONTENT_LENGTH (a chunked upload) the read is still bounded: ``wsgi.input`` ends
    where the request body ends (``wsgi.input_terminated``), so one byte over the cap tells.
    """
    declared = environ.get("CONTENT_LENGTH")
    length = int(declared) if declared and declared.isdigit() else MAX_FORM_BYTES + 1
    if declared and length > MAX_FORM_BYTES:
        return None
    body = environ["wsgi.input"].read(length)
    if len(body) > MAX_FORM_BYTES:
        return None
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


def application(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Show the request and the form; on POST, also what was submitted."""
    method = environ["REQUEST_METHOD"]
    result = ""
    status = "200 OK"
    if method == "POST":
        fields = read_form(environ)
        if fields is None:
            status = "413 Content Too Large"
            result = f"<p><strong>The form is limited to {MAX_FORM_BYTES} bytes.</strong></p>"
        else:
            result = "<h2>You sent</h2><table>" + rows(fields) + "</table>"
    elif method not in ("GET", "HEAD"):
        body = b"Only GET, HEAD and POST are supported here.\n"
        start_response(
            "405 Method Not Allowed",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Allow", "GET, HEAD, POST"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]
    action = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/"
    page = PAGE.format(
        result=result,
        action=html.escape(action.encode("latin-1").decode("utf-8", "replace")),
        environ=rows((key, environ[key]) for key in ENVIRON_KEYS if key in environ),
        headers=rows(request_headers(environ)),
    ).encode("utf-8")
    start_response(
        status,
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(page))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [page]
