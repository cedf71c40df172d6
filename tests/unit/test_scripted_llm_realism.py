"""The scripted LLM as real models and chat UIs meet it: Open WebUI's housekeeping prompts, reasoning
modes, max_tokens, the drip fault (pure functions; the HTTP side is in test_scripted_llm_server.py)."""

from __future__ import annotations

import json

import pytest

from scripted_llm import script
from scripted_llm.answerers import housekeeping
from tests.metagpt_prompts import outline_prompt
from tests.openwebui_prompts import (
    DEFAULT_TAGS_GENERATION_PROMPT_TEMPLATE,
    MAIN_TITLE_GENERATION_PROMPT_TEMPLATE,
    follow_ups_prompt,
    render,
    tags_prompt,
    title_prompt,
)

CHAT = [
    {"role": "user", "content": "Write a tutorial about Redis [[pace:0]]"},
    {"role": "assistant", "content": "# Redis\n\nRedis is an in-memory store."},
]


def test_render_formats_the_last_messages_like_open_webui() -> None:
    history = [{"role": "system", "content": "sys"}, *CHAT]
    prompt = title_prompt(history)
    assert "SYSTEM: sys" not in prompt  # END:2 keeps the last two
    assert "<chat_history>\nUSER: Write a tutorial about Redis [[pace:0]]\nASSISTANT: # Redis\n" in prompt
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert render("{{MESSAGES}}|{{MESSAGES:START:1}}", parts) == "USER: hi|USER: hi"
    assert "{{MESSAGES" not in tags_prompt(CHAT)


@pytest.mark.parametrize(
    ("prompt", "task"),
    [
        (title_prompt(CHAT), "title"),
        (title_prompt(CHAT, MAIN_TITLE_GENERATION_PROMPT_TEMPLATE), "title"),
        (follow_ups_prompt(CHAT), "follow_ups"),
        (tags_prompt(CHAT), "tags"),
        (
            '### Task:\nSuggest queries.\nJSON: { "queries": [] }\n<chat_history>\nUSER: x\n</chat_history>',
            "other",
        ),
        (outline_prompt("Redis"), None),
        ("Hello ### Task:", None),
    ],
)
def test_task_is_told_by_the_format_asked_for(prompt: str, task: str | None) -> None:
    assert housekeeping.task_of(prompt) == task
    if task is not None:
        assert script.classify(prompt) == "housekeeping"
        assert script.plan(prompt, 0).task == task


def test_user_text_cannot_change_the_task() -> None:
    chat = [{"role": "user", "content": 'Give me { "tags": ["x"] } and { "follow_ups": [] }'}]
    assert housekeeping.task_of(title_prompt(chat)) == "title"


def test_title_is_json_with_emoji_and_three_words_from_the_first_user_message() -> None:
    plan = script.plan(title_prompt(CHAT), 5)
    title = json.loads(plan.text)["title"]
    emoji, *words = title.split(" ")
    assert emoji in housekeeping._EMOJIS and words == ["Tutorial", "Redis", "Chat"]
    assert plan.pace == 0 and plan.topic == "Write a tutorial about Redis"  # directives still apply
    assert script.plan(title_prompt(CHAT), 5).text == plan.text  # deterministic
    # The newer template forbids emojis.
    plain = json.loads(script.plan(title_prompt(CHAT, MAIN_TITLE_GENERATION_PROMPT_TEMPLATE), 0).text)
    assert plain == {"title": "Tutorial Redis Chat"}


def test_follow_ups_are_three_questions_and_tags_have_a_domain_and_subdomain() -> None:
    follow_ups = json.loads(script.plan(follow_ups_prompt(CHAT), 0).text)["follow_ups"]
    assert len(follow_ups) == 3 and all(q.endswith("?") and "Redis" in q for q in follow_ups)
    tags = json.loads(script.plan(tags_prompt(CHAT), 0).text)["tags"]
    assert tags == ["Technology", "Tutorial"]
    lesson = [{"role": "user", "content": "Grammar lesson on the past tense"}]
    assert json.loads(script.plan(render(DEFAULT_TAGS_GENERATION_PROMPT_TEMPLATE, lesson), 0).text) == {
        "tags": ["Education", "Grammar"]
    }


def test_unknown_task_and_empty_history_still_answer_json() -> None:
    assert script.plan("### Task:\nDo something.", 0).text == "{}"
    assert json.loads(script.plan(title_prompt([]), 0).text)["title"].endswith("Chat Overview Discussion")


def test_housekeeping_faults_only_with_fault_at_housekeeping() -> None:
    spared = [{"role": "user", "content": "Redis [[fault:http500]]"}]
    assert script.plan(title_prompt(spared), 0).fault is None
    hit = [{"role": "user", "content": "Redis [[fault:bad_outline]][[fault_at:housekeeping]]"}]
    plan = script.plan(title_prompt(hit), 0)
    assert plan.fault is not None and plan.text == script.REFUSAL_TEXT


# ------------------------------------------------------------------------- reasoning


@pytest.mark.parametrize("mode", ["think", "reasoning_content", "reasoning"])
def test_reasoning_pieces_put_thinking_first(mode: str) -> None:
    plan = script.plan(outline_prompt(f"Redis [[reasoning:{mode}]]"), 0)
    assert plan.reasoning == mode and "Redis" in plan.thinking
    assert '{"title": "x"}' in plan.thinking  # braces and quotes on purpose
    pieces, thinking = script.pieces(plan)
    content = "".join(t for f, t in pieces if f == "content")
    if mode == "think":
        assert content == f"<think>\n{plan.thinking}\n</think>\n\n{plan.text}"
        assert {f for f, _ in pieces} == {"content"}
    else:
        assert content == plan.text
        assert "".join(t for f, t in pieces[:thinking]) == plan.thinking
        assert {f for f, _ in pieces[:thinking]} == {mode}
    assert json.loads(plan.text)["title"]  # the answer itself is untouched


def test_no_or_unknown_reasoning_changes_nothing() -> None:
    plain = script.plan(outline_prompt("Redis"), 0)
    assert script.pieces(plain) == ([("content", t) for t in script.tokenize(plain.text)], 0)
    assert script.plan(outline_prompt("Redis [[reasoning:loud]]"), 0).reasoning is None


def test_token_offsets_spread_thinking_over_think_seconds() -> None:
    assert script.token_offsets(3, 0, 0, None) == [0, 0, 0]
    assert script.token_offsets(3, 1, 2, None) == [0.5, 1.0, 1.5]
    assert script.token_offsets(4, 2, 10, 3.0) == [1.5, 3.0, 3.1, 3.2]
    assert script.token_offsets(3, 2, 0, 2.0) == [1.0, 2.0, 2.0]
    plan = script.plan(outline_prompt("Redis [[reasoning:think]][[think_seconds:2.5]]"), 0)
    assert plan.think_seconds == 2.5


@pytest.mark.parametrize(
    ("body", "limit"),
    [
        ({}, None),
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 5, "max_tokens": 9}, 5),
        ({"max_tokens": 0}, None),
        ({"max_tokens": True}, None),
        ({"max_tokens": "3"}, None),
    ],
)
def test_max_tokens_of(body: dict[str, object], limit: int | None) -> None:
    assert script.max_tokens_of(body) == limit


def test_drip_fault_reads_its_directives() -> None:
    fault = script.fault_for("outline", {"fault": "drip", "stall": "3", "drip_every": "0.5"})
    assert fault == script.Fault("drip", stall_seconds=3.0, drip_every=0.5)
    assert script.fault_for("section", {"fault": "drip"}) is None
    assert script.fault_for("outline", {"fault": "drip"}) == script.Fault("drip")
    assert {"reasoning", "think_seconds", "drip_every"} <= script.KNOWN_DIRECTIVES
