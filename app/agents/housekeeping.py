"""Chat UIs' housekeeping requests, answered by the upstream LLM itself instead of an agent.

Open WebUI, at its defaults, sends the chosen model three more requests for every user message: a chat
title, follow-up suggestions and tags. Each is one user message that starts with `### Task:` and asks
for JSON. Run as agents they would each write a tutorial nobody asked for; passed to the upstream LLM
as the plain chat completion they are, they are answered in seconds, in the format asked, with no
file. `GATEWAY_HOUSEKEEPING_PATTERNS` lists what is recognised (regular expressions matched at the
start of the last user message); an empty list turns this off.

Importable anywhere: nothing here imports metagpt.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from app.agents.base import Agent, AgentRequest, Artifact, Sink

if TYPE_CHECKING:
    from app.runtime.llm import Runtime

# Open WebUI 0.6+ task prompts: title, follow-ups, tags (and its other tasks: queries, emoji, ...).
OPEN_WEBUI = r"### Task:"


class Housekeeping(Agent):
    """Not a model of `/v1/models`: the answer to a recognised housekeeping request of any model.
    Its generations are counted under `model="housekeeping"`."""

    id = "housekeeping"
    name = "Housekeeping"
    description = "A chat UI's own request (title, follow-ups, tags), passed to the upstream LLM."
    artifact = "none"
    default_title = "none"

    def __init__(self, patterns: list[str]) -> None:
        self._patterns = [re.compile(pattern) for pattern in patterns]

    def recognises(self, text: str) -> bool:
        return any(pattern.match(text) for pattern in self._patterns)

    async def run(self, request: AgentRequest, sink: Sink, runtime: Runtime) -> Artifact | None:
        sink.kind = "content"
        llm = runtime.llm(sink, request.temperature, request.max_tokens)
        await llm.chat(list(request.messages))
        return None
