"""OpenAI Chat Completions wire format: the request model and builders for every response object.

Unknown OpenAI fields are accepted and ignored, as OpenAI-compatible servers do. Fields that are not
OpenAI's are marked "extension".
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, field_validator

from app.errors import InvalidRequest

if TYPE_CHECKING:
    from app.agents.base import Agent, AgentResult
    from app.api.links import LinkSigner

BodyModel = TypeVar("BodyModel", bound=BaseModel)
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
# Content part types OpenAI defines; only text feeds an agent, the others are accepted and skipped.
_KNOWN_PART_TYPES = {"text", "image_url", "input_audio", "file", "refusal"}
# The most tokens a request may ask for: a 32-bit count, as upstream servers parse it (a larger one
# could not even be written out again past 64 bits).
MAX_TOKENS = 2**31 - 1


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in _KNOWN_PART_TYPES:
            raise ValueError(f"unknown content part type {value!r}")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Role
    content: StrictStr | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content or [] if p.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    # Honoured by requests passed to the upstream LLM as they are (chat UIs' housekeeping); an agent's
    # calls use GATEWAY_LLM_MAX_TOKENS each.
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    # extension: the language the agent writes in (MetaGPT's own default is Chinese).
    language: StrictStr | None = Field(default=None, min_length=1, max_length=64)

    def topic(self) -> str:
        """The last user message's text: what the agent works on."""
        for message in reversed(self.messages):
            if message.role == "user":
                text = message.text().strip()
                if text:
                    return text
                break
        raise InvalidRequest("The last user message must contain text.", param="messages")


def parse_request(payload: Any) -> ChatCompletionRequest:
    return validate_body(ChatCompletionRequest, payload)


def validate_body(model: type[BodyModel], payload: Any) -> BodyModel:
    """A request body as `model`, or a 400 naming the field that is wrong (chat and Responses alike)."""
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        # A union reports one error per branch; the deepest one says what is really wrong.
        error = max(exc.errors(), key=lambda e: len(e["loc"]))
        param = ".".join(str(part) for part in error["loc"] if not _is_union_tag(part)) or None
        raise InvalidRequest(f"Invalid value for '{param}': {error['msg']}.", param=param) from None


def _is_union_tag(part: int | str) -> bool:
    """pydantic names union branches in error locations ('str', 'list[ContentPart]'): not fields."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "none"})


@dataclass(frozen=True)
class FileLink:
    """The file an agent wrote, as the client is told about it: in the final chunk (or the completion)
    under `file`, and under the agent's artifact name (`tutorial`) too (extension)."""

    name: str
    url: str
    bytes: int
    title: str
    media_type: str = "text/markdown"
    kind: str = "file"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "bytes": self.bytes,
            "title": self.title,
            "media_type": self.media_type,
        }

    def fields(self) -> dict[str, dict[str, Any]]:
        """The extension fields that carry it: `file`, and its kind's name."""
        value = self.as_dict()
        return {"file": value, self.kind: value}

    def link_markdown(self) -> str:
        """The content delta that ends the text: a blank line, a rule, then the download link."""
        return f"\n\n---\n\n[Download {self.name}]({self.url})\n"


def file_link(result: AgentResult, base_url: str, links: LinkSigner | None = None) -> FileLink | None:
    """Where the client downloads the file of `result` (`GET /download/<name>`), if it has one; with
    `links`, signed so that it opens without the API key."""
    f = result.file
    if f is None:
        return None
    url = f"{base_url}/download/{quote(f.name)}"
    if links is not None:
        url += "?" + links.query(f.name)
    return FileLink(name=f.name, url=url, bytes=f.bytes, title=f.title, media_type=f.media_type, kind=f.kind)


@dataclass
class Usage:
    """Token usage of every upstream LLM call the agent made for one completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def as_dict(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }


@dataclass
class Completion:
    """Identity shared by every object of one completion: one `id` and one `created`."""

    model: str
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            body["usage"] = None
        body.update(extra)
        return body

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.as_dict(),
        }

    def whole(self, content: str, reasoning: str, usage: Usage, file: FileLink | None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if reasoning:
            message["reasoning_content"] = reasoning
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage.as_dict(),
        }
        if file is not None:
            body.update(file.fields())  # extension
        return body


def model_object(agent: Agent) -> dict[str, Any]:
    """An agent as OpenAI's model object, with `name` and `description` (chat UIs show the name)."""
    return {
        "id": agent.id,
        "object": "model",
        "created": agent.created,
        "owned_by": agent.owned_by,
        "name": agent.name,
        "description": agent.description,
    }
