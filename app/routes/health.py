"""`GET /healthz` (the process answers) and `GET /readyz` (it can take work)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    store = current_app.extensions["gateway.store"]
    ready = store.folder.is_dir()
    response = jsonify({"status": "ready" if ready else "not ready"})
    response.status_code = 200 if ready else 503
    return response
