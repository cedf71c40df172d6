"""`GET /download/<name>`: a written file as an attachment (nginx serves this path in production),
and `GET /auth/check`, which nginx asks (auth_request) before it serves a download itself."""

from __future__ import annotations

from flask import Blueprint, Response, send_file

from app.errors import NotFound
from app.services import services

bp = Blueprint("files", __name__)


@bp.get("/download/<path:name>")
def download(name: str) -> Response:
    path = services().store.resolve(name)
    if path is None:
        raise NotFound("No such tutorial.")
    response = send_file(path, mimetype="text/markdown", as_attachment=True, download_name=name, max_age=0)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/auth/check")
def auth_check() -> Response:
    """204 when the request carries a valid key or no keys are configured (the before_request hook)."""
    return Response(status=204)
