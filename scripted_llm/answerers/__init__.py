"""One answerer per MetaGPT agent the scripted LLM stands in for.

Each module exposes ``match(prompt: str) -> Match | None`` (see :mod:`.base`).  Supporting a new
agent is one module here and one entry in :data:`ANSWERERS`.
"""

from __future__ import annotations

from scripted_llm.answerers import housekeeping, teaching_plan, tutorial
from scripted_llm.answerers.base import Answerer, Match

__all__ = ["ANSWERERS", "Answerer", "Match"]

# Asked in order; the first match wins.  Housekeeping goes first: its prompts start with "### Task:",
# which no agent's does, and quote the user's text, which may look like an agent's prompt.  The
# teaching plan goes next because it only accepts a prompt that ends with its template's closing
# tag, while the tutorial's fragments may also occur inside a lesson.
ANSWERERS: tuple[Answerer, ...] = (
    housekeeping.match,
    teaching_plan.match,
    tutorial.match,
)
