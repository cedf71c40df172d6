"""`GET /healthz` (the process answers), `GET /readyz` (it can take work), `GET /metrics` (Prometheus),
`GET /openapi.json` (the API's OpenAPI document, `app/openapi.yaml`).

`/metrics` is served by the app only: nginx's public server does not route it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import yaml
from flask import Blueprint, Response, jsonify

from app.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    svc = services()
    draining = svc.lifecycle.draining
    try:
        room = svc.store.has_room(svc.settings.min_free_bytes)
        present = svc.store.present()
    except OSError:
        room = present = False
    ready = present and room and not draining
    status = "draining" if draining else "ready" if ready else "low on disk" if present else "not ready"
    response = jsonify({"status": status})
    response.status_code = 200 if ready else 503
    return response


@bp.get("/metrics")
def metrics() -> Response:
    svc = services()
    with contextlib.suppress(OSError):
        free = svc.store.free_bytes()
        if free is not None:  # the folder's (S3 has no such figure)
            svc.metrics.files_free_bytes.set(free)
    data, content_type = svc.metrics.render()
    return Response(data, content_type=content_type)


OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.yaml"


def load_openapi() -> dict:
    return yaml.safe_load(OPENAPI_PATH.read_text())


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(services().openapi)
