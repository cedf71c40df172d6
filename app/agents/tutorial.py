"""`write_tutorial`: MetaGPT's TutorialAssistant, streamed as it writes, its file written by the service.

What the client sees: the outline-planning tokens (MetaGPT's JSON directory) as reasoning, then the
tutorial itself as content: `# <title>`, then each section after MetaGPT's own `\n\n\n` separator. That
is exactly `TutorialAssistant.total_content`, which is what the file holds.
"""

from __future__ import annotations

from typing import Any

from metagpt.actions.write_tutorial import WriteDirectory
from metagpt.roles.role import Role
from metagpt.roles.tutorial_assistant import TutorialAssistant
from metagpt.schema import Message
from pydantic import PrivateAttr

from app.agents.base import Agent, AgentRequest, Artifact, Sink
from app.errors import AgentError, APIError, UpstreamError
from app.runtime.llm import Runtime, upstream_failure

SECTION_SEPARATOR = "\n\n\n"  # what TutorialAssistant puts between the title and each section


class BadOutline(ValueError):
    """The LLM's outline is not a usable `{"title": str, "directory": [{str: [str, ...]}, ...]}`."""


def check_outline(titles: Any) -> None:
    if not isinstance(titles, dict) or not isinstance(titles.get("title"), str):
        raise BadOutline("the outline has no title")
    directory = titles.get("directory")
    if not isinstance(directory, list) or not directory:
        raise BadOutline("the outline has no sections")
    for entry in directory:
        if not (isinstance(entry, dict) and len(entry) == 1):
            raise BadOutline("an outline section is not a one-key object")
        (subsections,) = entry.values()
        if not isinstance(subsections, list):
            raise BadOutline("an outline section's subsections are not a list")


class ServiceTutorialAssistant(TutorialAssistant):
    """TutorialAssistant that reports its phases to the sink and leaves file writing to the service."""

    _sink: Sink = PrivateAttr()
    _failure: BaseException | None = PrivateAttr(default=None)

    async def _act(self) -> Message:
        planning = isinstance(self.rc.todo, WriteDirectory)
        self._sink.kind = "reasoning" if planning else "content"
        if not planning:
            self._sink.emit("content", SECTION_SEPARATOR)
        try:
            return await super()._act()
        except Exception as exc:
            # NOTE: Role.run re-raises every failure as Exception(traceback text); keep the original.
            self._failure = BadOutline(str(exc)) if planning and upstream_failure(exc) is None else exc
            raise

    async def _handle_directory(self, titles: dict) -> Message:
        check_outline(titles)
        message = await super()._handle_directory(titles)
        self._sink.emit("content", f"# {self.main_title}")
        return message

    async def react(self) -> Message:
        return await Role.react(self)  # not TutorialAssistant.react: it writes where the LLM's title says


def _failure(exc: BaseException) -> APIError:
    if isinstance(exc, BadOutline):
        return UpstreamError(
            f"The upstream LLM returned an unusable outline: {exc}.", code="upstream_bad_output"
        )
    return upstream_failure(exc) or AgentError("The agent failed while writing the tutorial.")


class WriteTutorial(Agent):
    id = "write_tutorial"
    name = "Tutorial writer"
    description = "MetaGPT TutorialAssistant: writes a Markdown tutorial about the topic you give."
    artifact = "tutorial"
    default_title = "tutorial"

    async def run(self, request: AgentRequest, sink: Sink, runtime: Runtime) -> Artifact:
        role = ServiceTutorialAssistant(
            language=request.language,
            context=runtime.context(),
            llm=runtime.llm(sink, request.temperature),
        )
        role._sink = sink
        try:
            await role.run(request.topic)
        except Exception as exc:
            raise _failure(role._failure or exc) from exc
        return Artifact(title=role.main_title, text=role.total_content)
