"""`GET /v1/models` and `GET /v1/models/<id>`: the registered agents in OpenAI's format."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from app.errors import ModelNotFound
from app.protocol import model_object

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
def list_models() -> Response:
    registry = current_app.extensions["gateway.registry"]
    data = [model_object(spec.id, spec.created, spec.owned_by) for spec in registry]
    return jsonify({"object": "list", "data": data})


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    spec = current_app.extensions["gateway.registry"].get(model_id)
    if spec is None:
        raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
    return jsonify(model_object(spec.id, spec.created, spec.owned_by))
