"""What every agent shares: its request, the sink its tokens go to, its result, and the registry.

An agent is an async function `run(request, sink, runtime) -> AgentResult`, called once per request on
the worker's asyncio loop; it builds fresh MetaGPT objects each time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from app.protocol import Usage

if TYPE_CHECKING:
    from app.llm import Runtime
    from app.upstream import UpstreamStream

Kind = Literal["reasoning", "content"]
Emit = Callable[[Kind, str], None]


@dataclass(frozen=True)
class AgentRequest:
    topic: str
    language: str
    temperature: float | None = None


@dataclass(frozen=True)
class WrittenFile:
    name: str
    bytes: int
    title: str


@dataclass
class AgentResult:
    usage: Usage
    file: WrittenFile | None = None


@dataclass(eq=False)
class Call:
    """One LLM call MetaGPT awaits on the loop. The request's greenlet streams it (`app.generation`)
    and settles `future` with (reply, usage) or an `UpstreamError`; `cancel()` comes from the loop."""

    payload: dict[str, Any]
    kind: Kind
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[tuple[str, dict[str, Any] | None]]
    stream: UpstreamStream | None = None
    cancelled: bool = False
    parts: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None

    def settle(self, exc: BaseException | None = None) -> None:
        if not self.cancelled:
            result = ("".join(self.parts), self.usage)
            self.loop.call_soon_threadsafe(_settle, self.future, result, exc)

    def cancel(self) -> None:
        """Nobody waits any more: a reader blocked on the upstream wakes and drops it."""
        self.cancelled = True
        if self.stream is not None and not self.stream.finished:
            self.stream.close()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class Sink:
    """Where one request's output goes. Each request's LLM holds its own sink, so tokens can't cross."""

    def __init__(self, emit: Emit, call: Callable[[Call], None]) -> None:
        self._emit = emit
        self.call = call
        self.kind: Kind = "reasoning"
        self.usage = Usage()
        self.content_parts: list[str] = []

    def emit(self, kind: Kind, text: str) -> None:
        """Text the agent itself adds (a title, a separator)."""
        self.relayed(kind, text)
        self._emit(kind, text)

    def relayed(self, kind: Kind, text: str) -> None:
        """Text that was sent to the client directly (an LLM reply, relayed as it streamed)."""
        if kind == "content":
            self.content_parts.append(text)

    def content(self) -> str:
        return "".join(self.content_parts)


AgentRun = Callable[[AgentRequest, Sink, "Runtime"], Awaitable[AgentResult]]


@dataclass(frozen=True)
class AgentSpec:
    id: str
    description: str
    run: AgentRun
    owned_by: str = "metagpt"
    created: int = 1_700_000_000


@dataclass
class Registry:
    agents: dict[str, AgentSpec] = field(default_factory=dict)

    def add(self, spec: AgentSpec) -> None:
        if spec.id in self.agents:
            raise ValueError(f"agent {spec.id!r} registered twice")
        self.agents[spec.id] = spec

    def get(self, model: str) -> AgentSpec | None:
        return self.agents.get(model)

    def __iter__(self) -> Iterator[AgentSpec]:
        return iter(self.agents.values())
