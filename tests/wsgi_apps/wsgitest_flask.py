"""A small Flask app for the framework tests: routing, url_for under SCRIPT_NAME, a multipart
file upload and a streamed (generator) response.  ``application`` is the app inside
``wsgiref.validate.validator``."""

from __future__ import annotations

import hashlib
import time
import warnings
import wsgiref.validate
from collections.abc import Iterator

from flask import Flask, Response, abort, jsonify, request, stream_with_context, url_for

warnings.simplefilter("error", wsgiref.validate.WSGIWarning)

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = 32 * 1024 * 1024


@app.get("/")
def index() -> str:
    return "flask index"


@app.get("/hello/<name>")
def hello(name: str) -> str:
    return f"hello {name}"


@app.get("/items/<int:item_id>")
def item(item_id: int) -> Response:
    if item_id > 100:
        abort(404)
    return jsonify(
        id=item_id,
        url=url_for("item", item_id=item_id),
        external=url_for("item", item_id=item_id, _external=True),
        script_root=request.script_root,
        path=request.path,
    )


@app.post("/upload")
def upload() -> Response:
    stored = request.files["file"]
    data = stored.read()
    return jsonify(
        filename=stored.filename, size=len(data), sha256=hashlib.sha256(data).hexdigest(), note=request.form.get("note")
    )


@app.get("/stream")
def stream() -> Response:
    count = request.args.get("count", 5, type=int)
    delay = request.args.get("delay", 0.0, type=float)

    def generate() -> Iterator[str]:
        for number in range(count):
            if delay:
                time.sleep(delay)
            yield f"line {number} of {request.path}\n"

    return Response(stream_with_context(generate()), mimetype="text/plain")


application = wsgiref.validate.validator(app)
