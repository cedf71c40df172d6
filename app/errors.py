"""Typed API errors and the one place that turns any exception into an OpenAI error object."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error the client should see as `{"error": {...}}` with `status`."""

    status = 500
    type = "server_error"
    code: str | None = None
    # Tells the OpenAI SDKs whether a retry is safe (`x-should-retry`). Agent runs are not idempotent,
    # so a 5xx says "false" unless no work had started; None leaves the SDK's own rule.
    retry: bool | None = None
    # The `reason` label of gateway_rejected_requests_total when it is not `code`.
    metric_reason: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Unauthorized(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ClientClosedRequest(APIError):
    """The client hung up before its whole answer was ready (nginx's 499): logged, never read."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class ShuttingDown(APIError):
    """Refused before any work started, so retrying elsewhere is safe."""

    status = 503
    type = "server_error"
    code = "server_shutting_down"
    retry = True


class Unavailable(APIError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class GenerationTimeout(APIError):
    status = 504
    type = "server_error"
    code = "generation_timeout"


class UnsupportedMediaType(APIError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class UpstreamError(APIError):
    """The upstream LLM failed (refused, errored, stalled, or answered nonsense)."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class AgentError(APIError):
    """The agent failed for a reason that is not the upstream's."""

    status = 500
    type = "server_error"
    code = "agent_error"


class StorageError(APIError):
    """The files folder cannot take a file: too little free space (`storage_full`) or a failed write."""

    status = 507
    type = "server_error"
    code = "storage_error"


# Statuses werkzeug raises itself (routing, body limits) mapped to OpenAI-style types and codes.
_HTTP_TYPES = {
    400: ("invalid_request_error", "bad_request"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


def error_response(error: APIError) -> Response:
    response = jsonify(error.body())
    response.status_code = error.status
    response.headers.update(error.headers)
    retry = error.retry if error.retry is not None else (False if error.status >= 500 else None)
    if retry is not None:
        response.headers["x-should-retry"] = "true" if retry else "false"
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(error: APIError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        type_, code = _HTTP_TYPES.get(status, ("server_error", None))
        message = error.description or error.name
        if status == 404 and request.path.startswith("/v1/"):
            message = (
                f"Unknown API route {request.method} {request.path}. This server implements OpenAI's Chat "
                "Completions and Responses APIs: POST /v1/chat/completions, POST /v1/responses "
                "(GET /v1/models lists the agents)."
            )
        api_error = APIError(message, code=code)
        api_error.status, api_error.type = status, type_
        response = error_response(api_error)
        if status == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(APIError("The server had an error while processing your request."))
