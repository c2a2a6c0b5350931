#!/usr/bin/env python3
"""porch sample: an HTML form handled by GET (query string) and POST (request body).

A POST body is read exactly as RFC 3875 4.2 says: CONTENT_LENGTH bytes from stdin, never more.
Only application/x-www-form-urlencoded bodies are accepted; anything else gets 415.
"""

import html
import os
import sys
from urllib.parse import parse_qsl

MAX_BODY_BYTES = 65536


def respond(status: str, body: str) -> None:
    data = body.encode("utf-8")
    out = sys.stdout.buffer
    out.write(f"Status: {status}\r\nContent-Type: text/html; charset=utf-8\r\n".encode())
    out.write(f"Content-Length: {len(data)}\r\n\r\n".encode())
    if os.environ.get("REQUEST_METHOD") != "HEAD":
        out.write(data)


def page(title: str, fields: list[tuple[str, str]], method: str) -> str:
    script = html.escape(os.environ.get("SCRIPT_NAME", ""))
    name = html.escape(dict(fields).get("name", ""))
    if fields:
        items = "".join(f"<li><b>{html.escape(k)}</b> = {html.escape(v)}</li>" for k, v in fields)
        received = f"<h2>Received by {html.escape(method)}</h2><ul>{items}</ul>"
    else:
        received = "<p>Nothing submitted yet.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>
<body><h1>{html.escape(title)}</h1>
{received}
<h2>GET</h2>
<form method="get" action="{script}"><input name="name" value="{name}"> <input name="colour" value="blue">
<button>Send with GET</button></form>
<h2>POST</h2>
<form method="post" action="{script}"><input name="name" value="{name}">
<textarea name="message">Hello &lt;world&gt; &amp; all</textarea>
<button>Send with POST</button></form>
<p><a href="/">Back</a></p></body></html>
"""


def main() -> None:
    method = os.environ.get("REQUEST_METHOD", "GET")
    if method in ("GET", "HEAD"):
        fields = parse_qsl(os.environ.get("QUERY_STRING", ""), keep_blank_values=True)
        respond("200 OK", page("Form sample", fields, "GET"))
    elif method == "POST":
        content_type = os.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            respond("415 Unsupported Media Type", "<p>Send application/x-www-form-urlencoded.</p>")
            return
        length = int(os.environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_BODY_BYTES:
            respond("413 Content Too Large", "<p>That is too much for this form.</p>")
            return
        body = sys.stdin.buffer.read(length).decode("utf-8", "replace")
        respond("200 OK", page("Form sample", parse_qsl(body, keep_blank_values=True), "POST"))
    else:
        respond("405 Method Not Allowed", "<p>GET or POST only.</p>")


main()
