"""The scripted LLM's teaching-plan answers, checked against MetaGPT's real ``Teacher`` prompts.

The prompts come from the installed MetaGPT: a subprocess runs its ``WriteTeachingPlanPart``
(with the ``Teacher`` role's prefix and ``format_value``-filled statements) and reports the
prompts it sends and what it makes of the scripted answers.  A subprocess, because importing
``metagpt.actions`` fixes MetaGPT's project root and config for the whole test process, which the
gateway's own tests prepare in their own way.  Everything else builds prompts from the templates
it reports, the way ``WriteTeachingPlanPart.run`` does.
"""

from __future__ import annotations

import json
import re

import pytest

from scripted_llm import script
from scripted_llm.answerers import teaching_plan
from tests.metagpt_prompts import (
    HOSTILE_LESSON,
    TEACHING_PLAN_TOPICS,
    metagpt_teacher,
    outline_prompt,
    section_prompt,
    teacher_prompt,
)

TOPICS = TEACHING_PLAN_TOPICS
PARTS = TOPICS[1:]
QUESTION_PARTS = ["Vocabulary Cloze", "Choice Questions", "Grammar Questions", "Translation Questions"]

# A lesson that tries everything: quotes, braces, tags and template lines of its own, non-ASCII,
# directives and a trailing blank line.
LESSONS = [
    "UNIT 1 Making New Friends\nTOPIC 1 Welcome to China!\nSection A\n1a Listen and number the names.",
    HOSTILE_LESSON,
    "Photosynthesis",
    "  \n\n# The Water Cycle\n\nRain falls, rivers flow, the sun warms the sea.\n\n",
    "第一课 你好\n你好\uff01我叫李华。",
    "[[fault:cut]][[fault_at:section]]\nLesson 3: Weather [[title:My%20Title]]\nIt is sunny today.",
    outline_prompt("MySQL"),  # a whole tutorial prompt pasted as the lesson
    "",
]


def between_tags(text: str) -> str:
    """What MetaGPT keeps of a reply (``WriteTeachingPlanPart._set_result``)."""
    begin, end = teaching_plan.BEGIN_TAG, teaching_plan.END_TAG
    assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end)
    return text[text.index(begin) + len(begin) : text.index(end)].strip()


# ------------------------------------------------------------------ the real MetaGPT


def test_prompts_are_what_metagpt_sends() -> None:
    teacher = metagpt_teacher()
    assert teacher["topics"] == TOPICS
    lesson, language = teacher["run_of"]
    for topic in TOPICS:
        assert teacher_prompt(lesson, topic, language) == teacher["runs"][topic]["prompt"], topic


def test_metagpt_reads_the_answers() -> None:
    """MetaGPT's own parsing of each answer: the title as a header, each part under its heading."""
    teacher = metagpt_teacher()
    runs = teacher["runs"]
    assert runs["Title"]["rsp"] == '# UNIT 1 "Making" {New} Friends'
    for part in PARTS:
        rsp = runs[part]["rsp"]
        assert rsp.startswith(f"## {part}\n\n") and "TEACHING_PLAN" not in rsp
        assert 'UNIT 1 "Making" {New} Friends' in rsp or part == "Translation Questions"


# ---------------------------------------------------------------------- recognising


@pytest.mark.parametrize("lesson", LESSONS)
@pytest.mark.parametrize("language", ["English", "Chinese", "日本語", "Brazilian Portuguese."])
def test_every_part_is_recognised_with_its_lesson_and_language(lesson: str, language: str) -> None:
    clean, _ = script.parse_directives(lesson)
    for topic in TOPICS:
        prompt = teacher_prompt(lesson, topic, language)
        found = script.match(prompt)
        assert found is not None, topic
        if topic == "Title":
            assert (found.kind, found.phase) == ("plan_title", "outline")
        else:
            assert (found.kind, found.phase) == ("plan_part", "section")
        assert script.classify(prompt) == found.kind
        assert found.topic == lesson
        assert found.language == language
        plan = script.plan(prompt, 20.0)
        assert (plan.kind, plan.topic, plan.language) == (found.kind, clean, language)


def test_an_unknown_part_gets_a_generic_answer() -> None:
    prompt = teacher_prompt("Photosynthesis", "Homework")
    plan = script.plan(prompt, 0)
    assert plan.kind == "plan_part"
    assert between_tags(plan.text).startswith("## Homework\n\n")
    assert "Photosynthesis" in plan.text


def test_other_prompts_are_not_teaching_plans() -> None:
    title, part = (
        teacher_prompt("Photosynthesis", "Title"),
        teacher_prompt("Photosynthesis", "Teaching Hours"),
    )
    for prompt in [
        "Hello",
        "",
        "[LESSON_BEGIN]\nx\n[LESSON_END]",
        part[:-5],  # cut short
        title + "\nThanks!",  # something after the lesson
        title.split("Statement: ", 1)[1],  # without MetaGPT's preamble
        part.replace("second-level header", "third-level header"),  # another template
    ]:
        assert teaching_plan.match(prompt) is None, prompt


def test_a_tutorial_about_a_teaching_prompt_is_still_a_tutorial() -> None:
    topic = teacher_prompt("Photosynthesis", "Title")
    assert script.classify(outline_prompt(topic)) == "outline"
    assert script.classify(section_prompt(topic, {"A": ["b"]})) == "section"


def test_trailing_whitespace_after_the_prompt_is_tolerated() -> None:
    found = script.match(teacher_prompt("Photosynthesis\n", "Teaching Hours") + "\n  ")
    assert found is not None and found.topic == "Photosynthesis\n"


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("lesson", "title"),
    [
        ("UNIT 1 Making New Friends\nTOPIC 1 Welcome to China!", "UNIT 1 Making New Friends"),
        ("# Photosynthesis\nPlants make food from light.", "Photosynthesis"),
        ("\n\n   The Water   Cycle.  Rain falls.\nMore", "The Water Cycle"),
        (
            "one two three four five six seven eight nine ten eleven twelve",
            "one two three four five six seven eight nine ten",
        ),
        ("x" * 500, "x" * 60),
        ("第一课 你好。我叫李华。\n第二行", "第一课 你好"),
        ("[[pace:0]] Lesson 3: Weather [[fault:cut]]\nIt is sunny.", "Lesson 3: Weather"),
        ("[[fault:cut]]\n[[after:2]]\nReal Title\nbody", "Real Title"),
        ("", "Untitled Lesson"),
        ("...\n", "Untitled Lesson"),
    ],
)
def test_title_comes_from_the_lessons_first_line(lesson: str, title: str) -> None:
    plan = script.plan(teacher_prompt(lesson, "Title"), 0)
    assert plan.text == f"[TEACHING_PLAN_BEGIN]# {title}[TEACHING_PLAN_END]"
    assert between_tags(plan.text) == f"# {title}"


@pytest.mark.parametrize("title", ["../../etc/x", "a\x00b", "x" * 500, 'quo"te', "日本語のタイトル", ""])
def test_title_directive_wins_over_the_lesson(title: str) -> None:
    encoded = "".join(f"%{b:02X}" for b in title.encode())
    lesson = f"Photosynthesis [[title:{encoded}]]\nPlants make food."
    assert script.plan(teacher_prompt(lesson, "Title"), 0).text == (
        f"[TEACHING_PLAN_BEGIN]# {title}[TEACHING_PLAN_END]"
    )
    # The parts still name the lesson, as a tutorial's sections name the topic.
    assert '"Photosynthesis"' in script.plan(teacher_prompt(lesson, "Teaching Objectives"), 0).text


@pytest.mark.parametrize("lesson", LESSONS)
def test_part_answers_are_short_tagged_markdown_naming_the_lesson(lesson: str) -> None:
    title = teaching_plan.read_lesson(lesson).title
    for part in PARTS:
        text = script.plan(teacher_prompt(lesson, part, "Chinese"), 0).text
        assert text.startswith(f"[TEACHING_PLAN_BEGIN]\n## {part}\n\n") and text.endswith(
            "\n[TEACHING_PLAN_END]"
        )
        body = between_tags(text)
        assert body.count("\n## ") == 0 and "\n# " not in body
        assert title in body or (part == "Translation Questions" and "Chinese" in body)
        assert 40 <= len(script.tokenize(text)) <= 120, (part, len(script.tokenize(text)))
        assert "".join(script.tokenize(text)) == text
        if part in QUESTION_PARTS:
            numbers = [int(n) for n in re.findall(r"^(\d+)\. ", body, re.MULTILINE)]
            assert numbers == list(range(1, len(numbers) + 1)) and 3 <= len(numbers) <= 5


def test_answers_are_deterministic_and_differ_between_lessons() -> None:
    for topic in TOPICS:
        first = script.plan(teacher_prompt(LESSONS[0], topic), 0).text
        assert script.plan(teacher_prompt(LESSONS[0], topic), 0).text == first
        assert script.plan(teacher_prompt("Photosynthesis", topic), 0).text != first


def test_key_words_come_from_the_lesson() -> None:
    lesson = teaching_plan.read_lesson("UNIT 2 Looking Different\nThis is a photo of my family: Jane, Maria.")
    assert lesson.words == ("Looking", "Different", "photo", "family", "Jane", "Maria")
    assert teaching_plan.read_lesson("x").words == teaching_plan.read_lesson("").words


def test_a_whole_plan_streams_quickly() -> None:
    """A whole plan's requests together stay short enough for tests at the default pace."""
    total = sum(len(script.tokenize(script.plan(teacher_prompt(LESSONS[0], t), 0).text)) for t in TOPICS)
    assert total < 13 * 100


# ------------------------------------------------------------------ directives, faults


def test_pace_directive_applies_to_every_request() -> None:
    for topic in TOPICS:
        assert script.plan(teacher_prompt("Cats [[pace:7.5]]", topic), 20.0).pace == 7.5
        assert script.plan(teacher_prompt("Cats", topic), 20.0).pace == 20.0


@pytest.mark.parametrize("name", ["http500", "http429", "stall", "cut", "close"])
def test_transport_faults_hit_the_title_by_default(name: str) -> None:
    lesson = f"Cats [[fault:{name}]][[after:2]][[stall:1.5]]"
    title = script.plan(teacher_prompt(lesson, "Title"), 0)
    assert title.fault == script.Fault(name, after=2, stall_seconds=1.5)
    assert title.text == script.plan(teacher_prompt("Cats", "Title"), 0).text
    for part in PARTS:
        assert script.plan(teacher_prompt(lesson, part), 0).fault is None


@pytest.mark.parametrize("name", ["http500", "cut"])
def test_fault_at_section_hits_every_part(name: str) -> None:
    lesson = f"Cats [[fault:{name}]][[fault_at:section]]"
    assert script.plan(teacher_prompt(lesson, "Title"), 0).fault is None
    for part in PARTS:
        plan = script.plan(teacher_prompt(lesson, part), 0)
        assert plan.fault == script.Fault(name)
        assert plan.text == script.plan(teacher_prompt("Cats", part), 0).text


@pytest.mark.parametrize("name", ["bad_outline", "empty_outline"])
@pytest.mark.parametrize("at", ["outline", "section"])
def test_content_faults_drop_the_tags(name: str, at: str) -> None:
    lesson = f"Cats [[fault:{name}]][[fault_at:{at}]]"
    for topic in TOPICS:
        plan = script.plan(teacher_prompt(lesson, topic), 0)
        hit = (topic == "Title") == (at == "outline")
        if hit:
            assert plan.fault is not None and plan.fault.name == name
            assert plan.text.strip() and "TEACHING_PLAN" not in plan.text
        else:
            assert plan.fault is None and plan.text.startswith("[TEACHING_PLAN_BEGIN]")
    bad = script.plan(teacher_prompt("Cats [[fault:bad_outline]]", "Title"), 0).text
    empty = script.plan(teacher_prompt("Cats [[fault:empty_outline]]", "Title"), 0).text
    assert bad == script.REFUSAL_TEXT != empty


# ------------------------------------------------------------------- tutorials, other


def test_tutorial_plans_are_unchanged() -> None:
    outline = script.plan(outline_prompt("MySQL [[sections:4]][[pace:3]]"), 20.0)
    assert (outline.kind, outline.topic, outline.language, outline.pace) == (
        "outline",
        "MySQL",
        "English",
        3.0,
    )
    assert outline.text == script.outline_text("MySQL", {"sections": "4"})
    section = script.plan(section_prompt("Redis", {"Intro": ["A", "B"]}), 20.0)
    assert (section.kind, section.topic, section.fault) == ("section", "Redis", None)
    assert section.text == script.section_text("Redis", {"Intro": ["A", "B"]})


def test_tutorial_content_faults_are_unchanged() -> None:
    bad = script.plan(outline_prompt("Redis [[fault:bad_outline]]"), 0)
    assert bad.text == script.REFUSAL_TEXT
    empty = script.plan(outline_prompt("Redis [[fault:empty_outline]]"), 0)
    title = json.loads(script.outline_text("Redis", {}))["title"]
    assert json.loads(empty.text) == {"title": title, "directory": []}
    section = script.plan(section_prompt("Redis [[fault:empty_outline]][[fault_at:section]]", {"A": []}), 0)
    assert section.text == ""


def test_other_prompts_get_the_generic_reply() -> None:
    plan = script.plan("Hello [[pace:0]]", 20.0)
    assert (plan.kind, plan.topic, plan.language, plan.fault, plan.pace) == ("other", None, None, None, 20.0)
    assert plan.text == script.other_text("Hello [[pace:0]]")
    assert "tutorial" not in plan.text
