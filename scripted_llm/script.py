"""What the scripted LLM says, decided without any I/O.

The server in :mod:`scripted_llm.server` is a stand-in for a real model behind MetaGPT
agents.  Everything it answers is derived here from the prompt alone, so the answers are
deterministic and can be unit-tested without sockets.

Each agent has its answerer in :mod:`scripted_llm.answerers`, which recognises that agent's
prompts and writes its answers; this module asks them in turn and adds what all agents share.
Tests steer the stand-in through *directives* embedded in the user's text (a tutorial's topic,
a teaching plan's lesson), written ``[[key:value]]``, e.g. ``MySQL [[fault:cut]][[after:3]]``.
The value is percent-decoded, so ``%00`` or ``%5D`` can be expressed; a raw value cannot
contain ``]]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from scripted_llm.answerers import ANSWERERS
from scripted_llm.answerers.base import DIRECTIVE_RE, REFUSAL_TEXT, Match, Phase, directive_int
from scripted_llm.answerers.base import pick as _pick

# The tutorial answerer's names, still reached through this module by older callers
# (bench/run.py, the tutorial tests).
from scripted_llm.answerers.tutorial import (
    DEFAULT_SECTIONS,
    MAX_SECTIONS,
    extract_directory,
    extract_language,
    extract_topic,
    outline_text,
    section_text,
)

__all__ = [
    "DEFAULT_FAULT_AFTER",
    "DEFAULT_SECTIONS",
    "DEFAULT_STALL_SECONDS",
    "FAULTS",
    "FAULT_PHASES",
    "KNOWN_DIRECTIVES",
    "MAX_SECTIONS",
    "REFUSAL_TEXT",
    "Fault",
    "Kind",
    "Match",
    "Phase",
    "Plan",
    "_pick",
    "classify",
    "directive_float",
    "directive_int",
    "extract_directory",
    "extract_language",
    "extract_topic",
    "fault_for",
    "match",
    "other_text",
    "outline_text",
    "parse_directives",
    "plan",
    "section_text",
    "tokenize",
]

# The journal's name for a request: an answerer's kind ("outline", "section", "plan_title",
# "plan_part", ...) or "other" when no answerer recognised the prompt.
Kind = str

# An LLM-ish token: optional leading whitespace plus up to 12 non-space characters, or a
# run of trailing whitespace.  Long words are split so that hostile 500-character titles
# still arrive in several chunks, as they would from a real model.
_TOKEN_RE = re.compile(r"\s*\S{1,12}|\s+")

KNOWN_DIRECTIVES = frozenset({"pace", "title", "sections", "fault", "fault_at", "stall", "after"})

FAULTS = frozenset({"http500", "http429", "stall", "cut", "bad_outline", "empty_outline", "close"})
FAULT_PHASES = frozenset({"outline", "section"})
# Faults that change what is said rather than how it is sent; the answerer writes the spoilt text.
_CONTENT_FAULTS = frozenset({"bad_outline", "empty_outline"})

DEFAULT_STALL_SECONDS = 30.0
DEFAULT_FAULT_AFTER = 5


# --------------------------------------------------------------------------- prompts


def parse_directives(text: str) -> tuple[str, dict[str, str]]:
    """Split ``[[key:value]]`` directives out of a topic.

    Returns the topic with directives removed and whitespace collapsed (that is the topic
    the "model" writes about and the journal reports), and ``{key: value}`` with keys
    lower-cased and values percent-decoded.  A repeated key keeps its last value; unknown
    keys are kept so callers can log them.
    """
    directives: dict[str, str] = {}
    for found in DIRECTIVE_RE.finditer(text):
        directives[found.group(1).lower()] = unquote(found.group(2))
    clean = " ".join(DIRECTIVE_RE.sub(" ", text).split())
    return clean, directives


def match(prompt: str) -> Match | None:
    """The first answerer's reading of the prompt, or None when no agent sends such a prompt."""
    for answerer in ANSWERERS:
        found = answerer(prompt)
        if found is not None:
            return found
    return None


def classify(prompt: str) -> Kind:
    """Tell which MetaGPT request this is (the journal's ``kind``), "other" for anything else."""
    found = match(prompt)
    return "other" if found is None else found.kind


# ------------------------------------------------------------------------ directives


def directive_float(directives: Mapping[str, str], key: str, default: float) -> float:
    """A finite, non-negative float directive, or ``default`` when absent or unusable."""
    try:
        value = float(directives[key])
    except (KeyError, ValueError):
        return default
    return value if math.isfinite(value) and value >= 0 else default


@dataclass(frozen=True)
class Fault:
    """A misbehaviour to act out for one request.

    ``after`` is how many content tokens go out before a mid-stream fault (``stall``,
    ``cut``); ``stall_seconds`` is how long a ``stall`` stays silent.
    """

    name: str
    after: int = DEFAULT_FAULT_AFTER
    stall_seconds: float = DEFAULT_STALL_SECONDS


def fault_for(phase: str, directives: Mapping[str, str]) -> Fault | None:
    """The fault a request of this phase (``outline`` or ``section``) must act out, if any.

    A fault hits only the phase named by ``fault_at`` (``outline`` by default), and with
    ``fault_at:section`` it hits every section request of that topic.  Unknown fault names
    and ``other`` requests get no fault.
    """
    name = directives.get("fault", "").strip().lower()
    if name not in FAULTS or phase not in FAULT_PHASES:
        return None
    at = directives.get("fault_at", "outline").strip().lower() or "outline"
    if at != phase:
        return None
    return Fault(
        name=name,
        after=directive_int(directives, "after", DEFAULT_FAULT_AFTER),
        stall_seconds=directive_float(directives, "stall", DEFAULT_STALL_SECONDS),
    )


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Plan:
    """What one chat request will get: text, pace, fault, plus what the journal shows."""

    kind: Kind
    topic: str | None
    language: str | None
    text: str
    pace: float
    fault: Fault | None
    directives: Mapping[str, str]


def plan(prompt: str, default_pace: float) -> Plan:
    """Everything the server needs to answer ``prompt``; ``default_pace`` is its tokens/s."""
    found = match(prompt)
    if found is None:
        return Plan("other", None, None, other_text(prompt), default_pace, None, {})
    topic, directives = parse_directives(found.topic) if found.topic is not None else (None, {})
    fault = fault_for(found.phase, directives)
    if fault is not None and fault.name in _CONTENT_FAULTS:
        text = found.spoil(fault.name, topic or "", directives)
    else:
        text = found.write(topic or "", directives)
    pace = directive_float(directives, "pace", default_pace)
    return Plan(found.kind, topic, found.language, text, pace, fault, directives)


def other_text(prompt: str) -> str:
    """A short generic reply for prompts that no answerer recognises."""
    words = len(tokenize(prompt))
    return (
        "This is a scripted stand-in for a language model, not a real one. "
        f"It only answers the prompts of the MetaGPT agents it was scripted for (prompt tokens: {words})."
    )


def tokenize(text: str) -> list[str]:
    """Split text into LLM-like tokens; ``"".join(tokenize(t)) == t`` for every string."""
    return _TOKEN_RE.findall(text)
