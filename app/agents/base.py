"""The agent contract: what an agent is given, what it hands back, and the registry that names it.

An agent is a subclass of `Agent` registered with one line in `app.agents.registry`. Its `run` is
called once per request on the worker's asyncio loop, builds fresh MetaGPT objects each time, gives
them `runtime.llm(sink, ...)` as their LLM, and returns the `Artifact` to publish. The rest is the
service's: relaying every LLM token to the client as it streams (`sink.kind` says whether the call
being made is `reasoning` or `content`), usage, the file's name and storage, its link, metrics,
errors and cancellation. The one rule for the content: the text the client saw as `content` is the
file, byte for byte; an agent that post-processes a reply streams the raw reply as `reasoning` and
`sink.emit`s the processed text as content.

Importable anywhere: nothing here imports metagpt.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from app.api.protocol import Usage
from app.errors import UpstreamError

if TYPE_CHECKING:
    from app.generation.call import Call
    from app.runtime.llm import Runtime

Kind = Literal["reasoning", "content"]
Emit = Callable[[Kind, str], None]


@dataclass(frozen=True)
class AgentRequest:
    topic: str  # the last user message's text: a tutorial's topic, a lesson's text
    language: str
    temperature: float | None = None
    messages: tuple[dict[str, str], ...] = ()  # the whole conversation, as text
    max_tokens: int | None = None


@dataclass(frozen=True)
class Artifact:
    """What an agent hands back to be published as a downloadable file."""

    title: str  # names the file (slugged) and describes it to the client
    text: str  # the file's content: exactly the `content` the client was streamed
    media_type: str = "text/markdown"


@dataclass(frozen=True)
class WrittenFile:
    name: str
    bytes: int
    title: str
    media_type: str = "text/markdown"
    kind: str = "file"  # the agent's `artifact`: also the name of the field the client finds it under


@dataclass
class AgentResult:
    usage: Usage
    file: WrittenFile | None = None


class Sink:
    """Where one request's output goes. Each request's LLM holds its own sink, so tokens can't cross."""

    def __init__(self, emit: Emit, call: Callable[[Call], None], max_content: int = 4 << 20) -> None:
        self._emit = emit
        self.call = call
        self.kind: Kind = "reasoning"  # what the agent's next LLM call streams as
        self.usage = Usage()
        self.content_parts: list[str] = []
        self._max_content = max_content
        self._room = max_content  # characters of content still allowed

    def emit(self, kind: Kind, text: str) -> None:
        """Text the agent itself adds (a title, a separator, a processed reply)."""
        self.relayed(kind, text)
        self._emit(kind, text)

    def relayed(self, kind: Kind, text: str) -> None:
        """Text that was sent to the client directly (an LLM reply, relayed as it streamed)."""
        if kind == "content":
            self.content_parts.append(text)
            self._room -= len(text)
            if self._room < 0:
                raise UpstreamError(
                    f"The text grew past {self._max_content} characters; nothing was saved.",
                    code="upstream_bad_output",
                )

    def content(self) -> str:
        return "".join(self.content_parts)


class Agent(ABC):
    """One model of `/v1/models`: a MetaGPT role run for one request.

    Class attributes describe it; `run` does the work. Failures: raise `app.errors.APIError`
    subclasses (`UpstreamError` for an unusable LLM reply); anything else becomes `agent_error`.
    """

    id: ClassVar[str]  # the model id clients send
    name: ClassVar[str]  # human-readable
    description: ClassVar[str]
    artifact: ClassVar[str]  # what its file is (`tutorial`): the final chunk's extension field
    default_title: ClassVar[str]  # the file's title when the agent's own is unusable
    owned_by: ClassVar[str] = "metagpt"
    created: ClassVar[int] = 1_700_000_000

    @abstractmethod
    async def run(self, request: AgentRequest, sink: Sink, runtime: Runtime) -> Artifact | None:
        """Run the role for `request`, its LLM calls streamed through `sink`; the file to publish
        (None: the answer is the streamed text alone)."""


@dataclass
class Registry:
    agents: dict[str, Agent] = field(default_factory=dict)

    def add(self, agent: Agent) -> None:
        if agent.id in self.agents:
            raise ValueError(f"agent {agent.id!r} registered twice")
        self.agents[agent.id] = agent

    def get(self, model: str) -> Agent | None:
        return self.agents.get(model)

    def __iter__(self) -> Iterator[Agent]:
        return iter(self.agents.values())
