"""Client-side helpers shared by the integration tests: raw SSE reading and content checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

LINK_PREFIX = "\n\n---\n\n[Download "


def body(topic: str, **extra: Any) -> dict[str, Any]:
    return {"model": "write_tutorial", "messages": [{"role": "user", "content": topic}], **extra}


@dataclass
class RawStream:
    status: int
    headers: httpx.Headers
    raw: bytes
    events: list[bytes] = field(default_factory=list)  # each `...\n\n` block, exactly as sent

    def data(self) -> list[Any]:
        out: list[Any] = []
        for event in self.events:
            if event.startswith(b"data: "):
                text = event[len(b"data: ") : -2].decode()
                out.append(text if text == "[DONE]" else json.loads(text))
        return out

    def chunks(self) -> list[dict[str, Any]]:
        return [d for d in self.data() if isinstance(d, dict) and "choices" in d]

    def text(self, key: str = "content") -> str:
        return "".join(c["choices"][0]["delta"].get(key) or "" for c in self.chunks() if c["choices"])


def stream_raw(url: str, payload: Any, timeout: float = 60, **kwargs: Any) -> RawStream:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=timeout, **kwargs) as r:
        raw = r.read()
    events = [block + b"\n\n" for block in raw.split(b"\n\n") if block]
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        assert b"".join(events) == raw, "the stream is not a sequence of \\n\\n-terminated events"
    return RawStream(r.status_code, r.headers, raw, events)


def split_link(content: str) -> tuple[str, str]:
    """(tutorial text, link delta): the content ends with the download link the gateway appends."""
    index = content.rindex(LINK_PREFIX)
    return content[:index], content[index:]
