"""`write_teaching_plan` (MetaGPT's Teacher), the second agent, with the guarantees of the first: streamed
through nginx to the openai SDK, whole, usage, the link and its file, errors, cancellation, and metrics
labelled by model."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from tests.integration.helpers import metric, split_link, stream_raw
from tests.metagpt_prompts import TEACHING_PLAN_TOPICS

pytestmark = pytest.mark.integration

MODEL = "write_teaching_plan"
PARTS = TEACHING_PLAN_TOPICS[1:]


def plan(lesson: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": lesson}], **extra}


def test_a_streamed_plan_through_nginx_is_the_downloaded_file_part_by_part(proxied, stack):
    lesson = "Lesson 7: The Water Cycle\nRain falls, rivers flow, and the sun warms the sea."
    client = openai.OpenAI(base_url=f"{proxied.url}/v1", api_key="unused", max_retries=0, timeout=60)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": lesson}],
            extra_body={"language": "English"},
        )
    )
    assert len({c.id for c in chunks}) == 1 and all(c.model == MODEL for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    text, link = split_link(content)
    assert text.startswith("# Lesson 7: The Water Cycle\n\n\n## Teaching Hours")
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == PARTS  # every part, in Teacher's order, once
    assert "TEACHING_PLAN" not in text  # the tags are MetaGPT's to strip
    assert reasoning.count("[TEACHING_PLAN_BEGIN]") == 13  # each raw reply, as it streamed

    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra
    info = final["file"]
    assert final["teaching_plan"] == info and info["media_type"] == "text/markdown"
    assert info["title"] == "Lesson 7: The Water Cycle" and info["name"].startswith(
        "Lesson-7-The-Water-Cycle-"
    )
    assert link == f"\n\n---\n\n[Download {info['name']}]({info['url']})\n"
    r = httpx.get(info["url"], timeout=10)
    assert r.status_code == 200 and r.content == text.encode() and info["bytes"] == len(r.content)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 300

    calls = [e for e in stack.journal() if e["topic"] == " ".join(lesson.split())]
    assert [e["kind"] for e in calls] == ["plan_title"] + ["plan_part"] * 12
    assert {e["language"] for e in calls} == {"English"}
    done = metric(stack.url, "gateway_generation_duration_seconds_count", model=MODEL, outcome="completed")
    assert done >= 1
    assert metric(stack.url, "gateway_tutorials_written_total", model=MODEL) >= 1


def test_a_whole_plan_has_the_link_and_the_file_fields(stack):
    r = httpx.post(f"{stack.url}/v1/chat/completions", json=plan("Fractions for beginners"), timeout=60)
    assert r.status_code == 200
    body = r.json()
    message = body["choices"][0]["message"]
    text, link = split_link(message["content"])
    assert (
        text.startswith("# Fractions for beginners")
        and "[TEACHING_PLAN_BEGIN]" in message["reasoning_content"]
    )
    assert body["file"] == body["teaching_plan"] and link.endswith(f"({body['file']['url']})\n")
    assert (stack.tutorials / body["file"]["name"]).read_text(encoding="utf-8") == text
    assert body["usage"]["total_tokens"] > 0


def test_an_upstream_failure_in_a_part_is_an_error_event_and_nothing_is_written(stack):
    lesson = "Broken plans [[fault:cut]][[fault_at:section]][[after:3]]"
    before = set(stack.tutorials.iterdir())
    s = stream_raw(stack.url, plan(lesson, stream=True))
    assert s.status == 200
    error = s.data()[-2]["error"]
    assert error["type"] == "upstream_error" and error["code"].startswith("upstream_")
    assert s.data()[-1] == "[DONE]"
    assert not any(
        p.is_file() and "Broken plans" in p.read_text(encoding="utf-8")
        for p in set(stack.tutorials.iterdir()) - before
    )


def test_a_client_that_leaves_cancels_the_teacher_and_its_upstream_call(stack):
    lesson = "Leaving the classroom [[pace:20]]"
    payload = plan(lesson, stream=True)
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=payload, timeout=30) as r:
        assert r.status_code == 200
        after_title = None
        for n, line in enumerate(r.iter_lines()):
            if after_title is None and re.search(r'"content":\s*"# Leaving the classroom', line):
                after_title = n
            if after_title is not None and n >= after_title + 10:
                break  # leaving the block closes the connection while the second part streams
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        calls = [e for e in stack.journal() if e["topic"] == "Leaving the classroom"]
        if len(calls) == 2 and all(e["outcome"] != "running" for e in calls):
            break
        time.sleep(0.1)
    time.sleep(0.5)  # a third call would have started by now
    calls = [e for e in stack.journal() if e["topic"] == "Leaving the classroom"]
    assert [e["outcome"] for e in calls] == ["completed", "client_closed"]  # the part's call closed
    cancelled = metric(
        stack.url, "gateway_generation_duration_seconds_count", model=MODEL, outcome="cancelled"
    )
    assert cancelled >= 1
