"""OpenAI Responses API wire format: the request model and the event sequence of one response.

A response's output is a list of items: the agent's planning (its outline, and an upstream reasoning
model's thinking) as `reasoning` items with `reasoning_text` content, the way open-weight servers stream
reasoning, and its text as `message` items with `output_text`. Every event carries `type` and a
`sequence_number` counting from 0 without gaps; that number is what a client resumes from.

Unknown OpenAI fields are accepted and ignored, as for chat. Fields that are not OpenAI's are marked
"extension".
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from app.api.protocol import MAX_TOKENS, ChatCompletionRequest, ChatMessage, FileLink, Usage, validate_body
from app.errors import APIError, InvalidRequest

if TYPE_CHECKING:
    from app.agents.base import Kind

# A response's events: (sequence number, type, the data's JSON).
Event = tuple[int, str, bytes]
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete"})
# ResponseError.code is one of OpenAI's own codes; the `error` event carries the gateway's.
_RESPONSE_ERROR_CODES = {429: "rate_limit_exceeded"}


def new_id(prefix: str) -> str:
    """An unguessable id (192 random bits): `resp_`, `rs_`, `msg_` and 48 hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


class InputPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class InputItem(BaseModel):
    """A message item (`{"role", "content"}`, with or without `"type": "message"`); other items (tool
    calls, reasoning from earlier turns) are accepted and skipped."""

    model_config = ConfigDict(extra="allow")
    type: StrictStr = "message"
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: StrictStr | list[InputPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content or [] if p.type in ("input_text", "output_text"))


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr
    input: StrictStr | list[InputItem]
    stream: StrictBool | None = False
    background: StrictBool | None = False
    store: StrictBool | None = True
    # Kept on the response as given. `instructions` is not passed to the agent: it writes by its own
    # prompts (MetaGPT's); a chat UI's housekeeping request gets it as its system message.
    instructions: StrictStr | None = None
    metadata: dict[StrictStr, StrictStr] | None = Field(default=None, max_length=16)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    # extension: the language the agent writes in, as for chat.
    language: StrictStr | None = Field(default=None, min_length=1, max_length=64)

    def as_chat(self) -> ChatCompletionRequest:
        """The same request as a chat completion's: what the agents and admission understand."""
        messages: list[ChatMessage] = []
        if self.instructions:
            messages.append(ChatMessage(role="system", content=self.instructions))
        if isinstance(self.input, str):
            messages.append(ChatMessage(role="user", content=self.input))
        else:
            for item in self.input:
                if item.type == "message" and item.role is not None:
                    messages.append(ChatMessage(role=item.role, content=item.text()))
        if not any(m.role == "user" for m in messages):
            raise InvalidRequest("The input must contain a user message with text.", param="input")
        return ChatCompletionRequest(
            model=self.model,
            messages=messages,
            temperature=self.temperature,
            max_completion_tokens=self.max_output_tokens,
            language=self.language,
        )


def parse_responses_request(payload: Any) -> ResponsesRequest:
    return validate_body(ResponsesRequest, payload)


def frame(event: Event) -> bytes:
    """One event on the wire, as OpenAI sends it: its type as the SSE event name, then the data."""
    return b"event: " + event[1].encode() + b"\ndata: " + event[2] + b"\n\n"


class ResponseStream:
    """The events of one response, in order: `start`, then `token` for each token, then `finish` or
    `fail`; `snapshot` is the response object at any point (what `GET` and the final event show)."""

    def __init__(self, request: ResponsesRequest, rid: str | None = None) -> None:
        self.id = rid or new_id("resp")
        self.created_at = int(time.time())
        self.request = request
        self.status = "in_progress"
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # output items; the last may be open
        self._parts: list[list[str]] = []  # each item's text so far
        self._open: Kind | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.file: FileLink | None = None
        self.completed_at: int | None = None
        self.reasoning_tokens = 0

    # -- the events ------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> Event:
        seq = self.sequence
        self.sequence += 1
        return seq, kind, orjson.dumps({"type": kind, **fields, "sequence_number": seq})

    def start(self) -> list[Event]:
        snapshot = self.snapshot()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def token(self, kind: Kind, text: str, count: int = 1) -> list[Event]:
        """A token of the agent's: a delta of the open item of its kind (opening one if needed)."""
        events = [] if self._open == kind else self._switch(kind)
        index = len(self.items) - 1
        self._parts[-1].append(text)
        if kind == "reasoning":
            self.reasoning_tokens += count
            event = self._event(
                "response.reasoning_text.delta",
                item_id=self.items[-1]["id"],
                output_index=index,
                content_index=0,
                delta=text,
            )
        else:
            event = self._event(
                "response.output_text.delta",
                item_id=self.items[-1]["id"],
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        events.append(event)
        return events

    def _switch(self, kind: Kind) -> list[Event]:
        events = self._close()
        if kind == "reasoning":
            item: dict[str, Any] = {"type": "reasoning", "id": new_id("rs"), "summary": [], "content": []}
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
        else:
            item = {"type": "message", "id": new_id("msg"), "role": "assistant", "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        item["status"] = "in_progress"
        self.items.append(item)
        self._parts.append([])
        self._open = kind
        index = len(self.items) - 1
        events.append(self._event("response.output_item.added", output_index=index, item=item))
        events.append(
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
        )
        return events

    def _close(self) -> list[Event]:
        """End the open item: its text's done event, its part's, its own."""
        if self._open is None:
            return []
        item, index, text = self.items[-1], len(self.items) - 1, "".join(self._parts[-1])
        self._parts[-1] = [text]
        ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
        if self._open == "reasoning":
            part: dict[str, Any] = {"type": "reasoning_text", "text": text}
            done = self._event("response.reasoning_text.done", **ids, text=text)
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            done = self._event("response.output_text.done", **ids, text=text, logprobs=[])
        item["content"] = [part]
        item["status"] = "completed"
        self._open = None
        return [
            done,
            self._event("response.content_part.done", **ids, part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def finish(self, usage: Usage, link: FileLink | None) -> list[Event]:
        events = []
        if link is not None:  # the download link ends the text, as for chat
            events += self.token("content", link.link_markdown(), 0)
            self.file = link
        events += self._close()
        self.status = "completed"
        self.completed_at = int(time.time())
        self.usage = {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
        events.append(self._event("response.completed", response=self.snapshot()))
        return events

    def fail(self, error: APIError) -> list[Event]:
        for item in self.items:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
                item["content"] = [self._part_of(item, "".join(self._parts[self.items.index(item)]))]
        self._open = None
        self.status = "failed"
        self.error = {
            "code": _RESPONSE_ERROR_CODES.get(error.status, "server_error"),
            "message": error.message,
        }
        return [
            self._event("error", code=error.code or error.type, message=error.message, param=error.param),
            self._event("response.failed", response=self.snapshot()),
        ]

    def cancelled(self) -> None:
        """Stopped by a cancel request: no event (OpenAI has none); the stored object says so."""
        for n, item in enumerate(self.items):
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
                item["content"] = [self._part_of(item, "".join(self._parts[n]))]
        self._open = None
        self.status = "cancelled"

    @staticmethod
    def _part_of(item: dict[str, Any], text: str) -> dict[str, Any]:
        if item["type"] == "reasoning":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    # -- the object ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The response object now: the output so far (an open item with its text so far)."""
        output = []
        for n, item in enumerate(self.items):
            if item["status"] == "in_progress":
                item = {**item, "content": [self._part_of(item, "".join(self._parts[n]))]}
            output.append(item)
        r = self.request
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": bool(r.background),
            "completed_at": self.completed_at,
            "error": self.error,
            "incomplete_details": None,
            "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens,
            "metadata": r.metadata or {},
            "model": r.model,
            "output": output,
            "parallel_tool_calls": False,
            "store": r.store is not False,
            "temperature": r.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": "none",
            "tools": [],
            "top_p": None,
            "truncation": "disabled",
            "usage": self.usage,
        }
        if self.file is not None:
            body.update(self.file.fields())  # extension
        return body
