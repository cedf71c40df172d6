"""`GET /download/<name>`: a written tutorial as an attachment (nginx serves this path in production)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, send_file

from app.errors import NotFound

bp = Blueprint("files", __name__)


@bp.get("/download/<path:name>")
def download(name: str) -> Response:
    path = current_app.extensions["gateway.store"].resolve(name)
    if path is None:
        raise NotFound("No such tutorial.")
    response = send_file(path, mimetype="text/markdown", as_attachment=True, download_name=name, max_age=0)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
