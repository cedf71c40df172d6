"""Server-sent events framing: pure functions from values to the exact bytes on the wire."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # nginx must relay each event as it is written, never buffer the stream.
    "X-Accel-Buffering": "no",
}


def data(payload: Any) -> bytes:
    """One `data:` event. Compact JSON never contains a raw newline, so one line always suffices."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def comment(text: str = "") -> bytes:
    """A comment event (`: text`): clients ignore it; it keeps proxies and dead-client detection alive."""
    lines = text.splitlines() or [""]
    return b"".join(b": " + line.encode("utf-8") + b"\n" for line in lines) + b"\n"
