"""The official openai SDK against gunicorn (gevent) running MetaGPT against the scripted LLM."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.integration.helpers import split_link

pytestmark = pytest.mark.integration


def client(stack, **kw):
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=60, **kw)


def download(url: str) -> bytes:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/markdown; charset=utf-8"
    assert r.headers["content-disposition"].startswith("attachment")
    return r.content


def test_sync_stream_content_equals_downloaded_file(stack):
    chunks = list(
        client(stack).chat.completions.create(
            model="write_tutorial",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "PostgreSQL indexing"}],
        )
    )
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.model == "write_tutorial" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    tutorial, link = split_link(content)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in final] == ["stop"]
    info = final[0].model_extra["tutorial"]
    assert link == f"\n\n---\n\n[Download {info['name']}]({info['url']})\n"
    assert tutorial.startswith("# ") and "PostgreSQL indexing" in tutorial
    assert '"directory"' in reasoning and "PostgreSQL indexing" in reasoning
    assert '"directory"' not in tutorial  # the outline JSON is reasoning, never content
    data = download(info["url"])
    assert data == tutorial.encode() and info["bytes"] == len(data)
    assert (stack.tutorials / info["name"]).read_bytes() == data
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens > 100
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + usage.usage.completion_tokens


def test_async_stream(stack):
    async def run():
        aclient = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=60)
        stream = await aclient.chat.completions.create(
            model="write_tutorial",
            stream=True,
            messages=[{"role": "user", "content": [{"type": "text", "text": "Kafka consumer groups"}]}],
        )
        chunks = [c async for c in stream]
        await aclient.close()
        return chunks

    chunks = asyncio.run(run())
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    tutorial, _ = split_link(content)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert download(chunks[-1].model_extra["tutorial"]["url"]) == tutorial.encode()
    assert "Kafka consumer groups" in tutorial


def test_non_streaming_completion(stack):
    completion = client(stack).chat.completions.create(
        model="write_tutorial",
        messages=[{"role": "user", "content": "Redis persistence"}],
        temperature=0.3,
    )
    assert completion.object == "chat.completion" and completion.model == "write_tutorial"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    tutorial, _ = split_link(choice.message.content)
    assert download(completion.model_extra["tutorial"]["url"]) == tutorial.encode()
    assert "Redis persistence" in choice.message.model_extra["reasoning_content"]
    assert completion.usage.completion_tokens > 100
    entries = [e for e in stack.journal() if e["topic"] == "Redis persistence"]
    assert len(entries) >= 2 and all(e["temperature"] == 0.3 for e in entries)  # temperature reaches the LLM


def test_language_option_reaches_the_agent(stack):
    """`language` (an extra body field) is put into MetaGPT's prompts; the scripted LLM echoes it back."""
    client(stack).chat.completions.create(
        model="write_tutorial",
        messages=[{"role": "user", "content": "Nginx caching lang check"}],
        extra_body={"language": "French"},
    )
    entries = [e for e in stack.journal() if e["topic"] == "Nginx caching lang check"]
    assert entries and all(e["language"] == "French" for e in entries)
    client(stack).chat.completions.create(
        model="write_tutorial",
        messages=[{"role": "user", "content": "Nginx caching default lang"}],
    )
    entries = [e for e in stack.journal() if e["topic"] == "Nginx caching default lang"]
    assert entries and all(e["language"] == "English" for e in entries)


def test_nothing_is_written_outside_the_data_dir(stack):
    """MetaGPT writes under GATEWAY_DATA_DIR/metagpt, never into the working directory (the repo here),
    and its prompt log is off: its log files stay empty."""
    from tests.procs import ROOT

    client(stack).chat.completions.create(
        model="write_tutorial", messages=[{"role": "user", "content": "Paths"}]
    )
    for name in ("logs", "workspace", "data", "config"):
        assert not (ROOT / name).exists(), name
    logs = stack.tutorials.parent / "metagpt" / "logs"
    assert all(f.stat().st_size == 0 for f in logs.rglob("*") if f.is_file())


def test_models_endpoints(stack):
    c = client(stack)
    assert [m.id for m in c.models.list()] == ["write_tutorial", "write_teaching_plan"]
    assert c.models.retrieve("write_tutorial").owned_by == "metagpt"
    with pytest.raises(openai.NotFoundError) as info:
        c.models.retrieve("gpt-4")
    assert info.value.body["code"] == "model_not_found"


def test_unknown_model_is_404(stack):
    with pytest.raises(openai.NotFoundError) as info:
        client(stack).chat.completions.create(
            model="write_novel", stream=True, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 404
    assert info.value.body == {
        "message": "The model 'write_novel' does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
