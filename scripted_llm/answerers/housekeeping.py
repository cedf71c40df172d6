"""Answers for a chat UI's housekeeping requests: chat title, follow-up suggestions, tags.

Open WebUI (0.6 and later) sends the chat model, besides the user's message, a few requests of its
own per turn.  Each is one user message that starts with ``### Task:``, quotes the last messages of
the chat between ``<chat_history>`` and ``</chat_history>`` (as ``USER: ...`` / ``ASSISTANT: ...``
lines) and asks for a JSON object: ``{ "title": ... }``, ``{ "follow_ups": [...] }`` or
``{ "tags": [...] }``.  The task is told by the format it asks for, read only from the template part
before the chat history, so a user's text cannot change it.  Answers are plain JSON, as a model that
follows the template writes them, derived from the user's messages in the history.

The journal kind is ``housekeeping`` and the ``fault_at`` phase ``housekeeping``: a fault aimed at the
agent (``fault_at`` outline or section) spares these requests, and ``[[fault_at:housekeeping]]`` aims
one at them.  The history's directives (pace, reasoning, ...) apply as usual.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Literal

from scripted_llm.answerers.base import DIRECTIVE_RE, REFUSAL_TEXT, Match, pick

Task = Literal["title", "follow_ups", "tags", "other"]

TASK_MARK = "### Task:"
_HISTORY_START = "<chat_history>"
_HISTORY_END = "</chat_history>"
# ``USER: text`` lines as Open WebUI's get_messages_content writes them; a message may span lines.
_ROLE_LINE = re.compile(r"^(USER|ASSISTANT|SYSTEM|TOOL): ?", re.MULTILINE)

_EMOJIS = ("💬", "📚", "💡", "🛠️", "🧭", "📝", "🔍", "🚀")
_NO_EMOJI = re.compile(r"do not use emojis|without emojis|no emojis", re.IGNORECASE)
_WORD = re.compile(r"[^\W_][\w'+#.-]*")
_TITLE_WORDS = 3
_WORD_CHARS = 20
_STOP = frozenset(
    (
        "a", "about", "an", "and", "are", "can", "could", "do", "for", "from", "give", "how", "i", "in",
        "is", "it", "me", "my", "of", "on", "or", "please", "say", "show", "tell", "the", "this", "to",
        "want", "what", "with", "write", "you", "your",
    )
)  # fmt: skip
_PADDING = ("Chat", "Overview", "Discussion")
_DOMAINS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "Technology",
        frozenset(
            (
                "api", "code", "coding", "data", "database", "docker", "git", "http", "java", "javascript",
                "kubernetes", "linux", "mysql", "network", "programming", "python", "redis", "rust", "server",
                "software", "sql", "web",
            )
        ),
    ),
    (
        "Education",
        frozenset(
            ("class", "course", "grammar", "homework", "lesson", "reading", "student", "teaching", "unit")
        ),
    ),
    (
        "Science",
        frozenset(
            ("biology", "chemistry", "math", "mathematics", "physics", "science", "space", "statistics")
        ),
    ),
)  # fmt: skip


# --------------------------------------------------------------------------- prompts


def task_of(prompt: str) -> Task | None:
    """Which housekeeping task a prompt is, or None when it is not a ``### Task:`` prompt at all."""
    if not prompt.lstrip().startswith(TASK_MARK):
        return None
    end = prompt.find(_HISTORY_START)
    template = prompt if end < 0 else prompt[:end]
    keys: tuple[Task, ...] = ("follow_ups", "tags", "title")
    for key in keys:
        if f'"{key}"' in template:
            return key
    return "other"


def chat_history(prompt: str) -> str | None:
    """The text between ``<chat_history>`` and the last ``</chat_history>``, or None."""
    start = prompt.find(_HISTORY_START)
    if start < 0:
        return None
    start += len(_HISTORY_START)
    end = prompt.rfind(_HISTORY_END)
    return prompt[start:end] if end >= start else prompt[start:]


def history_messages(history: str) -> list[tuple[str, str]]:
    """``(role, text)`` pairs (role lower-case) from ``ROLE: text`` lines; text before any is dropped."""
    found = list(_ROLE_LINE.finditer(history))
    out: list[tuple[str, str]] = []
    for index, role in enumerate(found):
        end = found[index + 1].start() if index + 1 < len(found) else len(history)
        out.append((role.group(1).lower(), history[role.end() : end].strip("\n")))
    return out


def match(prompt: str) -> Match | None:
    """The answerer's entry point: a housekeeping request, or None."""
    task = task_of(prompt)
    if task is None:
        return None
    history = chat_history(prompt)
    messages = history_messages(history) if history is not None else []
    users = [text for role, text in messages if role == "user"]
    # The user's words carry the directives; without role lines the whole history stands in.
    topic = "\n".join(users) if users else history
    template = prompt[: prompt.find(_HISTORY_START)] if history is not None else prompt
    no_emoji = bool(_NO_EMOJI.search(template))
    return Match(
        "housekeeping",
        "housekeeping",
        topic,
        None,
        lambda _clean, _directives: answer(task, messages, emoji=not no_emoji),
        _spoil,
        task=task,
    )


def _spoil(fault: str, topic: str, directives: Mapping[str, str]) -> str:
    """Content faults: a refusal (bad_outline) or an empty object (empty_outline), neither usable."""
    return "{}" if fault == "empty_outline" else REFUSAL_TEXT


# --------------------------------------------------------------------------- answers


def _clean(text: str) -> str:
    return " ".join(DIRECTIVE_RE.sub(" ", text).split())


def key_words(text: str, limit: int) -> list[str]:
    """Up to ``limit`` words of ``text`` that say what it is about, in order, without directives."""
    words: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(_clean(text)):
        word = word.rstrip(".-")[:_WORD_CHARS]
        folded = word.casefold()
        if not word or folded in _STOP or folded in seen:
            continue
        seen.add(folded)
        words.append(word)
        if len(words) == limit:
            break
    return words


def _subject(messages: list[tuple[str, str]]) -> str:
    """What the chat is about: the first user message (or any message) with directives removed."""
    users = [text for role, text in messages if role == "user"]
    first = users[0] if users else (messages[0][1] if messages else "")
    return _clean(first)


def title_of(messages: list[tuple[str, str]], emoji: bool = True) -> str:
    """A 3-word title from the first user message, in title case, after an emoji unless told not to."""
    subject = _subject(messages)
    words = [w[:1].upper() + w[1:] for w in key_words(subject, _TITLE_WORDS)]
    for pad in _PADDING:
        if len(words) >= _TITLE_WORDS:
            break
        if pad not in words:
            words.append(pad)
    title = " ".join(words)
    return f"{_EMOJIS[pick(subject, len(_EMOJIS))]} {title}" if emoji else title


def follow_ups_of(messages: list[tuple[str, str]]) -> list[str]:
    """Three questions the user might ask next, naming the chat's subject."""
    subject = " ".join(key_words(_subject(messages), _TITLE_WORDS)) or "this"
    return [
        f"Can you explain {subject} in more detail?",
        f"What are common mistakes with {subject}?",
        f"Could you give a practical example of {subject}?",
    ]


def tags_of(messages: list[tuple[str, str]]) -> list[str]:
    """One or two broad domains plus a subdomain (the subject's first key word)."""
    words = key_words(" ".join(text for _, text in messages), 50)
    folded = {w.casefold() for w in words}
    domains = [name for name, keys in _DOMAINS if folded & keys] or ["General"]
    subject = key_words(_subject(messages), 1)
    tags = domains[:2]
    if subject and subject[0].casefold() not in {d.casefold() for d in tags}:
        tags.append(subject[0][:1].upper() + subject[0][1:])
    return tags


def answer(task: Task, messages: list[tuple[str, str]], emoji: bool = True) -> str:
    """The JSON a model would answer for ``task`` given the parsed chat history."""
    obj: dict[str, object]
    if task == "title":
        obj = {"title": title_of(messages, emoji)}
    elif task == "follow_ups":
        obj = {"follow_ups": follow_ups_of(messages)}
    elif task == "tags":
        obj = {"tags": tags_of(messages)}
    else:
        obj = {}
    return json.dumps(obj, ensure_ascii=False)
