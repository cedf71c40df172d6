"""`write_teaching_plan`: MetaGPT's Teacher, streamed part by part, its file written by the service.

The last user message is the lesson. Teacher asks the LLM for each part of `TeachingPlanBlock.TOPICS`
in turn (title, hours, objectives, ... translation questions). A reply wraps the part in
`[TEACHING_PLAN_BEGIN]`/`[TEACHING_PLAN_END]` tags that MetaGPT strips, so what the client sees is:
each raw reply as reasoning while it streams, then the part as MetaGPT keeps it as content, the parts
separated by Teacher's own `\n\n\n`. The content is exactly the teaching plan Teacher assembles, which
is what the file holds. The plan is written in the request's `language`, which is also the language
the lesson teaches (Teacher's `teaching_language`).
"""

from __future__ import annotations

from metagpt.actions.write_teaching_plan import TeachingPlanBlock, WriteTeachingPlanPart
from metagpt.roles.teacher import Teacher
from metagpt.schema import Message
from pydantic import PrivateAttr

from app.agents.base import Agent, AgentRequest, Artifact, Sink
from app.errors import AgentError, UpstreamError
from app.runtime.llm import Runtime, upstream_failure

PART_SEPARATOR = "\n\n\n"  # what Teacher puts between two parts


class ServiceTeacher(Teacher):
    """Teacher that streams each part to the sink and leaves file writing to the service."""

    _sink: Sink = PrivateAttr()
    _language: str = PrivateAttr()
    _failure: BaseException | None = PrivateAttr(default=None)
    _parts: int = PrivateAttr(default=0)

    async def _think(self) -> bool:
        if not self.actions:
            # Teacher's own builds its actions in WriteTeachingPlanPart's default language (Chinese).
            if not self.rc.news:
                raise ValueError("Lesson content invalid.")
            lesson = self.rc.news[0].content
            self.set_actions(
                [
                    WriteTeachingPlanPart(i_context=lesson, topic=topic, language=self._language)
                    for topic in TeachingPlanBlock.TOPICS
                ]
            )
        return await super()._think()

    async def _act(self) -> Message:
        self._sink.kind = "reasoning"
        try:
            message = await super()._act()
        except Exception as exc:
            # NOTE: Role.run re-raises every failure as Exception(traceback text); keep the original.
            self._failure = exc
            raise
        self._sink.emit("content", (PART_SEPARATOR if self._parts else "") + message.content)
        self._parts += 1
        return message

    async def save(self, content: str) -> None:
        """Not into MetaGPT's workspace: the service publishes the plan."""


class WriteTeachingPlan(Agent):
    id = "write_teaching_plan"
    name = "Teaching plan writer"
    description = (
        "MetaGPT Teacher: writes a Markdown teaching plan, part by part, for the lesson text you give."
    )
    artifact = "teaching_plan"
    default_title = "teaching-plan"

    async def run(self, request: AgentRequest, sink: Sink, runtime: Runtime) -> Artifact:
        context = runtime.context()
        context.kwargs.set("language", request.language)
        context.kwargs.set("teaching_language", request.language)
        role = ServiceTeacher(context=context, llm=runtime.llm(sink, request.temperature))
        role._sink = sink
        role._language = request.language
        try:
            message = await role.run(request.topic)
        except Exception as exc:
            failure = role._failure or exc
            raise upstream_failure(failure) or AgentError(
                "The agent failed while writing the teaching plan."
            ) from exc
        plan = message.content if message is not None else ""
        if not plan.strip():
            raise UpstreamError(
                "The upstream LLM returned an empty teaching plan.", code="upstream_bad_output"
            )
        return Artifact(title=role.course_title, text=plan)
