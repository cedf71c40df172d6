"""Server-sent events framing: pure functions from values to the exact bytes on the wire."""

from __future__ import annotations

from collections.abc import Callable
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


_SLOT = "\ue000"  # a private-use character: never in a template's fixed parts


class Template:
    """An event whose payload has one string slot, serialized once: each event then costs one dump
    of the string instead of the whole payload. `build(slot)` must return the payload with `slot` in
    place of the string; `template(text)` is then byte-identical to `data(build(text))`."""

    def __init__(self, build: Callable[[str], Any]) -> None:
        parts = data(build(_SLOT)).split(orjson.dumps(_SLOT))
        if len(parts) != 2:
            raise ValueError("a template needs exactly one slot")
        self._head, self._tail = parts

    def __call__(self, text: str) -> bytes:
        return self._head + orjson.dumps(text) + self._tail
