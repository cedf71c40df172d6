"""Byte-level framing and headers of the stream, read with a plain HTTP client."""

from __future__ import annotations

import json

import pytest

from tests.integration.helpers import body, split_link, stream_raw

pytestmark = pytest.mark.integration


def test_headers_and_framing(stack):
    s = stream_raw(stack.url, body("SQLite WAL mode", stream=True, stream_options={"include_usage": True}))
    assert s.status == 200
    assert s.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert s.headers["cache-control"] == "no-cache"
    assert s.headers["x-accel-buffering"] == "no"
    data_events = [e for e in s.events if not e.startswith(b":")]
    for event in data_events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n") == 2
    assert data_events[-1] == b"data: [DONE]\n\n"
    payloads = [json.loads(e[6:-2]) for e in data_events[:-1]]
    assert {p["id"] for p in payloads} == {payloads[0]["id"]}
    assert {p["created"] for p in payloads} == {payloads[0]["created"]}
    assert all(p["object"] == "chat.completion.chunk" and p["model"] == "write_tutorial" for p in payloads)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finish = [p for p in payloads if p["choices"] and p["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop"
    assert finish[0]["choices"][0]["delta"] == {}
    assert payloads[-1]["choices"] == [] and set(payloads[-1]["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    }
    assert all(p["usage"] is None for p in payloads[:-1])
    # reasoning strictly before content; the link is the last content delta
    kinds = [next(iter(p["choices"][0]["delta"])) for p in payloads[1:-2]]
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning_content")
    _tutorial, link = split_link(s.text())
    assert payloads[-3]["choices"][0]["delta"]["content"] == link


def test_heartbeats_during_llm_silence(stack):
    """A stall of 3 s in the scripted LLM with 1 s heartbeats: comment events arrive, the stream ends well."""
    s = stream_raw(
        stack.url,
        body("Heartbeat topic [[fault:stall]][[fault_at:section]][[stall:3]][[after:2]]", stream=True),
    )
    assert s.status == 200
    assert s.events.count(b": keep-alive\n\n") >= 2
    assert s.events[-1] == b"data: [DONE]\n\n"
    assert s.chunks()[-1]["choices"][0]["finish_reason"] == "stop"
