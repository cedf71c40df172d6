"""`POST /v1/chat/completions`: validate, admit, look up the agent, answer with JSON or a stream."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from flask import Blueprint, Response, g, jsonify, request
from gunicorn.http.errors import ParseException

from app.agents.base import AgentRequest
from app.agents.housekeeping import Housekeeping
from app.api import sse
from app.api.protocol import ChatCompletionRequest, Completion, file_link, parse_request
from app.errors import (
    APIError,
    InvalidRequest,
    ModelNotFound,
    StorageError,
    UnsupportedMediaType,
)
from app.generation.body import ChatFraming, stream
from app.generation.job import Failed, Generation, collect
from app.metrics import OTHER_MODEL
from app.services import Services, services
from app.settings import Settings
from app.storage import TutorialStore
from app.transport.socket_body import SocketBody, hang_up_check

bp = Blueprint("completions", __name__)


# A host name or IP literal, and an optional port: what a download link may start with.
_HOST = re.compile(r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _base_url() -> str:
    """Where download links point: GATEWAY_PUBLIC_BASE_URL, else the scheme and host the request came to
    (nginx forwards its own; a client reaching gunicorn directly could send anything)."""
    configured = services().settings.public_base_url
    if configured:
        return str(configured).rstrip("/")
    if request.scheme not in ("http", "https") or not _HOST.fullmatch(request.host):
        raise InvalidRequest(
            "The request's scheme or host (Host, X-Forwarded-Proto/Host/Port) cannot start a download link; "
            "send http or https and a host name, or set GATEWAY_PUBLIC_BASE_URL."
        )
    return f"{request.scheme}://{request.host}"


def _payload() -> Any:
    """The body's JSON. orjson refuses what could not be written out again: lone surrogates, invalid
    UTF-8, NaN and infinities, nesting past 1,024; integers past 64 bits become floats."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json.")
    try:
        raw = request.get_data(cache=False)  # past MAX_CONTENT_LENGTH this raises 413
    except (ParseException, OSError):  # gunicorn could not read it: a bad chunk, a body cut short
        raise InvalidRequest("The request body could not be read: its framing is malformed.") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None


# The roles an upstream chat completion accepts without more fields (tool results need their call).
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _agent_request(
    body: ChatCompletionRequest, settings: Settings, housekeeping: Housekeeping
) -> tuple[AgentRequest, bool]:
    """What the agent is asked, and whether it is a chat UI's housekeeping request (whose last
    message quotes the chat: the topic's limits do not apply to it)."""
    if len(body.messages) > settings.max_messages:
        raise InvalidRequest(f"At most {settings.max_messages} messages are accepted.", param="messages")
    for n, message in enumerate(body.messages):
        if len(message.text()) > settings.max_message_chars:
            raise InvalidRequest(
                f"A message may have at most {settings.max_message_chars} characters.",
                param=f"messages.{n}.content",
            )
    topic = body.topic()
    language = body.language or settings.default_language
    if housekeeping.recognises(topic):
        messages = tuple(
            {"role": _ROLES[m.role], "content": m.text()} for m in body.messages if m.role in _ROLES
        )
        max_tokens = body.max_completion_tokens or body.max_tokens
        return AgentRequest(topic, language, body.temperature, messages, max_tokens), True
    if len(topic) > settings.max_topic_chars:
        raise InvalidRequest(
            f"The topic may have at most {settings.max_topic_chars} characters.", param="messages"
        )
    if "\x00" in topic:
        raise InvalidRequest("The topic may not contain NUL characters.", param="messages")
    return AgentRequest(topic=topic, language=language, temperature=body.temperature), False


def check_room(store: TutorialStore, margin: int) -> None:
    """Refuse (507 `storage_full`) while the files folder has less than `margin` bytes free."""
    try:
        room = store.has_room(margin)
    except OSError as exc:
        raise StorageError(f"The server's file storage is unavailable ({exc.strerror}).") from None
    if not room:
        raise StorageError(
            "The server is low on disk space for new files; retry later.",
            code="storage_full",
            headers={"Retry-After": "60"},
        )


def start_generation(svc: Services, body: ChatCompletionRequest, started: float) -> tuple[Generation, str]:
    """The generation `body` asks for (its model's agent, or a chat UI's housekeeping), admitted, and the
    base URL of its links. Everything that refuses it (unknown model, bad input, no room, the limits)
    does so here, before any work: chat completions and the Responses API alike."""
    settings, metrics, lifecycle = svc.settings, svc.metrics, svc.lifecycle
    agent = svc.registry.get(body.model)
    if agent is None:
        raise ModelNotFound(f"The model '{body.model}' does not exist.", param="model")
    agent_request, housekeeping = _agent_request(body, settings, svc.housekeeping)
    if housekeeping:
        agent = svc.housekeeping
    g.metrics_model = agent.id
    base_url = _base_url()
    try:
        if not housekeeping:  # an agent's run ends in a file: refuse it before any work if it has no room
            check_room(svc.store, settings.min_free_bytes)
        admission = lifecycle.admit()
    except APIError as exc:
        metrics.rejected_requests.labels(exc.metric_reason or exc.code or "rejected").inc()
        metrics.generation_duration.labels(agent.id, "rejected").observe(time.monotonic() - started)
        raise
    try:
        generation = Generation(
            svc.bridge,
            svc.runtime,
            agent,
            agent_request,
            metrics=metrics,
            lifecycle=lifecycle,
            admission=admission,
            started=started,
            max_seconds=settings.max_generation_seconds,
            max_content_chars=settings.max_content_chars,
        )
    except BaseException:
        admission.release()
        raise
    g.generation = generation  # the request's until `hand_off`: its end closes it (`_close_unowned`)
    return generation, base_url


def hand_off(generation: Generation) -> Generation:
    """`generation` now belongs to what will end it (a stream's body, a background driver), not to the
    request: the request's end no longer closes it."""
    if g.get("generation") is generation:
        g.pop("generation")
    return generation


@bp.teardown_app_request
def _close_unowned(exc: BaseException | None) -> None:
    """The door's other side: a generation its request started and did not hand off ends with the
    request, whichever way that ends (an error after admission, an exception, an early return), so
    no admission outlives it."""
    generation = g.pop("generation", None)
    if generation is not None:
        generation.close("failed")


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    started = time.monotonic()
    svc = services()
    settings, metrics = svc.settings, svc.metrics
    body = parse_request(_payload())
    g.metrics_stream = "true" if body.stream else "false"
    generation, base_url = start_generation(svc, body, started)
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    completion = Completion(model=body.model, include_usage=include_usage)

    if not body.stream:
        content, reasoning, result = collect(generation, hang_up_check(request.environ))
        link = file_link(result, base_url, svc.links)
        if link is not None:
            content += link.link_markdown()
        response = jsonify(completion.whole(content, reasoning, result.usage, link))
        metrics.streamed_bytes.labels(generation.model).inc(response.content_length or 0)
        return response

    # Wait briefly for the first event so that an immediate upstream failure gets a real status.
    first = generation.peek(settings.first_event_wait_seconds)
    if isinstance(first, Failed):
        raise first.error  # the request's end closes the generation (`_close_unowned`)
    body_iter = stream(
        hand_off(generation),
        ChatFraming(completion, base_url, svc.links),
        settings.heartbeat_seconds,
        SocketBody.of(request.environ, settings.send_timeout_seconds),
    )
    # direct_passthrough: gunicorn iterates the generator itself (werkzeug would wrap it twice per event).
    return Response(body_iter, status=200, headers=sse.HEADERS, direct_passthrough=True)


@bp.after_app_request
def count_request(response: Response) -> Response:
    """Count finished completion requests; a stream counts itself when it ends (generation.body)."""
    if request.endpoint in ("completions.chat_completions", "responses.create_response") and not (
        response.is_streamed and response.status_code == 200
    ):
        model = g.get("metrics_model", OTHER_MODEL)
        services().metrics.requests.labels(
            model, g.get("metrics_stream", "false"), str(response.status_code)
        ).inc()
    return response
