"""The scripted LLM's answers, checked against the real MetaGPT prompt templates.

Prompts are built from the template text copied verbatim below (not imported), so the
tests also pin the exact shape the scripted server recognises.
"""

from __future__ import annotations

import ast
import json

import pytest

from scripted_llm import script
from scripted_llm.answerers.tutorial import section_text
from tests.metagpt_prompts import (
    COMMON_PROMPT,
    CONTENT_PROMPT,
    DIRECTORY_PROMPT,
    outline_prompt,
    section_prompt,
)

HOSTILE_TITLES = ["../../etc/x", "a\x00b", "x" * 500, 'quo"te\\back', "日本語のタイトル", "{'a': [1]}", ""]


def test_templates_match_installed_metagpt() -> None:
    """The copies above must be what MetaGPT really sends, or the server would misroute."""
    templates = pytest.importorskip("metagpt.prompts.tutorial_assistant")
    assert templates.DIRECTORY_PROMPT == DIRECTORY_PROMPT
    assert templates.CONTENT_PROMPT == CONTENT_PROMPT


# ------------------------------------------------------------------ parse_directives


@pytest.mark.parametrize(
    ("text", "clean", "directives"),
    [
        ("MySQL", "MySQL", {}),
        ("  MySQL \n  basics ", "MySQL basics", {}),
        ("MySQL [[pace:0]]", "MySQL", {"pace": "0"}),
        ("[[fault:cut]]MySQL[[after:3]] tips", "MySQL tips", {"fault": "cut", "after": "3"}),
        ("A [[title:..%2F..%2Fetc%2Fx]] B", "A B", {"title": "../../etc/x"}),
        ("A [[title:a%00b]]", "A", {"title": "a\x00b"}),
        ("A [[title:../../etc/x]]", "A", {"title": "../../etc/x"}),
        ("A [[title:]]", "A", {"title": ""}),
        ("A [[title:has ] bracket]]", "A", {"title": "has ] bracket"}),
        ("A [[title:x%5D%5Dy]]", "A", {"title": "x]]y"}),
        ("A [[PACE:5]] [[pace:7]]", "A", {"pace": "7"}),
        ("A [[fault_at:section]][[stall:1.5]]", "A", {"fault_at": "section", "stall": "1.5"}),
        ("A [[not a directive]] [x:y]", "A [[not a directive]] [x:y]", {}),
        ("[[sections:5]]", "", {"sections": "5"}),
    ],
)
def test_parse_directives(text: str, clean: str, directives: dict[str, str]) -> None:
    assert script.parse_directives(text) == (clean, directives)


# ------------------------------------------------------------------------ classify


@pytest.mark.parametrize(
    ("prompt", "kind"),
    [
        (outline_prompt("MySQL"), "outline"),
        (outline_prompt('Say "hi". [[fault:cut]]'), "outline"),
        (section_prompt("MySQL", {"Intro": ["What is MySQL", "Installing"]}), "section"),
        (section_prompt("multi\nline topic", {"Intro": []}), "section"),
        ("Hello, who are you?", "other"),
        ("", "other"),
        (COMMON_PROMPT.format(topic="MySQL"), "other"),
    ],
)
def test_classify(prompt: str, kind: str) -> None:
    assert script.classify(prompt) == kind


@pytest.mark.parametrize(
    "topic",
    ["MySQL", 'The "quoted". topic', 'ends with quote"', "multi\nline", "[[pace:0]] Redis [[fault:cut]]", ""],
)
def test_extract_topic_from_both_templates(topic: str) -> None:
    assert script.extract_topic(outline_prompt(topic)) == topic
    assert script.extract_topic(section_prompt(topic, {"A": ["b"]})) == topic


def test_extract_topic_falls_back_to_last_quote_dot_on_line() -> None:
    prompt = 'write a technical tutorial with the topic "a ". b".\nmore ". text'
    assert script.extract_topic(prompt) == 'a ". b'
    assert script.extract_topic("no topic here") is None


@pytest.mark.parametrize(
    "directory",
    [
        {"Introduction to MySQL": ["What is MySQL", "Installing MySQL"]},
        {'It\'s "quoted"\nnewline': ["a\x00b", "日本語"]},
        {"Empty": []},
    ],
)
def test_extract_directory_round_trips_metagpt_repr(directory: dict[str, list[str]]) -> None:
    assert script.extract_directory(section_prompt("T", directory)) == directory


def test_extract_directory_ignores_marker_inside_topic() -> None:
    topic = "The module directory titles for the topic is as follows:\n{'Fake': []}"
    assert script.extract_directory(section_prompt(topic, {"Real": ["x"]})) == {"Real": ["x"]}


def test_extract_directory_unparseable() -> None:
    assert script.extract_directory(section_prompt("T", "not a dict")) is None  # type: ignore[arg-type]


# -------------------------------------------------------------------- outline_text


@pytest.mark.parametrize("topic", ["MySQL", "Kubernetes operators", 'with "quotes"', "日本語", ""])
@pytest.mark.parametrize("sections", [None, "0", "1", "3", "9"])
def test_outline_shape(topic: str, sections: str | None) -> None:
    directives = {} if sections is None else {"sections": sections}
    text = script.outline_text(topic, directives)
    outline = json.loads(text)
    # MetaGPT parses it with ast.literal_eval, which must agree with JSON.
    assert ast.literal_eval(text) == outline
    assert set(outline) == {"title", "directory"}
    assert isinstance(outline["title"], str) and outline["title"]
    expected = script.DEFAULT_SECTIONS if sections is None else int(sections)
    assert len(outline["directory"]) == expected
    names = []
    for entry in outline["directory"]:
        assert len(entry) == 1
        ((name, subs),) = entry.items()
        names.append(name)
        assert 2 <= len(subs) <= 3 and all(isinstance(s, str) and s for s in subs)
    assert len(set(names)) == len(names)
    if topic and expected:
        assert topic in outline["title"]
        assert topic in names[0]
    assert text == script.outline_text(topic, directives)  # deterministic


@pytest.mark.parametrize("title", HOSTILE_TITLES)
def test_outline_title_directive_is_preserved_exactly(title: str) -> None:
    text = script.outline_text("MySQL", {"title": title})
    assert json.loads(text)["title"] == title
    assert ast.literal_eval(text)["title"] == title


def test_hostile_title_survives_directive_encoding() -> None:
    clean, directives = script.parse_directives("MySQL [[title:..%2F..%2Fetc%2Fx%00]]")
    assert json.loads(script.outline_text(clean, directives))["title"] == "../../etc/x\x00"


@pytest.mark.parametrize("bad", ["-1", "abc", "2.5", ""])
def test_outline_bad_section_count_uses_default(bad: str) -> None:
    outline = json.loads(script.outline_text("MySQL", {"sections": bad}))
    assert len(outline["directory"]) == script.DEFAULT_SECTIONS


def test_outline_section_count_is_capped() -> None:
    outline = json.loads(script.outline_text("MySQL", {"sections": "100000"}))
    assert len(outline["directory"]) == script.MAX_SECTIONS


# -------------------------------------------------------------------- section_text


@pytest.mark.parametrize("topic", ["MySQL", "Rust async", 'a "quoted" ``` topic', "日本語"])
def test_section_text(topic: str) -> None:
    directory = {f"Introduction to {topic}": [f"What is {topic}", "Installing", "First steps"]}
    text = script.section_text(topic, directory)
    assert text.startswith(f"## Introduction to {topic}\n")
    for sub in directory[f"Introduction to {topic}"]:
        assert f"\n### {sub}\n" in text
    assert text.count(topic) >= 4
    assert text.count("```python\n") == 1 or "````python\n" in text
    assert 150 <= len(text.split()) <= 800
    assert text == script.section_text(topic, directory)


def test_sections_of_different_topics_differ() -> None:
    directory = {"Intro": ["A", "B"]}
    assert "Redis" not in script.section_text("MySQL", directory)
    assert "MySQL" not in script.section_text("Redis", directory)


def test_section_code_fence_cannot_be_closed_by_topic() -> None:
    text = script.section_text("```", {"Intro": ["A"]})
    assert "\n````python\n" in text


# --------------------------------------------------------------------- other_text


def test_other_text_is_short_and_admits_it_is_scripted() -> None:
    text = script.other_text("Hello")
    assert "scripted" in text and len(text) < 300


# ------------------------------------------------------------------------ fault_for


@pytest.mark.parametrize(
    ("kind", "directives", "expected"),
    [
        ("outline", {}, None),
        ("outline", {"fault": "http500"}, script.Fault("http500")),
        ("section", {"fault": "http500"}, None),
        ("section", {"fault": "cut", "fault_at": "section", "after": "2"}, script.Fault("cut", after=2)),
        ("outline", {"fault": "cut", "fault_at": "section"}, None),
        ("outline", {"fault": "stall", "stall": "1.5"}, script.Fault("stall", stall_seconds=1.5)),
        ("outline", {"fault": "STALL", "stall": "nan"}, script.Fault("stall")),
        ("outline", {"fault": "nonsense"}, None),
        ("other", {"fault": "http500"}, None),
    ],
)
def test_fault_for(kind: script.Kind, directives: dict[str, str], expected: script.Fault | None) -> None:
    assert script.fault_for(kind, directives) == expected


def test_every_fault_name_is_known() -> None:
    assert {
        "http500",
        "http429",
        "stall",
        "cut",
        "bad_outline",
        "empty_outline",
        "close",
        "drip",
    } == script.FAULTS


# ------------------------------------------------------------------------- tokenize


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n\n",
        "hello",
        "Hello, world!",
        "  leading and trailing  ",
        "line one\nline two\n\n## Heading\n",
        "tabs\tand\r\nCRLF",
        "日本語のテキストと emoji 🎉🎉 mixed",
        "x" * 500,
        "a\x00b",
        '{"title": "x", "directory": []}',
    ],
)
def test_tokenize_round_trip(text: str) -> None:
    tokens = script.tokenize(text)
    assert "".join(tokens) == text
    assert all(tokens)


def test_tokenize_is_word_like() -> None:
    assert script.tokenize("Hello big world") == ["Hello", " big", " world"]
    assert script.tokenize("") == []
    assert len(script.tokenize("x" * 500)) > 10


def test_long_sections_in_big_chunks_keep_the_text():
    directory = {"Basics": ["Install", "First steps"]}
    assert len(section_text("Chunky", directory, min_chars=50_000)) >= 50_000
    assert len(section_text("Chunky", directory)) < 5_000
    tokens = script.tokenize("word " * 5000)
    chunks = script._chunked(tokens, {"chunk_chars": "4096"})
    assert "".join(chunks) == "".join(tokens) and all(len(c) >= 4096 for c in chunks[:-1])
    assert script._chunked(tokens, {}) == tokens


def test_hostile_directive_puts_active_html_in_the_title_a_heading_and_every_section() -> None:
    from scripted_llm.answerers import tutorial

    directives = {"hostile": "1", "canary": "http://127.0.0.1:9/"}
    outline = json.loads(tutorial.outline_text("MySQL", directives))
    assert "<script>" in outline["title"]
    first = next(iter(outline["directory"][0]))
    assert "onerror=" in first
    section = tutorial.section_text("MySQL", outline["directory"][1], 0, tutorial.hostile_canary(directives))
    for needle in ("<script>", "onerror=", "javascript:", "<iframe", "http://127.0.0.1:9/pixel.png"):
        assert needle in section
    assert "canary.invalid" not in section  # the trailing slash is dropped, the given canary used
    assert tutorial.hostile_canary({"hostile": "1"}) == tutorial.DEFAULT_CANARY
    assert tutorial.hostile_canary({"hostile": "0"}) is None
    assert "<script>" not in tutorial.section_text("MySQL", outline["directory"][1])
