"""What the fleet tests' clients do: one streamed generation read to its end (or to the cut), and what
came of it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.integration.helpers import body, split_link

# Short, fast generations: one section, tokens as fast as the scripted LLM sends them.
QUICK = "[[sections:1]][[pace:0]]"


@dataclass
class Generation:
    status: int
    raw: bytes
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""  # the transport error that ended it, if any

    @property
    def events(self) -> list[bytes]:
        return [block + b"\n\n" for block in self.raw.split(b"\n\n") if block]

    @property
    def done(self) -> bool:
        """Complete: a 200 stream that ended with `data: [DONE]` and no error event."""
        events = self.events
        return (
            self.status == 200
            and not self.error
            and bool(events)
            and events[-1] == b"data: [DONE]\n\n"
            and not any(b'"error"' in e[:20] for e in events)
        )

    def chunks(self) -> list[dict[str, Any]]:
        out = []
        for event in self.events:
            if event.startswith(b"data: {"):
                data = json.loads(event[len(b"data: ") : -2])
                if "choices" in data:
                    out.append(data)
        return out

    def content(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks() if c["choices"])

    def tutorial(self) -> tuple[str, dict[str, Any]]:
        """The tutorial's text as streamed (without the link) and the last chunk's `tutorial` info."""
        text, _ = split_link(self.content())
        return text, self.chunks()[-1]["tutorial"]

    def has_link(self) -> bool:
        return b"/download/" in self.raw


def generate(url: str, topic: str, headers: dict[str, str] | None = None, timeout: float = 60) -> Generation:
    """POST a streamed generation and read all of it; a cut connection is recorded, not raised."""
    raw = b""
    try:
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=body(topic, stream=True),
            headers=headers,
            timeout=timeout,
        ) as r:
            status, head = r.status_code, dict(r.headers)
            try:
                for piece in r.iter_raw():
                    raw += piece
            except httpx.HTTPError as exc:
                return Generation(status, raw, head, f"{type(exc).__name__}: {exc}")
    except httpx.HTTPError as exc:
        return Generation(0, raw, {}, f"{type(exc).__name__}: {exc}")
    return Generation(status, raw, head)
