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

Directives (:data:`KNOWN_DIRECTIVES`):

``[[pace:N]]``
    tokens per second for this request (0 = no delay), instead of the server's ``--pace``.
``[[title:T]]``, ``[[sections:N]]``
    the tutorial's title and number of sections, the teaching plan's title.
``[[section_chars:N]]``
    each tutorial section is at least N characters long (a verbose model).
``[[hostile:1]]``, ``[[canary:URL]]``
    the tutorial's title, first section heading and every section carry HTML and links that a client
    must never run or load (script, event handlers, ``javascript:`` links, remote images, ...); those
    that would send a request send it to URL (default ``http://canary.invalid``).
``[[chunk_chars:N]]``
    the answer's tokens are sent joined into chunks of at least N characters.
``[[fault:NAME]]``
    a misbehaviour (:data:`FAULTS`): ``http500``, ``http429``, ``close`` (hang up before answering),
    ``cut`` / ``stall`` (after ``[[after:N]]`` tokens, default 5; a stall lasts ``[[stall:S]]``
    seconds, default 30), ``bad_outline`` / ``empty_outline`` (spoilt text), ``drip`` (before the
    answer, chunks without content, one every ``[[drip_every:S]]`` seconds, default 1, for
    ``[[stall:S]]`` seconds, default 30).
``[[fault_at:PHASE]]``
    which requests the fault hits (:data:`FAULT_PHASES`): ``outline`` (default; the first request of
    an agent run), ``section`` (every later request), ``housekeeping`` (a chat UI's title,
    follow-up and tag requests).
``[[reasoning:MODE]]``
    answer like a reasoning model (:data:`REASONING_MODES`): ``think`` puts ``<think>...</think>``
    before the content (Ollama, llama.cpp), ``reasoning_content`` / ``reasoning`` send the thinking
    as that delta field (vLLM, DeepSeek) or message field before any content.
``[[think_seconds:S]]``
    with ``reasoning``, the thinking lasts about S seconds whatever the pace.

The request body's ``max_completion_tokens`` or ``max_tokens`` caps the reply (thinking included),
which then ends with ``finish_reason: "length"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
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
    "DEFAULT_DRIP_EVERY",
    "DEFAULT_FAULT_AFTER",
    "DEFAULT_SECTIONS",
    "DEFAULT_STALL_SECONDS",
    "FAULTS",
    "FAULT_PHASES",
    "KNOWN_DIRECTIVES",
    "MAX_SECTIONS",
    "REASONING_MODES",
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
    "max_tokens_of",
    "other_text",
    "outline_text",
    "parse_directives",
    "pieces",
    "plan",
    "reasoning_mode",
    "section_text",
    "thinking_text",
    "token_offsets",
    "tokenize",
]

# The journal's name for a request: an answerer's kind ("outline", "section", "plan_title",
# "plan_part", ...) or "other" when no answerer recognised the prompt.
Kind = str

# An LLM-ish token: optional leading whitespace plus up to 12 non-space characters, or a
# run of trailing whitespace.  Long words are split so that hostile 500-character titles
# still arrive in several chunks, as they would from a real model.
_TOKEN_RE = re.compile(r"\s*\S{1,12}|\s+")

KNOWN_DIRECTIVES = frozenset(
    {
        "pace", "title", "sections", "fault", "fault_at", "stall", "after", "drip_every", "reasoning",
        "think_seconds", "section_chars", "chunk_chars", "hostile", "canary",
    }
)  # fmt: skip

FAULTS = frozenset({"http500", "http429", "stall", "cut", "bad_outline", "empty_outline", "close", "drip"})
FAULT_PHASES = frozenset({"outline", "section", "housekeeping"})
REASONING_MODES = frozenset({"think", "reasoning_content", "reasoning"})
# Faults that change what is said rather than how it is sent; the answerer writes the spoilt text.
_CONTENT_FAULTS = frozenset({"bad_outline", "empty_outline"})

DEFAULT_STALL_SECONDS = 30.0
DEFAULT_FAULT_AFTER = 5
DEFAULT_DRIP_EVERY = 1.0
# A drip faster than this would just flood the client.
_MIN_DRIP_EVERY = 0.01


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

    ``after`` is how many tokens (thinking included) go out before a mid-stream fault
    (``stall``, ``cut``); ``stall_seconds`` is how long a ``stall`` stays silent or a ``drip``
    drips, ``drip_every`` the seconds between two drip chunks.
    """

    name: str
    after: int = DEFAULT_FAULT_AFTER
    stall_seconds: float = DEFAULT_STALL_SECONDS
    drip_every: float = DEFAULT_DRIP_EVERY


def fault_for(phase: str, directives: Mapping[str, str]) -> Fault | None:
    """The fault a request of this phase (``outline``, ``section``, ``housekeeping``) must act out.

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
        drip_every=max(directive_float(directives, "drip_every", DEFAULT_DRIP_EVERY), _MIN_DRIP_EVERY),
    )


def reasoning_mode(directives: Mapping[str, str]) -> str | None:
    """The ``reasoning`` directive's mode when it is one of :data:`REASONING_MODES`, else None."""
    mode = directives.get("reasoning", "").strip().lower()
    return mode if mode in REASONING_MODES else None


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    """The reply's token cap: ``max_completion_tokens``, else ``max_tokens``; None if neither is >= 1."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Plan:
    """What one chat request will get: text, pace, fault, plus what the journal shows.

    ``reasoning`` is the reasoning mode (None: a plain model) and ``thinking`` what the model
    "thinks" before answering ``text``; ``think_seconds`` how long the thinking lasts (None: paced
    like the answer).  ``task`` is the housekeeping task, if the request is one.
    """

    kind: Kind
    topic: str | None
    language: str | None
    text: str
    pace: float
    fault: Fault | None
    directives: Mapping[str, str]
    task: str | None = None
    reasoning: str | None = None
    thinking: str = ""
    think_seconds: float | None = None


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
    reasoning = reasoning_mode(directives)
    thinking = thinking_text(found.kind, topic or "") if reasoning else ""
    think_seconds = directive_float(directives, "think_seconds", -1.0) if reasoning else -1.0
    return Plan(
        found.kind,
        topic,
        found.language,
        text,
        pace,
        fault,
        directives,
        task=found.task,
        reasoning=reasoning,
        thinking=thinking,
        think_seconds=think_seconds if think_seconds >= 0 else None,
    )


_THINKING_TOPIC_CHARS = 80


def thinking_text(kind: Kind, topic: str) -> str:
    """What a reasoning model "thinks" before answering: it names the topic and quotes JSON.

    The braces and quotes are on purpose: tests use them to prove that the thinking never
    reaches a JSON parser (MetaGPT's, a chat UI's).
    """
    subject = " ".join(topic.split())[:_THINKING_TOPIC_CHARS] or "this request"
    return (
        f'Okay, the user wants a {kind} answer about "{subject}". '
        f'I could answer {{"title": "x"}} right away, but let me think about it first. '
        f"What matters most for {subject}? The answer must keep the exact format the prompt asks for, "
        f"so no extra text around it. Right, I am ready to answer."
    )


def pieces(plan: Plan) -> tuple[list[tuple[str, str]], int]:
    """The reply as ``(delta field, token)`` in sending order, and how many of them are thinking.

    The field is ``content``, or the reasoning mode's field (``reasoning_content``,
    ``reasoning``) for thinking sent apart; in ``think`` mode the thinking is content inside
    ``<think>`` tags.  Joining the content tokens gives the message's content.
    """
    answer = [("content", token) for token in _chunked(tokenize(plan.text), plan.directives)]
    if plan.reasoning is None:
        return answer, 0
    if plan.reasoning == "think":
        thinking = [("content", t) for t in tokenize(f"<think>\n{plan.thinking}\n</think>\n\n")]
    else:
        thinking = [(plan.reasoning, t) for t in tokenize(plan.thinking)]
    return thinking + answer, len(thinking)


def _chunked(tokens: list[str], directives: Mapping[str, str]) -> list[str]:
    """With ``[[hostile:1]]``, ``[[canary:URL]]``
        the tutorial's title, first section heading and every section carry HTML and links that a client
        must never run or load (script, event handlers, ``javascript:`` links, remote images, ...); those
        that would send a request send it to URL (default ``http://canary.invalid``).
    ``[[chunk_chars:N]]``, consecutive tokens joined into pieces of at least N characters, as
        servers that send several tokens per chunk do."""
    size = int(directives.get("chunk_chars", "0") or 0) if directives.get("chunk_chars", "").isdigit() else 0
    if size <= 1:
        return tokens
    out: list[str] = []
    piece: list[str] = []
    length = 0
    for token in tokens:
        piece.append(token)
        length += len(token)
        if length >= size:
            out.append("".join(piece))
            piece, length = [], 0
    if piece:
        out.append("".join(piece))
    return out


def token_offsets(count: int, thinking: int, pace: float, think_seconds: float | None) -> list[float]:
    """When each of ``count`` tokens is due, in seconds from the first (0 = no delay).

    The first ``thinking`` tokens are spread evenly over ``think_seconds`` when it is set;
    otherwise every token takes ``1 / pace`` (nothing when ``pace`` is 0).
    """
    offsets: list[float] = []
    spread = think_seconds is not None and thinking > 0
    base = 0.0
    for index in range(count):
        if spread and index < thinking:
            assert think_seconds is not None
            offsets.append(think_seconds * (index + 1) / thinking)
            continue
        if spread:
            base, step = float(think_seconds or 0.0), index - thinking + 1
        else:
            step = index + 1
        offsets.append(base + step / pace if pace > 0 else base)
    return offsets


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
