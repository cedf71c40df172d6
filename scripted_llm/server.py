"""An OpenAI-compatible HTTP front for :mod:`scripted_llm.script`.

It speaks just enough of the Chat Completions API for the ``openai`` SDK (and so
MetaGPT's OpenAI provider) to treat it as a real model: SSE streaming with paced tokens,
the ``include_usage`` chunk, non-streaming answers and OpenAI-shaped errors.  On top of
that it keeps a journal of requests (``/_scripted/requests``) so integration tests can
see what the gateway really asked for and whether it hung up on a stream.

Client disconnects: aiohttp 3.8.6 does *not* cancel a handler when its client goes
away (it only marks the transport closed), so the handler checks the transport while
it sleeps and writes.  ``asyncio.CancelledError`` is handled as well, for aiohttp
versions that do cancel and for server shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from scripted_llm import script

log = logging.getLogger("scripted_llm")

JOURNAL_LIMIT = 2000
# How often a sleeping handler looks at its transport; bounds how late a disconnect is seen.
_POLL_SECONDS = 0.1
# With no pacing, yield to the event loop every this many tokens so other streams progress.
_YIELD_EVERY = 32

_STATE_KEY = "scripted_llm.state"


class _ClientGone(Exception):
    """The client closed the connection; nothing more can be sent."""


@dataclass
class _State:
    """Per-application state: the configured pace and model, the journal, live count."""

    pace: float
    model: str
    journal: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=JOURNAL_LIMIT))
    active: int = 0


def _state(request: web.Request) -> _State:
    state: _State = request.app[_STATE_KEY]
    return state


def _dumps(obj: Any) -> str:
    """JSON with raw UTF-8 like OpenAI, falling back to escapes for lone surrogates."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj)
    return text


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=_dumps(obj), status=status, content_type="application/json", headers=headers)


def _error(status: int, message: str, err_type: str, code: str | None = None, **headers: str) -> web.Response:
    body = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return _json_response(body, status=status, headers=headers or None)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _sleep(request: web.Request, seconds: float) -> None:
    """Sleep, but notice within ``_POLL_SECONDS`` if the client hangs up meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if _client_gone(request):
            raise _ClientGone
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, _POLL_SECONDS))


def _message_texts(messages: Iterable[Any]) -> list[tuple[str, str]]:
    """``(role, text)`` for each message; content may be a string or a list of parts."""
    out: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        else:
            text = ""
        out.append((str(message.get("role", "")), text))
    return out


def _plan(prompt: str, default_pace: float) -> script.Plan:
    plan = script.plan(prompt, default_pace)
    unknown = set(plan.directives) - script.KNOWN_DIRECTIVES
    if unknown:
        log.warning("ignoring unknown directives %s", sorted(unknown))
    if "fault" in plan.directives and plan.directives["fault"].strip().lower() not in script.FAULTS:
        log.warning("ignoring unknown fault %r", plan.directives["fault"])
    if "reasoning" in plan.directives and plan.reasoning is None:
        log.warning("ignoring unknown reasoning mode %r", plan.directives["reasoning"])
    return plan


# What a drip fault sends instead of content: alternately an empty delta and a tool call fragment.
_DRIP_DELTAS: tuple[dict[str, Any], ...] = (
    {},
    {"tool_calls": [{"index": 0, "function": {"arguments": ""}}]},
)


class _Completion:
    """One chat completion request being answered; owns its journal entry."""

    def __init__(self, request: web.Request, body: dict[str, Any]) -> None:
        self.request = request
        self.state = _state(request)
        self.body = body
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        model = body.get("model")
        self.model = model if isinstance(model, str) and model else self.state.model
        texts = _message_texts(body.get("messages") or [])
        users = [text for role, text in texts if role == "user"]
        # MetaGPT sends one user message (maybe after a system one): that is the prompt.
        prompt = users[-1] if users else "\n".join(text for _, text in texts)
        self.prompt_tokens = sum(len(script.tokenize(text)) for _, text in texts)
        self.plan = _plan(prompt, self.state.pace)
        # (delta field, token) for thinking then answer, cut to the request's max_tokens.
        pieces, thinking = script.pieces(self.plan)
        self.max_tokens = script.max_tokens_of(body)
        limit = len(pieces) if self.max_tokens is None else min(self.max_tokens, len(pieces))
        self.finish_reason = "length" if limit < len(pieces) else "stop"
        self.pieces = pieces[:limit]
        self.thinking = min(thinking, limit)
        self.offsets = script.token_offsets(limit, thinking, self.plan.pace, self.plan.think_seconds)
        self.entry: dict[str, Any] = {
            "id": self.id,
            "kind": self.plan.kind,
            "topic": self.plan.topic,
            "started": time.time(),
            "ended": None,
            "outcome": "running",
            "tokens_sent": 0,
            # When the first content token was written (time.time()); None until then. The benchmark
            # subtracts it from the client's first-token time to get the latency the gateway adds.
            "first_token_at": None,
            "stream": bool(body.get("stream")),
            "fault": self.plan.fault.name if self.plan.fault else None,
            "language": self.plan.language,
            "temperature": body.get("temperature"),
            "task": self.plan.task,
            "reasoning": self.plan.reasoning,
            "reasoning_tokens": self.thinking,
            "max_tokens": self.max_tokens,
            "finish_reason": None,
            "drip_chunks": 0,
        }
        self.state.journal.append(self.entry)

    def finish(self, outcome: str) -> None:
        """Record how the request ended (first call wins: a fault is not overwritten)."""
        if self.entry["outcome"] == "running":
            self.entry["outcome"] = outcome
            self.entry["ended"] = time.time()
            log.info(
                "%s kind=%s outcome=%s tokens_sent=%d topic=%r",
                self.id,
                self.plan.kind,
                outcome,
                self.entry["tokens_sent"],
                self.plan.topic,
            )

    def usage(self, completion_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }
        if self.plan.reasoning is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.thinking}
        return usage

    async def respond(self) -> web.StreamResponse:
        """Answer the request, turning hang-ups and cancellation into journal outcomes."""
        self.state.active += 1
        try:
            if self.body.get("stream"):
                return await self._stream()
            return await self._complete()
        except (_ClientGone, ConnectionResetError):
            self.finish("client_closed")
            # The transport is gone; aiohttp quietly drops its failed write of this response.
            return web.Response(status=499)
        except asyncio.CancelledError:
            self.finish("client_closed")
            raise
        finally:
            self.state.active -= 1
            # Every deliberate ending is recorded above; anything else is a bug worth seeing.
            self.finish("error")

    def _abort(self, name: str) -> web.Response:
        """Close the connection (after flushing what was sent) and record the fault."""
        self.finish(f"fault:{name}")
        transport = self.request.transport
        if transport is not None:
            transport.close()
        # Returned only to satisfy aiohttp; writing it fails quietly on the closed transport.
        return web.Response(status=500)

    def _early_fault(self) -> web.Response | None:
        """Faults that happen before any response body: error statuses and hang-ups."""
        fault = self.plan.fault
        if fault is None:
            return None
        if fault.name == "http500":
            self.finish("fault:http500")
            return _error(
                500, "The scripted server had an error while processing your request.", "server_error"
            )
        if fault.name == "http429":
            self.finish("fault:http429")
            return _error(
                429,
                "Rate limit reached (scripted).",
                "requests",
                "rate_limit_exceeded",
                **{"Retry-After": "1"},
            )
        if fault.name == "close":
            return self._abort("close")
        return None

    def _fault_outcome(self) -> str:
        return f"fault:{self.plan.fault.name}" if self.plan.fault else "completed"

    async def _complete(self) -> web.Response:
        early = self._early_fault()
        if early is not None:
            return early
        fault = self.plan.fault
        total = self.offsets[-1] if self.offsets else 0.0
        if fault is not None and fault.name in ("stall", "cut"):
            before = min(fault.after, len(self.pieces))
            elapsed = self.offsets[before - 1] if before else 0.0
            await _sleep(self.request, elapsed)
            if fault.name == "cut":
                return self._abort("cut")
            await _sleep(self.request, fault.stall_seconds)
            await _sleep(self.request, total - elapsed)
        else:
            if fault is not None and fault.name == "drip":
                # Nothing to drip without a stream: the model is just that much slower.
                await _sleep(self.request, fault.stall_seconds)
            await _sleep(self.request, total)
        if _client_gone(self.request):
            raise _ClientGone
        self.entry["tokens_sent"] = len(self.pieces)
        message: dict[str, Any] = {"role": "assistant", "content": self._joined("content")}
        if self.plan.reasoning in ("reasoning_content", "reasoning"):
            message[self.plan.reasoning] = self._joined(self.plan.reasoning)
        body = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage(len(self.pieces)),
        }
        self.entry["finish_reason"] = self.finish_reason
        self.finish(self._fault_outcome())
        return _json_response(body)

    def _joined(self, field_name: str) -> str:
        return "".join(token for name, token in self.pieces if name == field_name)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    @property
    def _include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    async def _send(self, response: web.StreamResponse, data: str) -> None:
        if _client_gone(self.request):
            raise _ClientGone
        await response.write(f"data: {data}\n\n".encode())

    async def _stream(self) -> web.StreamResponse:
        early = self._early_fault()
        if early is not None:
            return early
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        # Chunked on purpose: a "cut" must leave the body visibly unfinished.
        response.enable_chunked_encoding()
        await response.prepare(self.request)
        await self._send(response, _dumps(self._chunk({"role": "assistant", "content": ""})))

        fault = self.plan.fault
        loop = asyncio.get_running_loop()
        if fault is not None and fault.name == "drip":
            await self._drip(response, fault)
        started = loop.time()
        for index, (field_name, token) in enumerate(self.pieces):
            if fault is not None and index == fault.after:
                if fault.name == "cut":
                    return self._abort("cut")
                if fault.name == "stall":
                    await _sleep(self.request, fault.stall_seconds)
                    started += fault.stall_seconds
            if self.offsets[index] > 0:
                # Schedule against the start time so per-token overhead does not add up.
                await _sleep(self.request, started + self.offsets[index] - loop.time())
            elif index % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if index == 0:
                self.entry["first_token_at"] = time.time()
            await self._send(response, _dumps(self._chunk({field_name: token})))
            self.entry["tokens_sent"] = index + 1
        if fault is not None and fault.name == "cut":
            # Fewer tokens than `after`: still cut, right before the end of the stream.
            return self._abort("cut")

        await self._send(response, _dumps(self._chunk({}, self.finish_reason)))
        self.entry["finish_reason"] = self.finish_reason
        if self._include_usage:
            usage_chunk = self._chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = self.usage(len(self.pieces))
            await self._send(response, _dumps(usage_chunk))
        await self._send(response, "[DONE]")
        await response.write_eof()
        self.finish(self._fault_outcome())
        return response

    async def _drip(self, response: web.StreamResponse, fault: script.Fault) -> None:
        """Keep the stream busy without content: one chunk every ``drip_every`` s for ``stall`` s."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        count = int(fault.stall_seconds / fault.drip_every + 1e-9)
        for index in range(count):
            await _sleep(self.request, started + (index + 1) * fault.drip_every - loop.time())
            await self._send(response, _dumps(self._chunk(_DRIP_DELTAS[index % len(_DRIP_DELTAS)])))
            self.entry["drip_chunks"] = index + 1
        await _sleep(self.request, started + fault.stall_seconds - loop.time())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        _state(request).journal.append(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "kind": "other",
                "topic": None,
                "started": time.time(),
                "ended": time.time(),
                "outcome": "rejected",
                "tokens_sent": 0,
                "stream": False,
                "fault": None,
                "task": None,
                "reasoning": None,
                "max_tokens": None,
                "finish_reason": None,
            }
        )
        message = "Request body must be a JSON object with a 'messages' list."
        log.warning("rejected a chat request: %s", message)
        return _error(400, message, "invalid_request_error")
    return await _Completion(request, body).respond()


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the single scripted model."""
    model = _state(request).model
    entry = {"id": model, "object": "model", "created": 0, "owned_by": "scripted-llm"}
    return _json_response({"object": "list", "data": [entry]})


async def healthz(request: web.Request) -> web.Response:
    return _json_response({"status": "ok"})


async def get_requests(request: web.Request) -> web.Response:
    """The journal, oldest first (at most the last ``JOURNAL_LIMIT`` requests)."""
    return _json_response({"requests": list(_state(request).journal)})


async def clear_requests(request: web.Request) -> web.Response:
    _state(request).journal.clear()
    return _json_response({"requests": []})


async def stats(request: web.Request) -> web.Response:
    """``active`` counts chat completions being answered right now (streamed or not)."""
    return _json_response({"active": _state(request).active})


def create_app(pace: float, model: str = "scripted") -> web.Application:
    """Build the application; ``pace`` is the default tokens/s (0 sends without delay)."""
    app = web.Application()
    app[_STATE_KEY] = _State(pace=max(pace, 0.0), model=model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/_scripted/requests", get_requests)
    app.router.add_delete("/_scripted/requests", clear_requests)
    app.router.add_get("/_scripted/stats", stats)
    return app
