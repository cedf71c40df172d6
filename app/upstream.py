"""The upstream LLM call, lean: one aiohttp session per worker loop, SSE decoded by hand.

The openai SDK builds a pydantic object for every streamed chunk (measured: about a third of the
worker's busy time), and httpx's stack (httpcore, anyio, h11) costs far more per read than aiohttp's
C-accelerated client; at 20 tokens/s every token is its own read. The gateway needs only each chunk's
`choices[0].delta.content` and the final `usage`, so it reads them from the JSON directly. Every
failure leaves here as an `UpstreamError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from app.errors import UpstreamError

# Retried before any byte of the answer arrived: nothing was generated for the client yet.
_RETRY_STATUSES = {429, 500, 502, 503, 504}
_MAX_BACKOFF_SECONDS = 5.0


class EventDecoder:
    """Server-sent events to `data` payloads: fields other than `data` and comments are ignored."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events


@dataclass
class Delta:
    """One upstream chunk: its content text (maybe empty) and, on the last one, the usage."""

    content: str
    usage: dict[str, Any] | None = None


def parse_chunk(payload: bytes) -> Delta:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream LLM sent a malformed event.", code="upstream_bad_output") from None
    if not isinstance(chunk, dict):
        raise UpstreamError("The upstream LLM sent a malformed event.", code="upstream_bad_output")
    if "error" in chunk:
        raise UpstreamError("The upstream LLM reported an error mid-stream.", code="upstream_status")
    content = ""
    choices = chunk.get("choices")
    if choices and isinstance(choices, list) and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            content = delta["content"]
    usage = chunk.get("usage")
    return Delta(content, usage if isinstance(usage, dict) else None)


def _backoff(attempt: int, response: aiohttp.ClientResponse | None) -> float:
    if response is not None and (after := response.headers.get("retry-after", "")).isdigit():
        return min(float(after), _MAX_BACKOFF_SECONDS)
    return min(0.5 * 2**attempt, _MAX_BACKOFF_SECONDS)


def new_session(api_key: str, read_timeout: float, connect_timeout: float) -> aiohttp.ClientSession:
    """The worker's one session (connection pool). Create it on the loop that will use it."""
    return aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
        connector=aiohttp.TCPConnector(limit=0),
    )


async def stream_chat(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any], retries: int
) -> AsyncIterator[Delta]:
    """POST a streaming chat completion and yield its deltas; the response is closed on every exit."""
    body = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    for attempt in range(retries + 1):
        try:
            async with session.post(url, json=body) as response:
                if response.status in _RETRY_STATUSES and attempt < retries:
                    await asyncio.sleep(_backoff(attempt, response))
                    continue
                if response.status != 200:
                    raise UpstreamError(
                        f"The upstream LLM answered with HTTP {response.status}.", code="upstream_status"
                    )
                decoder = EventDecoder()
                async for raw in response.content.iter_any():
                    for data in decoder.feed(raw):
                        if data == b"[DONE]":
                            return
                        yield parse_chunk(data)
                return
        except aiohttp.ClientConnectorError:
            if attempt < retries:
                await asyncio.sleep(_backoff(attempt, None))
                continue
            raise UpstreamError(
                "The upstream LLM could not be reached.", code="upstream_unavailable"
            ) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError("The upstream LLM timed out.", code="upstream_timeout") from None
        except aiohttp.ClientError:
            # a dropped connection, a cut body, a malformed response
            raise UpstreamError(
                "The upstream LLM dropped the connection or sent a broken response.",
                code="upstream_unavailable",
            ) from None
