"""Client-side helpers shared by the integration tests: raw SSE reading and content checks."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

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


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` on `url`/metrics whose labels include `labels`."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def settle(url: str, name: str, expected: float, timeout: float = 10) -> float:
    """Poll `name` until it equals `expected` (or `timeout` passes); its last value."""
    deadline = time.monotonic() + timeout
    while (value := metric(url, name)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def hold_stream(
    client: httpx.Client, url: str, topic: str, stack: ExitStack, headers: dict[str, str] | None = None
) -> httpx.Response:
    """Send a streaming request; when admitted (200), read its first chunk and keep it open until
    `stack` closes. Returns the response, whatever its status."""
    request = client.build_request(
        "POST", f"{url}/v1/chat/completions", json=body(topic, stream=True), headers=headers
    )
    response = client.send(request, stream=True)
    stack.callback(response.close)
    if response.status_code == 200:
        chunks = response.iter_raw()
        next(chunks)  # the role chunk: the generation runs
        # NOTE: the iterator is kept: once collected, httpx closes the response (a hang-up).
        response.extensions["test.chunks"] = chunks
    return response
