"""What every agent shares: its request, the sink its tokens go to, its result, and the registry.

An agent is an async function `run(request, sink, runtime) -> AgentResult`, called once per request on
the worker's asyncio loop; it builds fresh MetaGPT objects each time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from app.protocol import Usage

if TYPE_CHECKING:
    from app.llm import Runtime

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


class Sink:
    """Where one request's tokens go. Each request's LLM holds its own sink, so tokens can't cross."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self.kind: Kind = "reasoning"
        self.usage = Usage()
        self.content_parts: list[str] = []

    def token(self, text: str) -> None:
        """A token from the upstream LLM, shown as whatever the agent's current phase is."""
        if text:
            self.emit(self.kind, text)

    def emit(self, kind: Kind, text: str) -> None:
        if kind == "content":
            self.content_parts.append(text)
        self._emit(kind, text)

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
