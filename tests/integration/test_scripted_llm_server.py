"""The scripted LLM as the ``openai`` SDK sees it, over real loopback HTTP.

The server runs as a subprocess (``python -m scripted_llm``) exactly as the gateway
tests use it.  It runs unpaced (``--pace 0``); tests that depend on timing set a pace
through the ``[[pace:N]]`` directive in the topic.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from scripted_llm import script
from tests.metagpt_prompts import outline_prompt, section_prompt, teacher_prompt
from tests.procs import ROOT, free_port, scripted_llm_args, server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SYSTEM = {"role": "system", "content": "You are a Tutorial Assistant."}
DIRECTORY = {"Introduction to Redis": ["What is Redis", "Installing Redis", "First Commands"]}


def outline_messages(topic: str) -> list[Any]:
    return [SYSTEM, {"role": "user", "content": outline_prompt(topic)}]


def section_messages(topic: str, directory: dict[str, list[str]] = DIRECTORY) -> list[Any]:
    prompt = section_prompt(topic, directory)
    return [SYSTEM, {"role": "user", "content": prompt}]


def teacher_messages(lesson: str, topic: str, language: str = "English") -> list[Any]:
    prompt = teacher_prompt(lesson, topic, language)
    return [{"role": "system", "content": "You are a Teacher."}, {"role": "user", "content": prompt}]


class Llm:
    """Handles on one running scripted LLM."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=20)

    def journal(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_scripted/requests", timeout=5).json()["requests"]

    def entry(self, completion_id: str | None = None) -> dict[str, Any]:
        """The journal entry with that id, or the most recent one."""
        entries = self.journal()
        if completion_id is None:
            return entries[-1]
        return next(e for e in entries if e["id"] == completion_id)

    def wait_outcome(self, outcome: str, timeout: float, completion_id: str | None = None) -> float:
        """Seconds until the entry reaches ``outcome``; fails after ``timeout``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.entry(completion_id)["outcome"] == outcome:
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"not {outcome} after {timeout}s: {self.entry(completion_id)}")

    def stream(self, messages: list[Any], **kwargs: Any) -> openai.Stream[Any]:
        return self.client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True, **kwargs
        )


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Llm]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("scripted_llm") / "server.log"
    with server(
        scripted_llm_args(port, 0, max_lifetime=120), health_url=f"{url}/healthz", log=log, startup_timeout=30
    ):
        yield Llm(url, log)


@pytest.fixture(autouse=True)
def _fresh_journal(llm: Llm) -> None:
    httpx.delete(f"{llm.url}/_scripted/requests", timeout=5).raise_for_status()


def content(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---------------------------------------------------------------------- happy paths


def test_health_models_and_startup_log(llm: Llm) -> None:
    assert httpx.get(f"{llm.url}/healthz").json() == {"status": "ok"}
    assert [m.id for m in llm.client.models.list()] == ["scripted"]
    assert "NOT a real model" in llm.log.read_text()


def test_stream_joins_to_section_text_with_usage(llm: Llm) -> None:
    messages = section_messages("Redis")
    chunks = list(llm.stream(messages, stream_options={"include_usage": True}))
    expected = script.section_text("Redis", DIRECTORY)

    assert content(chunks) == expected
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {"gpt-4o-mini"}
    first, *tokens, final, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None and c.choices[0].delta.content for c in tokens)
    assert len(tokens) == len(script.tokenize(expected))
    assert final.choices[0].finish_reason == "stop" and final.choices[0].delta.content is None
    assert usage_chunk.choices == []
    prompt_tokens = sum(len(script.tokenize(m["content"])) for m in messages)
    assert usage_chunk.usage.model_dump() == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(tokens),
        "total_tokens": prompt_tokens + len(tokens),
    }
    entry = llm.entry(first.id)
    assert (entry["kind"], entry["topic"], entry["outcome"]) == ("section", "Redis", "completed")
    assert entry["tokens_sent"] == len(tokens) and entry["ended"] >= entry["started"]


def test_stream_teaching_plan_part(llm: Llm) -> None:
    lesson = "UNIT 1 Making New Friends\nTOPIC 1 Welcome to China! [[pace:400]]"
    messages = teacher_messages(lesson, "Teaching Objectives", "Chinese")
    chunks = list(llm.stream(messages, stream_options={"include_usage": True}))
    expected = script.plan(messages[-1]["content"], 0).text

    assert content(chunks) == expected
    assert expected.startswith("[TEACHING_PLAN_BEGIN]\n## Teaching Objectives\n")
    tokens = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(tokens) == len(script.tokenize(expected)) == chunks[-1].usage.completion_tokens
    entry = llm.entry(chunks[0].id)
    assert (entry["kind"], entry["topic"], entry["language"], entry["outcome"]) == (
        "plan_part",
        "UNIT 1 Making New Friends TOPIC 1 Welcome to China!",
        "Chinese",
        "completed",
    )


def test_teaching_plan_fault_hits_the_title_only(llm: Llm) -> None:
    lesson = "Cats [[fault:http500]]"
    with pytest.raises(openai.InternalServerError):
        llm.stream(teacher_messages(lesson, "Title"))
    assert content(list(llm.stream(teacher_messages(lesson, "Teaching Hours")))).startswith(
        "[TEACHING_PLAN_BEGIN]\n## Teaching Hours\n"
    )
    assert [(e["kind"], e["outcome"]) for e in llm.journal()] == [
        ("plan_title", "fault:http500"),
        ("plan_part", "completed"),
    ]


def test_stream_without_include_usage_has_no_usage_chunk(llm: Llm) -> None:
    chunks = list(llm.stream(outline_messages("Redis")))
    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert content(chunks) == script.outline_text("Redis", {})


def test_non_stream_outline(llm: Llm) -> None:
    reply = llm.client.chat.completions.create(model="m", messages=outline_messages("MySQL [[sections:4]]"))
    assert reply.object == "chat.completion" and reply.model == "m"
    text = reply.choices[0].message.content
    assert text == script.outline_text("MySQL", {"sections": "4"})
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == len(script.tokenize(text))
    entry = llm.entry(reply.id)
    assert (entry["kind"], entry["topic"], entry["outcome"], entry["stream"]) == (
        "outline",
        "MySQL",
        "completed",
        False,
    )


def test_other_prompt_gets_generic_reply(llm: Llm) -> None:
    reply = llm.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content == script.other_text("Hi")
    assert llm.entry()["kind"] == "other"


def test_concurrent_streams_are_routed_by_topic(llm: Llm) -> None:
    topics = ["Redis [[pace:400]]", "PostgreSQL [[pace:400]]"]
    streams = [iter(llm.stream(section_messages(t))) for t in topics]
    parts: list[list[str]] = [[], []]
    done = [False, False]
    while not all(done):  # interleave reads so both streams are open at once
        for i, it in enumerate(streams):
            chunk = next(it, None)
            if chunk is None:
                done[i] = True
            elif chunk.choices:
                parts[i].append(chunk.choices[0].delta.content or "")
    assert "".join(parts[0]) == script.section_text("Redis", DIRECTORY)
    assert "".join(parts[1]) == script.section_text("PostgreSQL", DIRECTORY)


def test_pace_directive_paces_tokens(llm: Llm) -> None:
    start = time.monotonic()
    chunks = list(llm.stream(outline_messages("Go [[pace:100]]")))
    elapsed = time.monotonic() - start
    assert elapsed >= (len(chunks) - 2) / 100 * 0.9


def test_malformed_json_is_a_400_error_object(llm: Llm) -> None:
    response = httpx.post(
        f"{llm.url}/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert llm.entry()["outcome"] == "rejected"


# --------------------------------------------------------------------------- faults


def test_fault_http500(llm: Llm) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        llm.stream(outline_messages("Redis [[fault:http500]]"))
    assert info.value.status_code == 500
    assert info.value.body["type"] == "server_error"  # type: ignore[index]
    assert llm.entry()["outcome"] == "fault:http500"


def test_fault_http429_has_retry_after(llm: Llm) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        llm.stream(outline_messages("Redis [[fault:http429]]"))
    assert info.value.response.headers["Retry-After"] == "1"
    assert llm.entry()["outcome"] == "fault:http429"


def test_fault_close_drops_connection_without_response(llm: Llm) -> None:
    with pytest.raises(openai.APIConnectionError):
        llm.stream(outline_messages("Redis [[fault:close]]"))
    assert llm.entry()["outcome"] == "fault:close"


def test_fault_cut_aborts_chunked_body(llm: Llm) -> None:
    received: list[Any] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        llm.stream(outline_messages("Redis [[fault:cut]][[after:3]]")) as s,
    ):
        received.extend(s)
    expected = script.tokenize(script.outline_text("Redis", {}))[:3]
    assert content(received) == "".join(expected)
    entry = llm.entry()
    assert (entry["outcome"], entry["tokens_sent"]) == ("fault:cut", 3)


def test_fault_stall_pauses_then_finishes(llm: Llm) -> None:
    stamps: list[float] = []
    chunks = []
    for chunk in llm.stream(outline_messages("Redis [[fault:stall]][[stall:1]][[after:2]]")):
        stamps.append(time.monotonic())
        chunks.append(chunk)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # Chunk 0 is the role chunk, so the silence falls between chunk 2 (2nd token) and chunk 3.
    # From the first token's arrival: a late second token (a busy machine) cannot shorten the silence.
    assert stamps[3] - stamps[1] >= 0.9 and max(gaps[:2] + gaps[3:]) < 0.5
    assert content(chunks) == script.outline_text("Redis", {})
    assert llm.entry(chunks[0].id)["outcome"] == "fault:stall"


def test_stalled_stream_abandoned_by_client_timeout_is_client_closed(llm: Llm) -> None:
    client = llm.client.with_options(timeout=httpx.Timeout(5, read=0.5))
    stream = client.chat.completions.create(
        model="m", messages=outline_messages("Redis [[fault:stall]][[stall:30]]"), stream=True
    )
    with pytest.raises(httpx.ReadTimeout), stream:
        for _ in stream:
            pass
    assert llm.wait_outcome("client_closed", timeout=2) < 2
    assert llm.entry()["tokens_sent"] == 5


def test_fault_bad_outline_is_not_a_dict(llm: Llm) -> None:
    chunks = list(llm.stream(outline_messages("Redis [[fault:bad_outline]]")))
    assert content(chunks) == script.REFUSAL_TEXT
    assert llm.entry(chunks[0].id)["outcome"] == "fault:bad_outline"


def test_fault_empty_outline_has_no_sections(llm: Llm) -> None:
    chunks = list(llm.stream(outline_messages("Redis [[fault:empty_outline]]")))
    title = json.loads(script.outline_text("Redis", {}))["title"]
    assert json.loads(content(chunks)) == {"title": title, "directory": []}
    assert llm.entry(chunks[0].id)["outcome"] == "fault:empty_outline"


def test_fault_at_section_spares_the_outline(llm: Llm) -> None:
    topic = "Redis [[fault:http500]][[fault_at:section]]"
    assert content(list(llm.stream(outline_messages(topic)))) == script.outline_text("Redis", {})
    for _ in range(2):  # every section request of the topic fails
        with pytest.raises(openai.InternalServerError):
            llm.stream(section_messages(topic))
    assert [e["outcome"] for e in llm.journal()] == ["completed", "fault:http500", "fault:http500"]


# ------------------------------------------------------------------ client hang-ups


def test_client_closing_mid_stream_is_journaled_promptly(llm: Llm) -> None:
    stream = llm.stream(section_messages("Redis [[pace:20]]"))
    it = iter(stream)
    first = next(it)
    for _ in range(3):
        next(it)
    assert httpx.get(f"{llm.url}/_scripted/stats").json() == {"active": 1}
    stream.close()
    assert llm.wait_outcome("client_closed", timeout=2, completion_id=first.id) < 2
    entry = llm.entry(first.id)
    assert 3 <= entry["tokens_sent"] < len(script.tokenize(script.section_text("Redis", DIRECTORY)))
    assert entry["ended"] is not None
    assert httpx.get(f"{llm.url}/_scripted/stats").json() == {"active": 0}


# ----------------------------------------------------------------------- lifecycle


def test_process_exits_on_max_lifetime_and_on_sigterm(tmp_path: Path) -> None:
    lifetime_log, term_log = tmp_path / "lifetime.log", tmp_path / "term.log"
    with lifetime_log.open("wb") as out:
        short = subprocess.Popen(
            scripted_llm_args(free_port(), 0, max_lifetime=1), cwd=ROOT, stdout=out, stderr=out
        )
    try:
        port = free_port()
        with server(
            scripted_llm_args(port, 0, max_lifetime=60),
            health_url=f"http://127.0.0.1:{port}/healthz",
            log=term_log,
            startup_timeout=30,
        ) as proc:
            proc.terminate()
            assert proc.wait(10) == 0
        assert "stopping on signal" in term_log.read_text()
        assert short.wait(15) == 0
        assert "max-lifetime" in lifetime_log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            short.kill()
        short.wait(5)


# ------------------------------------------------- chat UIs and real-model behaviours


def owui_chat(user: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": "Sure, here it is."}]


def test_open_webui_housekeeping_requests_get_json(llm: Llm) -> None:
    from tests.openwebui_prompts import follow_ups_body, tags_body, title_body

    chat = owui_chat("Write a tutorial about Redis")
    for body, key in (
        (title_body(chat), "title"),
        (follow_ups_body(chat), "follow_ups"),
        (tags_body(chat), "tags"),
    ):
        reply = httpx.post(f"{llm.url}/v1/chat/completions", json=body, timeout=10).json()
        answer = json.loads(reply["choices"][0]["message"]["content"])
        assert list(answer) == [key] and reply["choices"][0]["finish_reason"] == "stop"
        entry = llm.entry(reply["id"])
        assert (entry["kind"], entry["task"], entry["outcome"]) == ("housekeeping", key, "completed")
    assert llm.journal()[0]["max_tokens"] == 1000


def test_housekeeping_streamed_with_fault_at_housekeeping(llm: Llm) -> None:
    from tests.openwebui_prompts import title_prompt

    messages = [
        {
            "role": "user",
            "content": title_prompt(owui_chat("Redis [[fault:http429]][[fault_at:housekeeping]]")),
        }
    ]
    with pytest.raises(openai.RateLimitError):
        llm.stream(messages)
    chunks = list(llm.stream([{"role": "user", "content": title_prompt(owui_chat("Redis"))}]))
    assert "title" in json.loads(content(chunks))


@pytest.mark.parametrize("stream", [True, False])
def test_max_tokens_stops_with_finish_reason_length(llm: Llm, stream: bool) -> None:
    messages = section_messages("Redis")
    expected = script.tokenize(script.section_text("Redis", DIRECTORY))
    if stream:
        chunks = list(llm.stream(messages, max_tokens=7, stream_options={"include_usage": True}))
        text, finish = content(chunks), chunks[-2].choices[0].finish_reason
        assert chunks[-1].usage.completion_tokens == 7
        completion_id = chunks[0].id
    else:
        reply = llm.client.chat.completions.create(
            model="m", messages=messages, extra_body={"max_completion_tokens": 7}
        )
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert reply.usage is not None and reply.usage.completion_tokens == 7
        completion_id = reply.id
    assert text == "".join(expected[:7]) and finish == "length"
    entry = llm.entry(completion_id)
    assert (entry["max_tokens"], entry["tokens_sent"], entry["finish_reason"]) == (7, 7, "length")
    # A cap above the reply's length changes nothing.
    reply = llm.client.chat.completions.create(model="m", messages=messages, max_tokens=100000)
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content == "".join(expected)


def test_reasoning_think_tags_stream_before_the_answer(llm: Llm) -> None:
    chunks = list(
        llm.stream(outline_messages("Redis [[reasoning:think]]"), stream_options={"include_usage": True})
    )
    text = content(chunks)
    assert text.startswith("<think>\n") and '{"title": "x"}' in text and "Redis" in text.split("</think>")[0]
    thinking, answer = text.split("\n</think>\n\n")
    assert answer == script.outline_text("Redis", {})
    usage = chunks[-1].usage
    assert usage.completion_tokens == len(script.tokenize(thinking + "\n</think>\n\n")) + len(
        script.tokenize(answer)
    )
    assert llm.entry(chunks[0].id)["reasoning"] == "think"


@pytest.mark.parametrize("mode", ["reasoning_content", "reasoning"])
def test_reasoning_fields_come_before_any_content(llm: Llm, mode: str) -> None:
    body = {"model": "m", "messages": outline_messages(f"Redis [[reasoning:{mode}]]"), "stream": True}
    deltas = []
    with httpx.stream("POST", f"{llm.url}/v1/chat/completions", json=body, timeout=10) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                deltas.append(json.loads(line[6:])["choices"][0]["delta"])
    fields = [next(iter(d)) for d in deltas[1:] if d]
    first_content = fields.index("content")
    assert set(fields[:first_content]) == {mode} and set(fields[first_content:]) == {"content"}
    thinking = "".join(d.get(mode, "") for d in deltas)
    assert '{"title": "x"}' in thinking and "Redis" in thinking
    assert "".join(d.get("content") or "" for d in deltas) == script.outline_text("Redis", {})
    # Not streamed: the thinking is a message field of its own.
    reply = httpx.post(f"{llm.url}/v1/chat/completions", json={**body, "stream": False}, timeout=10).json()
    message = reply["choices"][0]["message"]
    assert message[mode] == thinking and message["content"] == script.outline_text("Redis", {})
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == len(script.tokenize(thinking))


def test_think_seconds_spreads_the_thinking(llm: Llm) -> None:
    start = time.monotonic()
    stamps = []
    for chunk in llm.stream(outline_messages("Redis [[reasoning:reasoning_content]][[think_seconds:1]]")):
        stamps.append((time.monotonic() - start, chunk))
    first_content = next(t for t, c in stamps if c.choices and c.choices[0].delta.content)
    assert 0.9 <= first_content < 2
    assert stamps[-1][0] - first_content < 0.5  # the answer itself is unpaced


def test_drip_sends_contentless_chunks_then_the_answer(llm: Llm) -> None:
    stamps: list[float] = []
    chunks = []
    start = time.monotonic()
    for chunk in llm.stream(outline_messages("Redis [[fault:drip]][[stall:1]][[drip_every:0.25]]")):
        stamps.append(time.monotonic() - start)
        chunks.append(chunk)
    drips = chunks[1:5]
    assert all(c.choices[0].delta.content is None for c in drips)
    assert [bool(c.choices[0].delta.tool_calls) for c in drips] == [False, True, False, True]
    assert 0.9 <= stamps[5] < 2
    assert content(chunks) == script.outline_text("Redis", {})
    entry = llm.entry(chunks[0].id)
    assert (entry["outcome"], entry["drip_chunks"]) == ("fault:drip", 4)


def test_client_leaving_during_the_drip_is_client_closed(llm: Llm) -> None:
    stream = llm.stream(outline_messages("Redis [[fault:drip]][[stall:30]][[drip_every:0.1]]"))
    it = iter(stream)
    first = next(it)
    next(it)
    stream.close()
    assert llm.wait_outcome("client_closed", timeout=2, completion_id=first.id) < 2
    assert llm.entry(first.id)["tokens_sent"] == 0
