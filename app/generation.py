"""One request's agent run: started on the bridge, read from the WSGI greenlet, cancelled if abandoned.

Cancellation: the SSE generator's `finally` runs when the client goes away (gunicorn closes the
response iterator after a failed write, and heartbeats make that write happen during LLM silence) or
when the stream ends; it cancels the job's future, which cancels the asyncio task, which raises
CancelledError inside MetaGPT at its `await`; the provider's `async with` then closes the upstream
HTTP response. See ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

import gevent.queue

from app import sse
from app.agents.base import AgentRequest, AgentResult, AgentSpec, Kind, Sink
from app.bridge import AsyncioBridge
from app.errors import AgentError, APIError
from app.protocol import Completion, TutorialFile

if TYPE_CHECKING:
    from app.llm import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str


@dataclass(frozen=True)
class Finished:
    result: AgentResult


@dataclass(frozen=True)
class Failed:
    error: APIError


Event = Token | Finished | Failed


class Generation:
    """Runs `spec` on the bridge; its events arrive on a gevent queue in the order they happened."""

    def __init__(
        self, bridge: AsyncioBridge, runtime: Runtime, spec: AgentSpec, request: AgentRequest
    ) -> None:
        # NOTE: the queue is filled by the asyncio loop's greenlet and read by the request's greenlet;
        # both run on the worker's one thread, so a plain gevent queue is safe and wakes the reader.
        self._events: gevent.queue.Queue[Event] = gevent.queue.Queue()
        self._pending: Event | None = None
        sink = Sink(lambda kind, text: self._events.put(Token(kind, text)))
        self._future = bridge.submit(self._job(spec, request, sink, runtime))

    async def _job(self, spec: AgentSpec, request: AgentRequest, sink: Sink, runtime: Runtime) -> None:
        try:
            result = await spec.run(request, sink, runtime)
        except asyncio.CancelledError:
            raise
        except APIError as exc:
            self._events.put(Failed(exc))
        except Exception:
            log.exception("agent %s failed", spec.id)
            self._events.put(Failed(AgentError("The agent failed.")))
        else:
            self._events.put(Finished(result))

    def next(self, timeout: float | None) -> Event | None:
        """The next event, or None after `timeout` seconds of silence."""
        if self._pending is not None:
            event, self._pending = self._pending, None
            return event
        try:
            return self._events.get(timeout=timeout)
        except gevent.queue.Empty:
            return None

    def peek(self, timeout: float) -> Event | None:
        """Wait up to `timeout` for the first event without consuming it."""
        if self._pending is None:
            self._pending = self.next(timeout)
        return self._pending

    def cancel(self) -> None:
        if not self._future.done():
            self._future.cancel()


def collect(generation: Generation) -> tuple[str, str, AgentResult]:
    """Run to the end (non-streaming): the whole content, the whole reasoning, and the result."""
    parts: dict[Kind, list[str]] = {"content": [], "reasoning": []}
    try:
        while True:
            event = generation.next(timeout=None)
            if isinstance(event, Token):
                parts[event.kind].append(event.text)
            elif isinstance(event, Finished):
                return "".join(parts["content"]), "".join(parts["reasoning"]), event.result
            elif isinstance(event, Failed):
                raise event.error
    finally:
        generation.cancel()


def tutorial_file(result: AgentResult, base_url: str) -> TutorialFile | None:
    if result.file is None:
        return None
    f = result.file
    return TutorialFile(name=f.name, url=f"{base_url}/download/{quote(f.name)}", bytes=f.bytes, title=f.title)


def stream(
    generation: Generation, completion: Completion, base_url: str, heartbeat: float
) -> Iterator[bytes]:
    """The SSE body. Headers are already decided; from here an error is an event, then [DONE]."""
    try:
        yield sse.data(completion.chunk({"role": "assistant", "content": ""}))
        while True:
            event = generation.next(timeout=heartbeat)
            if event is None:
                yield sse.comment("keep-alive")
            elif isinstance(event, Token):
                key = "content" if event.kind == "content" else "reasoning_content"
                yield sse.data(completion.chunk({key: event.text}))
            elif isinstance(event, Finished):
                file = tutorial_file(event.result, base_url)
                extra = {}
                if file is not None:
                    yield sse.data(completion.chunk({"content": file.link_markdown()}))
                    extra["tutorial"] = file.as_dict()  # extension
                yield sse.data(completion.chunk({}, finish_reason="stop", **extra))
                if completion.include_usage:
                    yield sse.data(completion.usage_chunk(event.result.usage))
                break
            else:
                yield sse.data(event.error.body())
                break
        yield sse.DONE
    finally:
        generation.cancel()
