"""`GET /download/<name>`: a written file as an attachment, and `GET /auth/check`, which nginx asks
(auth_request) before it serves a download from the folder itself.

With the folder, nginx serves the bytes (this view answers only when nginx is not in front). With S3,
nginx passes the download here: the request is authorized like any other (keys or a signed link), and
the answer tells nginx to fetch the object from the private bucket by a presigned URL
(`X-Accel-Redirect` to its internal `/_object` location; app.object_store).
"""

from __future__ import annotations

from flask import Blueprint, Response, send_file

from app.errors import NotFound
from app.object_store import ObjectStore
from app.services import services
from app.storage import FileStore

bp = Blueprint("files", __name__)

ACCEL_LOCATION = "/_object"  # nginx/templates: proxies to X-Gateway-Object-Url, internal only
URL_HEADER = "X-Gateway-Object-Url"


@bp.get("/download/<path:name>")
def download(name: str) -> Response:
    store = services().store
    if isinstance(store, ObjectStore):
        url = store.presigned_url(name)
        if url is None:
            raise NotFound("No such tutorial.")
        return Response(status=200, headers={"X-Accel-Redirect": ACCEL_LOCATION, URL_HEADER: url})
    path = store.resolve(name) if isinstance(store, FileStore) else None
    if path is None:
        raise NotFound("No such tutorial.")
    response = send_file(path, mimetype="text/markdown", as_attachment=True, download_name=name, max_age=0)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/auth/check")
def auth_check() -> Response:
    """204 when the request carries a valid key or no keys are configured (the before_request hook)."""
    return Response(status=204)
