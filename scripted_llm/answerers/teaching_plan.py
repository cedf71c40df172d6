"""Answers for MetaGPT's ``Teacher``: a teaching plan written one part per request.

``WriteTeachingPlanPart`` (``metagpt/actions/write_teaching_plan.py``) sends one prompt per
entry of ``TeachingPlanBlock.TOPICS``: ``PROMPT_TITLE_TEMPLATE`` for "Title" and
``PROMPT_TEMPLATE`` for every other part.  Both end with the user's lesson between
``[LESSON_BEGIN]`` and ``[LESSON_END]``; the lesson may carry directives.  A model is told to
enclose its answer in ``[TEACHING_PLAN_BEGIN]``/``[TEACHING_PLAN_END]``, which MetaGPT cuts
out: the title as a first-level header, the other parts as Markdown from second-level headers.

The title request is the ``outline`` phase of a fault (it names the document, as the
tutorial's outline does) and every part request is a ``section``, so a test written for
tutorials means the same thing here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from scripted_llm.answerers.base import DIRECTIVE_RE, REFUSAL_TEXT, Match, pick

TITLE_PART = "Title"
BEGIN_TAG = "[TEACHING_PLAN_BEGIN]"
END_TAG = "[TEACHING_PLAN_END]"

# Fragments of the two templates, matched literally.  Everything before the lesson comes from
# MetaGPT and its configuration; only the lesson comes from the user, so each search stops at
# the first fragment that introduces the lesson, and text in the lesson cannot mislead it.
_INTRO = (
    "Do not refer to the context of the previous conversation records, start the conversation anew."
    "\n\nFormation: "
)
_FORMATION_MARK = '"[LESSON_BEGIN]" and "[LESSON_END]" tags enclose the content of textbook'
_LANGUAGE_MARK = "Constraint: Writing in "
# The title template: its language line, then its answer options, then the lesson.
_TITLE_LESSON_START = (
    '.\nAnswer options: Encloses the lesson title with "[TEACHING_PLAN_BEGIN]" and "[TEACHING_PLAN_END]" '
    "tags.\n[LESSON_BEGIN]\n"
)
# The part template: its answer options, then its language line, then the lesson.
_PART_LANGUAGE_START = (
    "Answer options: Using proper markdown format from second-level header format.\n" + _LANGUAGE_MARK
)
_PART_LESSON_START = ".\n[LESSON_BEGIN]\n"
_PART_TOPIC = re.compile(
    r'Statement: Write the "([^"\n]*)" part of teaching plan, WITHOUT ANY content unrelated to "\1"!!\n'
)
_LESSON_END = "\n[LESSON_END]"


@dataclass(frozen=True)
class _Request:
    """Where a teaching-plan prompt keeps its part, its language and its lesson."""

    part: str
    language: str
    lesson: str


def _parse(prompt: str) -> _Request | None:
    """Cut a Teacher prompt into part, language and lesson; None for any other prompt.

    The lesson runs from the template's ``[LESSON_BEGIN]`` line to the ``[LESSON_END]`` that
    closes the prompt, so a lesson holding either tag (or either template) stays whole.
    """
    title_at = prompt.find(_TITLE_LESSON_START)
    part_at = prompt.find(_PART_LANGUAGE_START)
    if part_at >= 0 and (title_at < 0 or part_at < title_at):
        language_start = part_at + len(_PART_LANGUAGE_START)
        language_end = prompt.find(_PART_LESSON_START, language_start)
        if language_end < 0:
            return None
        header = prompt[:part_at]
        topic = _PART_TOPIC.search(header)
        if topic is None:
            return None
        part = topic.group(1)
        lesson_start = language_end + len(_PART_LESSON_START)
    elif title_at >= 0:
        language_start = prompt.rfind(_LANGUAGE_MARK, 0, title_at)
        if language_start < 0:
            return None
        header = prompt[:language_start]
        language_start += len(_LANGUAGE_MARK)
        language_end = title_at
        part = TITLE_PART
        lesson_start = title_at + len(_TITLE_LESSON_START)
    else:
        return None
    if _INTRO not in header or _FORMATION_MARK not in header:
        return None
    body = prompt.rstrip()
    if not body.endswith(_LESSON_END):
        return None
    lesson_end = len(body) - len(_LESSON_END)
    if lesson_end < lesson_start:
        return None
    return _Request(part, prompt[language_start:language_end], prompt[lesson_start:lesson_end])


def match(prompt: str) -> Match | None:
    """The answerer's entry point: the title request, a part request, or None."""
    request = _parse(prompt)
    if request is None:
        return None
    if request.part == TITLE_PART:
        return Match(
            "plan_title",
            "outline",
            request.lesson,
            request.language,
            lambda _clean, directives: title_text(request.lesson, directives),
            _spoil,
        )
    return Match(
        "plan_part",
        "section",
        request.lesson,
        request.language,
        lambda _clean, _directives: part_text(request.part, request.lesson, request.language),
        _spoil,
    )


# Not a teaching plan at all: no tags, so MetaGPT keeps the whole reply as the part.
_NONSENSE_TEXT = "As requested, here is the text. Let me know if you need anything else!"


def _spoil(fault: str, topic: str, directives: Mapping[str, str]) -> str:
    """Content faults answer without the tags: a refusal (bad_outline) or chatter (empty_outline)."""
    return _NONSENSE_TEXT if fault == "empty_outline" else REFUSAL_TEXT


# --------------------------------------------------------------------------- the lesson

_TITLE_WORDS = 10
_TITLE_CHARS = 60
# Where a first sentence ends: a Latin stop before a space, or a CJK stop, which needs none (the CJK
# stops are written as escapes because they look like Latin ones).
_CJK_STOPS = "\u3002\uff01\uff1f"
_SENTENCE_END = re.compile(f"(?<=[.!?])\\s|(?<=[{_CJK_STOPS}])")
# Letters only, whole words: a 500-letter "word" is not a vocabulary item.
_WORD = re.compile(r"\b[^\W\d_]{4,20}\b")
_COMMON = frozenset(
    (
        "about", "also", "been", "before", "could", "each", "from", "have", "here", "into", "just",
        "like", "more", "much", "only", "other", "over", "said", "some", "than", "that", "their",
        "them", "then", "there", "these", "they", "this", "very", "were", "what", "when", "where",
        "which", "will", "with", "would", "your",
    )
)  # fmt: skip
_KEY_WORDS = 6
# Stand-ins when a lesson has too few words of its own (a short or non-alphabetic lesson).
_FALLBACK_WORDS = ("lesson", "reading", "example", "practice", "review", "question")
# Wrong options for choice questions: words a lesson is unlikely to contain.
_DISTRACTORS = ("umbrella", "volcano", "saxophone", "glacier", "lantern", "pyramid", "compass")


@dataclass(frozen=True)
class Lesson:
    """What the answers say about a lesson: its title and a few of its words."""

    title: str
    words: tuple[str, ...]
    seed: str


def read_lesson(lesson: str) -> Lesson:
    """Title and key words of a lesson, with directives removed.

    The title is the first sentence of the first non-empty line, shortened, as a textbook
    lesson usually starts with its title; key words are its longer words in order of
    appearance.
    """
    text = DIRECTIVE_RE.sub(" ", lesson)
    lines = (" ".join(line.split()) for line in text.splitlines())
    first = next((line for line in lines if line), "").lstrip("#").strip()
    sentence = _SENTENCE_END.split(first, maxsplit=1)[0]
    title = " ".join(sentence.split()[:_TITLE_WORDS])
    if len(title) > _TITLE_CHARS:
        title = title[:_TITLE_CHARS].rstrip()
    title = title.rstrip(" .,;:" + _CJK_STOPS) or "Untitled Lesson"
    words: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(text):
        folded = word.casefold()
        # Capitals mark headings ("UNIT", "TOPIC"), not vocabulary.
        if folded not in seen and folded not in _COMMON and not word.isupper():
            seen.add(folded)
            words.append(word)
            if len(words) == _KEY_WORDS:
                break
    for word in _FALLBACK_WORDS:
        if len(words) == _KEY_WORDS:
            break
        if word not in seen:
            words.append(word)
    return Lesson(title=title, words=tuple(words), seed=" ".join(text.split()))


def title_text(lesson: str, directives: Mapping[str, str]) -> str:
    """The "Title" part: a first-level header, the ``title`` directive winning over the lesson."""
    title = directives["title"] if "title" in directives else read_lesson(lesson).title
    return f"{BEGIN_TAG}# {title}{END_TAG}"


def part_text(part: str, lesson: str, language: str) -> str:
    """One part of the plan: a second-level header and a short body naming the lesson."""
    facts = read_lesson(lesson)
    write = _PARTS.get(part, _generic)
    body = write(facts, part, language)
    return f"{BEGIN_TAG}\n## {part}\n\n{body}\n{END_TAG}"


# ------------------------------------------------------------------------------ parts


def _hours(lesson: Lesson, part: str, language: str) -> str:
    hours = 2 + pick(f"{lesson.seed}\0{part}", 2)
    lines = [
        f'- Total: {hours} class hours of 45 minutes for "{lesson.title}".',
        "- Hour 1: presenting the text and its new vocabulary.",
        "- Hour 2: guided practice, pair work and a short review.",
        "- Hour 3: extension reading and a written exercise.",
    ]
    lines = lines[: hours + 1]
    lines.append("- Homework: a short written exercise on the new words, checked next lesson.")
    return "\n".join(lines)


def _objectives(lesson: Lesson, part: str, language: str) -> str:
    w = lesson.words
    return (
        f'1. Knowledge: students read and understand "{lesson.title}".\n'
        f"2. Skills: students use {w[0]}, {w[1]} and {w[2]} correctly in speech and writing.\n"
        "3. Attitude: students take part actively and help one another.\n"
        "4. Culture: students relate the text to their own everyday life."
    )


def _content(lesson: Lesson, part: str, language: str) -> str:
    w = lesson.words
    return (
        f"### Vocabulary\n\n{', '.join(w)}\n\n"
        f'### Key Points\n\n- The main ideas and structure of "{lesson.title}".\n'
        f"- Sentence patterns built around {w[0]} and {w[1]}, with two examples each.\n"
        "- Listening: the recording of the text, played twice."
    )


def _methods(lesson: Lesson, part: str, language: str) -> str:
    w = lesson.words
    return (
        f'- **Focus:** the key vocabulary of "{lesson.title}" ({w[0]}, {w[1]}).\n'
        f"- **Difficulty:** using {w[2]} naturally in context.\n"
        "- **Materials:** textbook, audio recording, word cards.\n"
        "- **Procedure:** warm-up, presentation, practice, production."
    )


def _activities(lesson: Lesson, part: str, language: str) -> str:
    w = lesson.words
    return (
        f'1. Warm-up: students guess what "{lesson.title}" is about from its title.\n'
        f"2. Reading: students find {w[0]} and {w[1]} in the text.\n"
        f"3. Pair work: students act out a short dialogue using {w[2]}.\n"
        "4. Wrap-up: each group shares one sentence with the class."
    )


def _time(lesson: Lesson, part: str, language: str) -> str:
    return (
        "| Part | Time |\n| --- | --- |\n| Warm-up | 5 min |\n"
        f'| Presenting "{lesson.title}" | 15 min |\n'
        "| Practice | 15 min |\n| Review and homework | 10 min |"
    )


def _assessment(lesson: Lesson, part: str, language: str) -> str:
    w = lesson.words
    return (
        f"- Observe pair work and note how students use {w[0]} and {w[1]}.\n"
        f'- A five-minute quiz on the vocabulary of "{lesson.title}".\n'
        "- Give feedback at once and collect common errors for the next lesson."
    )


def _summary(lesson: Lesson, part: str, language: str) -> str:
    return (
        f'Students met the key words of "{lesson.title}" and practised them in context.\n\n'
        "Most of the class reached the objectives; the quiz shows which words need another look.\n\n"
        f"Next time, allow more time for {lesson.words[2]} and give quieter students more chances to speak."
    )


def _questions(lesson: Lesson, part: str, intro: str, item: Callable[[int, str], str]) -> str:
    """An intro line and three to five numbered questions, one per key word."""
    count = 3 + pick(f"{lesson.seed}\0{part}", 3)
    items = [f"{n + 1}. {item(n, lesson.words[n])}" for n in range(count)]
    return intro + "\n\n" + "\n".join(items)


def _cloze(lesson: Lesson, part: str, language: str) -> str:
    return _questions(
        lesson,
        part,
        f'Fill in the blanks with words from "{lesson.title}".',
        lambda n, w: f'Starts with "{w[0]}", {len(w)} letters: ______ (answer: {w})',
    )


def _choice(lesson: Lesson, part: str, language: str) -> str:
    used = {word.casefold() for word in lesson.words}
    wrong = [d for d in _DISTRACTORS if d not in used]

    def item(n: int, word: str) -> str:
        options = [wrong[n % len(wrong)], wrong[(n + 1) % len(wrong)]]
        at = pick(f"{lesson.seed}\0{part}\0{n}", 3)
        options.insert(at, word)
        letters = " ".join(f"{'ABC'[i]}. {option}" for i, option in enumerate(options))
        return f"Which word appears in the lesson? {letters} (answer: {'ABC'[at]})"

    return _questions(lesson, part, f'Choose the correct answer about "{lesson.title}".', item)


_GRAMMAR = (
    'Make a sentence with "{w}" in the past tense.',
    'Write a question that uses "{w}".',
    'Write a negative sentence with "{w}".',
    'Use "{w}" in a sentence with "because".',
    'Rewrite a sentence with "{w}" in the future tense.',
)


def _grammar(lesson: Lesson, part: str, language: str) -> str:
    return _questions(
        lesson,
        part,
        f'Answer these questions on the grammar of "{lesson.title}" in full sentences.',
        lambda n, w: _GRAMMAR[n].format(w=w),
    )


def _translation(lesson: Lesson, part: str, language: str) -> str:
    target = language.strip() or "your own language"
    return _questions(
        lesson,
        part,
        f'Translate these words from "{lesson.title}" into {target}.',
        lambda n, w: f'"{w}": give its meaning in {target} and use it in a short sentence.',
    )


def _generic(lesson: Lesson, part: str, language: str) -> str:
    w = lesson.words
    return (
        f'This part of the plan for "{lesson.title}" covers {part}. '
        f"It builds on the key words {w[0]} and {w[1]} and keeps every activity short and practical.\n\n"
        "Each step ends with a quick check that every student has followed."
    )


_PARTS: dict[str, Callable[[Lesson, str, str], str]] = {
    "Teaching Hours": _hours,
    "Teaching Objectives": _objectives,
    "Teaching Content": _content,
    "Teaching Methods and Strategies": _methods,
    "Learning Activities": _activities,
    "Teaching Time Allocation": _time,
    "Assessment and Feedback": _assessment,
    "Teaching Summary and Improvement": _summary,
    "Vocabulary Cloze": _cloze,
    "Choice Questions": _choice,
    "Grammar Questions": _grammar,
    "Translation Questions": _translation,
}
