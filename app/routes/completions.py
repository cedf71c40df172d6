"""`POST /v1/chat/completions`: validate, look up the agent, answer with JSON or a stream."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from app import sse
from app.agents.base import AgentRequest
from app.errors import InvalidRequest, ModelNotFound, UnsupportedMediaType
from app.generation import Failed, Generation, collect, stream, tutorial_file
from app.protocol import Completion, parse_request

bp = Blueprint("completions", __name__)


def _base_url() -> str:
    configured = current_app.extensions["gateway.settings"].public_base_url
    return (configured or request.host_url).rstrip("/")


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    ext = current_app.extensions
    settings = ext["gateway.settings"]
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json.")
    payload = request.get_json(silent=True)
    if payload is None:
        raise InvalidRequest("The request body is not valid JSON.")
    body = parse_request(payload)
    spec = ext["gateway.registry"].get(body.model)
    if spec is None:
        raise ModelNotFound(f"The model '{body.model}' does not exist.", param="model")
    agent_request = AgentRequest(
        topic=body.topic(), language=body.language or settings.default_language, temperature=body.temperature
    )
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    completion = Completion(model=body.model, include_usage=include_usage)
    base_url = _base_url()
    generation = Generation(ext["gateway.bridge"], ext["gateway.runtime"], spec, agent_request)

    if not body.stream:
        content, reasoning, result = collect(generation)
        file = tutorial_file(result, base_url)
        if file is not None:
            content += file.link_markdown()
        return jsonify(completion.whole(content, reasoning, result.usage, file))

    # Wait briefly for the first event so that an immediate upstream failure gets a real status.
    first = generation.peek(settings.first_event_wait_seconds)
    if isinstance(first, Failed):
        generation.cancel()
        raise first.error
    body_iter = stream(generation, completion, base_url, settings.heartbeat_seconds)
    return Response(body_iter, status=200, headers=sse.HEADERS)
