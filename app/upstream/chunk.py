"""One chat completion chunk: only the content and reasoning deltas and the final usage are read.

The openai SDK builds a pydantic object per chunk; here orjson parses it and two keys are looked up.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.errors import UpstreamError


def parse_chunk(payload: bytes) -> tuple[str, str, dict[str, Any] | None]:
    """One upstream chunk: its content text and its reasoning text (either maybe empty) and, on the
    last one, the usage. Reasoning models' servers send thinking as `delta.reasoning_content` (vLLM,
    DeepSeek) or `delta.reasoning` (others)."""
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream LLM sent a malformed event.", code="upstream_bad_output") from None
    if type(chunk) is not dict:
        raise UpstreamError("The upstream LLM sent a malformed event.", code="upstream_bad_output")
    if "error" in chunk:
        raise UpstreamError("The upstream LLM reported an error mid-stream.", code="upstream_status")
    content = reasoning = ""
    choices = chunk.get("choices")
    if choices and type(choices) is list and type(choices[0]) is dict:
        delta = choices[0].get("delta")
        if type(delta) is dict:
            text = delta.get("content")
            if type(text) is str and text:
                content = text
            else:  # a chunk of thinking has no content: the usual chunk does not look further
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if type(thought) is str:
                    reasoning = thought
    usage = chunk.get("usage")
    return content, reasoning, usage if type(usage) is dict else None
