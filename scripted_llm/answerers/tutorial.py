"""Answers for MetaGPT's ``TutorialAssistant``: a table of contents, then one section per entry.

MetaGPT sends two prompt shapes (``DIRECTORY_PROMPT`` and ``CONTENT_PROMPT`` from
``metagpt/prompts/tutorial_assistant.py``); both quote the user's topic, which may carry
directives.  The table of contents is compact JSON that ``WriteDirectory`` parses; a section is
Markdown that names the topic, so tests can tell concurrent streams apart.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Literal

from scripted_llm.answerers.base import REFUSAL_TEXT, Match, directive_int, pick

TutorialKind = Literal["outline", "section", "other"]

# Fragments of the MetaGPT templates.  They are matched literally because the whole
# point of this server is to answer exactly what MetaGPT asks.
_TOPIC_START = 'technical tutorial with the topic "'
_OUTLINE_MARK = "Please provide the specific table of contents for this tutorial"
_SECTION_MARK = "Now I will give you the module directory titles for the topic."
_DIRECTORY_MARK = "The module directory titles for the topic is as follows:\n"
# What follows the closing quote of the topic in each template.  Looking for these
# (instead of the end of the line) keeps topics with quotes or newlines intact.
_TOPIC_ENDS = ('".\n\n' + _OUTLINE_MARK, '".\n\n' + _SECTION_MARK)

DEFAULT_SECTIONS = 3
MAX_SECTIONS = 50
MAX_SECTION_CHARS = 4 << 20  # [[section_chars:N]] caps here


# --------------------------------------------------------------------------- prompts


def classify(prompt: str) -> TutorialKind:
    """Tell which MetaGPT request this is: table of contents, one section, or anything else."""
    if _TOPIC_START not in prompt:
        return "other"
    if _OUTLINE_MARK in prompt:
        return "outline"
    if _SECTION_MARK in prompt and _DIRECTORY_MARK in prompt:
        return "section"
    return "other"


def _topic_span(prompt: str) -> tuple[int, int] | None:
    start = prompt.find(_TOPIC_START)
    if start < 0:
        return None
    start += len(_TOPIC_START)
    ends = [pos for pos in (prompt.find(end, start) for end in _TOPIC_ENDS) if pos >= 0]
    if ends:
        return start, min(ends)
    # Not one of the two templates: the topic runs to the last '".' on its line.
    line_end = prompt.find("\n", start)
    line_end = len(prompt) if line_end < 0 else line_end
    end = prompt.rfind('".', start, line_end)
    return (start, end) if end >= 0 else None


def extract_topic(prompt: str) -> str | None:
    """Return the raw topic (directives included) quoted in the prompt, or None."""
    span = _topic_span(prompt)
    return None if span is None else prompt[span[0] : span[1]]


def extract_directory(prompt: str) -> dict[str, list[str]] | None:
    """Return the one-section directory a CONTENT_PROMPT asks about, or None.

    MetaGPT formats the directory dict with ``str()``, which is a single-line Python
    repr, so the line after the marker is all of it.  The search starts after the topic
    so that a topic that happens to contain the marker text cannot mislead it.
    """
    span = _topic_span(prompt)
    pos = prompt.find(_DIRECTORY_MARK, span[1] if span else 0)
    if pos < 0:
        return None
    pos += len(_DIRECTORY_MARK)
    line_end = prompt.find("\n", pos)
    line = prompt[pos : len(prompt) if line_end < 0 else line_end]
    try:
        value = ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict) or not value:
        return None
    directory: dict[str, list[str]] = {}
    for key, subs in value.items():
        items = subs if isinstance(subs, list | tuple) else [subs]
        directory[str(key)] = [str(item) for item in items]
    return directory


_LANGUAGE_LINE = re.compile(r"strictly in the specified language, (.*)\.[ \t]*$", re.MULTILINE)


def extract_language(prompt: str) -> str | None:
    """The language MetaGPT asked for (its prompts say "strictly in the specified language, X.")."""
    found = _LANGUAGE_LINE.search(prompt)
    return found.group(1) if found else None


def match(prompt: str) -> Match | None:
    """The answerer's entry point: a table-of-contents or section request, or None."""
    kind = classify(prompt)
    if kind == "other":
        return None
    topic = extract_topic(prompt)
    language = extract_language(prompt)
    if kind == "outline":
        return Match("outline", "outline", topic, language, outline_text, _spoil_outline)
    directory = extract_directory(prompt) or {"Overview": []}
    return Match(
        "section",
        "section",
        topic,
        language,
        lambda clean, directives: section_text(
            clean,
            directory,
            directive_int(directives, "section_chars", 0, maximum=MAX_SECTION_CHARS),
            hostile_canary(directives),
        ),
        _spoil_section,
    )


def _spoil_outline(fault: str, topic: str, directives: Mapping[str, str]) -> str:
    """bad_outline: not a dict at all; empty_outline: a valid outline with no sections."""
    if fault == "empty_outline":
        title = json.loads(outline_text(topic, directives))["title"]
        return json.dumps({"title": title, "directory": []}, ensure_ascii=False)
    return REFUSAL_TEXT


def _spoil_section(fault: str, topic: str, directives: Mapping[str, str]) -> str:
    """With ``fault_at:section`` a section gets the refusal or nothing at all."""
    return "" if fault == "empty_outline" else REFUSAL_TEXT


# --------------------------------------------------------------------------- answers


_REQUEST_PHRASE = re.compile(
    r"^(?:please\s+)?(?:(?:write|create|make|give)\s+(?:me\s+)?)?(?:a|an)?\s*(?:short\s+|brief\s+)?"
    r"tutorial\s+(?:about|on|for)\s+",
    re.IGNORECASE,
)


def _subject(topic: str) -> str:
    """What the tutorial is about: "a tutorial about MySQL" is about MySQL."""
    return _REQUEST_PHRASE.sub("", topic).strip() or topic or "this subject"


_TITLES = (
    "A Practical Guide to {t}",
    "{t}: From Basics to Practice",
    "Mastering {t}",
    "Getting Started with {t}",
)

_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Introduction to {t}", ("What is {t}", "Why {t} Matters", "Key Concepts of {t}")),
    ("Setting Up {t}", ("Installing {t}", "Configuring the Environment", "Verifying the {t} Setup")),
    ("Core Features of {t}", ("Basic Operations in {t}", "Common Patterns", "Handling Errors in {t}")),
    ("Working with {t} in Practice", ("A First Project with {t}", "Testing Your Work", "Debugging Tips")),
    ("Advanced {t} Techniques", ("Performance Tuning for {t}", "Scaling {t}", "Extending {t}")),
    ("Best Practices for {t}", ("Code Organisation", "Security Considerations for {t}", "Maintenance")),
    ("Troubleshooting {t}", ("Reading {t} Diagnostics", "Frequent Pitfalls", "Getting Help")),
    ("Next Steps with {t}", ("Further Reading on {t}", "Community Resources", "Where to Go from Here")),
)


def outline_text(topic: str, directives: Mapping[str, str]) -> str:
    """The table of contents MetaGPT's ``WriteDirectory`` expects, as compact JSON.

    JSON of strings and lists is also a valid Python literal, so MetaGPT's
    ``ast.literal_eval`` parsing reads it back unchanged (NULs included, as ``\\u0000``).
    ``title`` and ``sections`` directives override the title and the section count.
    """
    subject = _subject(topic)
    title = (
        directives["title"] if "title" in directives else _TITLES[pick(topic, len(_TITLES))].format(t=subject)
    )
    hostile = hostile_canary(directives)
    if hostile is not None and "title" not in directives:
        title = HOSTILE_TITLE.format(c=hostile, t=subject)
    count = directive_int(directives, "sections", DEFAULT_SECTIONS, maximum=MAX_SECTIONS)
    directory: list[dict[str, list[str]]] = []
    for index in range(count):
        if index < len(_SECTIONS):
            heading, subs = _SECTIONS[index]
            name = heading.format(t=subject)
        else:
            subs = _SECTIONS[index % len(_SECTIONS)][1]
            name = f"Further Topics in {subject}, Part {index - len(_SECTIONS) + 1}"
        if hostile is not None and index == 0:
            name = HOSTILE_HEADING.format(c=hostile, t=subject)
        n_subs = 2 + pick(f"{topic}\0{index}", 2)
        directory.append({name: [sub.format(t=subject) for sub in subs[:n_subs]]})
    return json.dumps({"title": title, "directory": directory}, ensure_ascii=False)


_INTROS = (
    "This part of the tutorial covers {s} in the context of {t}. By the end of it you "
    "will understand how the ideas fit together and how to apply {t} with confidence in "
    "everyday engineering work.",
    "In this section we look at {s}. Understanding this area is what separates casual use "
    "of {t} from productive, reliable use of {t} in real projects.",
)

_PARAGRAPHS = (
    "When working with {t}, {u} is one of the first things practitioners run into. The "
    "essential idea is simple: keep the moving parts small, make their behaviour explicit, "
    "and check every assumption against the documentation of {t}.",
    "{u} builds directly on what came before. Teams that adopt {t} usually start with a "
    "minimal setup, measure how it behaves under realistic load, and only then add the "
    "refinements that their particular use of {t} requires.",
    "A useful way to think about {u} is as a contract between your code and {t}. Each side "
    "promises something, and most problems in production come from a promise that was "
    "never written down.",
    "Before going further with {u}, it is worth noting that {t} rewards consistency. Pick "
    "one convention, apply it everywhere, and let tooling enforce it so that reviews can "
    "focus on behaviour rather than style.",
    "In practice {u} involves a handful of small, repeatable steps. Write them down, "
    "automate them, and revisit them whenever {t} releases a new version, because defaults "
    "change more often than people expect.",
    "The most common mistake with {u} is doing too much at once. Introduce one change to "
    "your {t} setup at a time and confirm its effect before moving on to the next.",
)

_CODE = '''def summarize(topic: str = {t!r}) -> str:
    """Return a one-line summary used in the {u!r} example."""
    steps = ["plan", "build", "verify"]
    return f"{{topic}}: " + " -> ".join(steps)


print(summarize())'''


def _fence(code: str) -> str:
    """A backtick fence longer than any run inside ``code``, so it cannot be closed early."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    return "`" * max(3, longest + 1)


def section_text(
    topic: str, directory: Mapping[str, list[str]], min_chars: int = 0, hostile: str | None = None
) -> str:
    """The Markdown for one directory entry, as MetaGPT's ``WriteContent`` expects.

    Names the topic verbatim several times (tests use it to tell concurrent streams
    apart), has one ``###`` heading per subsection and one fenced code block; with
    ``min_chars``, closing paragraphs follow until the section is at least that long (a
    verbose model's answer); with ``hostile`` (a canary URL), :data:`HOSTILE_MARKDOWN` follows.
    """
    subject = _subject(topic)
    parts: list[str] = []
    for heading, subs in directory.items():
        parts.append(f"## {heading}")
        parts.append(_INTROS[pick(f"{topic}\0{heading}", len(_INTROS))].format(s=heading, t=subject))
        code_at = pick(f"{topic}\0{heading}\0code", len(subs)) if subs else -1
        for index, sub in enumerate(subs):
            parts.append(f"### {sub}")
            first = pick(f"{topic}\0{sub}", len(_PARAGRAPHS))
            parts.append(_PARAGRAPHS[first].format(u=sub, t=subject))
            if index % 2 == 0:
                second = (first + 1 + pick(sub, len(_PARAGRAPHS) - 1)) % len(_PARAGRAPHS)
                parts.append(_PARAGRAPHS[second].format(u=sub, t=subject))
            if index == code_at:
                code = _CODE.format(t=subject, u=sub)
                fence = _fence(code)
                parts.append(f"The following example shows {sub} with {subject}:")
                parts.append(f"{fence}python\n{code}\n{fence}")
    if hostile is not None:
        parts.append(HOSTILE_MARKDOWN.format(c=hostile, t=subject))
    length, extra = sum(len(part) + 2 for part in parts), 0
    while length < min_chars:
        paragraph = _PARAGRAPHS[extra % len(_PARAGRAPHS)].format(u=f"{subject} in depth", t=subject)
        parts.append(paragraph)
        length, extra = length + len(paragraph) + 2, extra + 1
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- hostile text

# ``[[hostile:1]]``: what a model might write (prompt-injected, or copying a web page) that a client
# rendering the Markdown must never run. Each would, if it ran or loaded, call alert(), change the
# document's title, or send a request to the canary (``[[canary:URL]]``, default an unresolvable name),
# so a browser test can tell. ``{c}`` is the canary, ``{t}`` the subject.
DEFAULT_CANARY = "http://canary.invalid"

HOSTILE_TITLE = "{t} <script>alert('title')</script> in Practice"
HOSTILE_HEADING = "Setting Up {t} <img src=x onerror=\"alert('heading');document.title='pwned'\">"

HOSTILE_MARKDOWN = """### Things a model should never have written about {t}

<script>alert("script"); document.title = "pwned"; fetch("{c}/script");</script>

<img src="x" onerror="alert('onerror'); fetch('{c}/onerror')"> An image that fails to load.

<img src="{c}/remote-image.png" alt="a remote image"> ![a tracking pixel]({c}/pixel.png)

[A harmless-looking link](javascript:alert("markdown-link")) and [an encoded one](jav&#x09;ascript:alert(1)).

<a href="javascript:fetch('{c}/href')">A raw link</a> <a href="JaVaScRiPt&colon;alert(1)">an entity link</a>
<a href="data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;">a data link</a>

<iframe src="{c}/iframe" srcdoc="<script>parent.alert('srcdoc')</script>"></iframe>
<object data="{c}/object"></object><embed src="{c}/embed">

<svg onload="alert('svg')"><circle r="5"></circle><image href="{c}/svg-image.png"></image></svg>

<form action="{c}/form" method="post"><input name="q" value="x"><button>Send</button></form>

<style>body {{ background: url("{c}/style.png"); }}</style>
<p style="background: url({c}/inline-style.png)">A styled paragraph.</p>
<link rel="stylesheet" href="{c}/link.css"><base href="{c}/">
<meta http-equiv="refresh" content="0; url={c}/meta">

<details open ontoggle="alert('details')"><summary>Details</summary>Opened.</details>
<video autoplay><source src="{c}/video.mp4" onerror="alert('video')"></video>
<math><mtext><table><mglyph><style><img src=x onerror="alert('mxss')"></style></mglyph></table></mtext></math>

Inline code stays text: `<script>alert("inline code")</script>`.

```html
<script>alert("fenced code")</script>
```"""


def hostile_canary(directives: Mapping[str, str]) -> str | None:
    """The canary URL when ``[[hostile:1]]`` is given (``[[canary:URL]]``, else the default), else None."""
    if directives.get("hostile", "").strip() in ("", "0"):
        return None
    return directives.get("canary", "").strip().rstrip("/") or DEFAULT_CANARY
