"""`POST /v1/chat/completions`: validate, look up the agent, answer with JSON or a stream."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, g, jsonify, request

from app import sse
from app.agents.base import AgentRequest
from app.errors import InvalidRequest, ModelNotFound, UnsupportedMediaType
from app.generation import Failed, Generation, collect, stream, tutorial_file
from app.metrics import OTHER_MODEL
from app.protocol import Completion, parse_request

bp = Blueprint("completions", __name__)


def _base_url() -> str:
    configured = current_app.extensions["gateway.settings"].public_base_url
    return (configured or request.host_url).rstrip("/")


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    started = time.monotonic()
    ext = current_app.extensions
    settings = ext["gateway.settings"]
    metrics = ext["gateway.metrics"]
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json.")
    payload = request.get_json(silent=True)
    if payload is None:
        raise InvalidRequest("The request body is not valid JSON.")
    body = parse_request(payload)
    g.metrics_stream = "true" if body.stream else "false"
    spec = ext["gateway.registry"].get(body.model)
    if spec is None:
        raise ModelNotFound(f"The model '{body.model}' does not exist.", param="model")
    g.metrics_model = spec.id
    agent_request = AgentRequest(
        topic=body.topic(), language=body.language or settings.default_language, temperature=body.temperature
    )
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    completion = Completion(model=body.model, include_usage=include_usage)
    base_url = _base_url()
    generation = Generation(
        ext["gateway.bridge"], ext["gateway.runtime"], spec, agent_request, metrics, started
    )

    if not body.stream:
        content, reasoning, result = collect(generation)
        file = tutorial_file(result, base_url)
        if file is not None:
            content += file.link_markdown()
        response = jsonify(completion.whole(content, reasoning, result.usage, file))
        metrics.streamed_bytes.labels(spec.id).inc(response.content_length or 0)
        return response

    # Wait briefly for the first event so that an immediate upstream failure gets a real status.
    first = generation.peek(settings.first_event_wait_seconds)
    if isinstance(first, Failed):
        generation.close("failed")
        raise first.error
    body_iter = stream(generation, completion, base_url, settings.heartbeat_seconds)
    return Response(body_iter, status=200, headers=sse.HEADERS)


@bp.after_app_request
def count_request(response: Response) -> Response:
    """Count finished completion requests; a stream counts itself when it ends (generation.stream)."""
    if request.endpoint == "completions.chat_completions" and not (
        response.is_streamed and response.status_code == 200
    ):
        model = g.get("metrics_model", OTHER_MODEL)
        current_app.extensions["gateway.metrics"].requests.labels(
            model, g.get("metrics_stream", "false"), str(response.status_code)
        ).inc()
    return response
