"""`GET /v1/models` and `GET /v1/models/<id>`: the registered agents in OpenAI's format."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.api.protocol import model_object
from app.errors import ModelNotFound
from app.services import services

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
def list_models() -> Response:
    data = [model_object(agent) for agent in services().registry]
    return jsonify({"object": "list", "data": data})


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    agent = services().registry.get(model_id)
    if agent is None:
        raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
    return jsonify(model_object(agent))
