"""What every answerer implements and the few helpers its answers are built from.

An answerer is a module for one MetaGPT agent.  Its ``match(prompt)`` returns a :class:`Match`
for the prompts that agent sends and ``None`` for every other prompt; the match says which
journal kind the request is, which ``fault_at`` phase reaches it, which user text it quotes
(directives included) and how to write the answer, proper or spoilt.  Everything shared by all
agents (directive parsing, faults, pacing) happens in :mod:`scripted_llm.script`, so an answerer
only knows its agent's templates and prose.

This module imports nothing from :mod:`scripted_llm.script`, which imports the answerers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

# The moments a ``fault_at`` directive can name: the first request of a MetaGPT run, which decides
# the shape of the document, the requests that fill it in, and a chat UI's own requests (title,
# follow-ups, tags; see :mod:`.housekeeping`).
Phase = Literal["outline", "section", "housekeeping"]

# ``[[key:value]]``, the way tests steer the scripted LLM from inside the user's text.
DIRECTIVE_RE = re.compile(r"\[\[([A-Za-z_][A-Za-z0-9_]*):(.*?)\]\]", re.DOTALL)

# What a bad_outline fault answers instead: a refusal that no MetaGPT parser accepts.
REFUSAL_TEXT = "Sorry, I cannot help with that."

# ``write(topic, directives)``: the answer, given the topic with directives removed and
# whitespace collapsed, and the parsed directives.
Writer = Callable[[str, Mapping[str, str]], str]
# ``spoil(fault, topic, directives)``: the malformed answer a content fault (``bad_outline``,
# ``empty_outline``) asks for instead.
Spoiler = Callable[[str, str, Mapping[str, str]], str]


@dataclass(frozen=True)
class Match:
    """A prompt an answerer recognised, and how to answer it.

    ``topic`` is the user's text exactly as the prompt quotes it (directives included), or None
    when the prompt's shape is known but the text cannot be cut out.  ``language`` is what the
    prompt asks the answer to be written in, when it says.  ``task`` names a housekeeping task
    (``title``, ``follow_ups``, ``tags``, ``other``) for the journal; None for agent requests.
    """

    kind: str
    phase: Phase
    topic: str | None
    language: str | None
    write: Writer
    spoil: Spoiler
    task: str | None = None


# The interface: ``def match(prompt: str) -> Match | None``.
Answerer = Callable[[str], Match | None]


def pick(seed: str, options: int) -> int:
    """Deterministic choice (unlike ``hash()``, stable across processes)."""
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % options


def directive_int(directives: Mapping[str, str], key: str, default: int, maximum: int | None = None) -> int:
    """A non-negative int directive (clamped to ``maximum``), or ``default``."""
    try:
        value = int(directives[key].strip())
    except (KeyError, ValueError):
        return default
    if value < 0:
        return default
    return min(value, maximum) if maximum is not None else value
