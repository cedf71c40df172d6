"""Real Responses API clients through nginx (issue 21): openai-python's newest release (.venv-tools, the
gateway's own openai is 1.x), openai node and the Vercel AI SDK's default `openai()` provider
(tests/clients/node). Each runs as a program of its own (tests/clients/); every event it saw is checked
against the SDK's types, numbered 0, 1, 2, ... and the text it assembled is the downloaded file plus the
link the gateway appends."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import pytest

from tests.integration.helpers import split_link
from tests.procs import ROOT

pytestmark = pytest.mark.integration

CLIENTS = ROOT / "tests" / "clients"
NODE = CLIENTS / "node"
TOOLS_PYTHON = ROOT / ".venv-tools" / "bin" / "python"

# The event types of one tutorial, a run of deltas counted once: the outline as a reasoning item, then
# the tutorial as a message.
SEQUENCE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.reasoning_text.delta",
    "response.reasoning_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def run(args: list[str], stdin: str | None = None, timeout: float = 120) -> list[dict[str, Any]]:
    """The JSON lines a client program printed; a non-zero exit fails the test with its stderr."""
    installed = TOOLS_PYTHON if args[0] == str(TOOLS_PYTHON) else NODE / "node_modules" / ".installed"
    if not installed.exists():
        pytest.fail(f"{installed} is missing: run `make install`", pytrace=False)
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"{args[:3]} exited with {done.returncode}:\n{done.stderr[-3000:]}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def python_client(mode: str, base_url: str, prompt: str, *extra: str) -> list[dict[str, Any]]:
    program = [str(TOOLS_PYTHON), str(CLIENTS / "responses_client.py"), mode]
    return run([*program, "--base-url", base_url, "--input", prompt, *extra])


def node_client(program: str, base_url: str, prompt: str) -> list[dict[str, Any]]:
    return run(["node", str(NODE / program), base_url, prompt])


def sdk_checked(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`events` (another program's) validated by openai-python's types: the same events, back."""
    lines = "".join(json.dumps(e) + "\n" for e in events)
    checked = run([str(TOOLS_PYTHON), str(CLIENTS / "responses_client.py"), "validate"], stdin=lines)
    return [line["event"] for line in checked]


def download(url: str) -> bytes:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment")
    return r.content


def check_tutorial(text: str, info: dict[str, Any]) -> str:
    """`text` is the downloaded file and then the gateway's link to it; the tutorial."""
    tutorial, link = split_link(text)
    assert link == f"\n\n---\n\n[Download {info['name']}]({info['url']})\n"
    assert tutorial.startswith("# ") and download(info["url"]) == tutorial.encode()
    return tutorial


def check_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """One whole response's events: numbered from 0 without gaps, in OpenAI's order, the deltas adding up
    to each done event and to the completed response; the completed response."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    collapsed = [t for n, t in enumerate(types) if n == 0 or t != types[n - 1] or not t.endswith(".delta")]
    assert collapsed == SEQUENCE, collapsed
    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)
    reasoning_item, message_item = (e["item"] for e in by_type["response.output_item.added"])
    assert reasoning_item["type"] == "reasoning" and message_item["type"] == "message"
    reasoning = "".join(e["delta"] for e in by_type["response.reasoning_text.delta"])
    text = "".join(e["delta"] for e in by_type["response.output_text.delta"])
    assert {e["item_id"] for e in by_type["response.reasoning_text.delta"]} == {reasoning_item["id"]}
    assert {e["item_id"] for e in by_type["response.output_text.delta"]} == {message_item["id"]}
    assert by_type["response.reasoning_text.done"][0]["text"] == reasoning and '"directory"' in reasoning
    assert by_type["response.output_text.done"][0]["text"] == text
    final = by_type["response.completed"][0]["response"]
    assert final["status"] == "completed" and final["id"] == events[0]["response"]["id"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["output"][1]["content"][0]["text"] == text
    usage = final["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert 0 < usage["output_tokens_details"]["reasoning_tokens"] < usage["output_tokens"]
    check_tutorial(text, final["file"])
    return final


def test_openai_python_streams_events_its_types_accept(proxied):
    lines = python_client("stream", f"{proxied.url}/v1", "Responses from Python [[sections:2]]")
    events = [line["event"] for line in lines]
    final = check_events(events)
    assert "Responses from Python" in final["output"][1]["content"][0]["text"]


def test_openai_python_stream_helper_rebuilds_the_same_response(proxied):
    """`responses.stream()` accumulates the events into a response of its own (it refuses events that do
    not fit what came before): it equals the one the gateway completed."""
    lines = python_client("helper", f"{proxied.url}/v1", "Responses helper [[sections:2]]")
    final = check_events([line["event"] for line in lines[:-1]])
    rebuilt = lines[-1]
    assert rebuilt["output_text"] == final["output"][1]["content"][0]["text"]
    assert rebuilt["response"]["id"] == final["id"]
    texts = [[c["text"] for c in item["content"]] for item in rebuilt["response"]["output"]]
    assert texts == [[c["text"] for c in item["content"]] for item in final["output"]]


def test_openai_python_whole_response(proxied):
    [line] = python_client("create", f"{proxied.url}/v1", "Whole response [[sections:2]]")
    r = line["response"]
    assert r["object"] == "response" and r["status"] == "completed" and r["id"].startswith("resp_")
    assert [o["type"] for o in r["output"]] == ["reasoning", "message"]
    assert '"directory"' in r["output"][0]["content"][0]["text"]
    assert "Whole response" in check_tutorial(line["output_text"], r["file"])
    assert r["usage"]["output_tokens"] > 0


def test_openai_python_resumes_a_background_response_after_hanging_up(proxied):
    """Hang up after event 5 (the outline is streaming), then `retrieve(stream=True, starting_after=5)`:
    together the two streams are the whole response, no event twice or missing."""
    lines = python_client(
        "resume", f"{proxied.url}/v1", "Resumed in the background [[sections:2]]", "--drop-after", "5"
    )
    phases = [line.get("phase") for line in lines[:-1]]
    assert phases == ["created"] * 6 + ["resumed"] * (len(phases) - 6)
    final = check_events([line["event"] for line in lines[:-1]])
    assert final["background"] is True
    stored = lines[-1]["response"]  # GET /v1/responses/{id}, after the end
    assert stored["status"] == "completed" and stored["output"] == final["output"]
    assert stored["file"] == final["file"]


def test_a_failure_after_streaming_began_is_an_error_event_then_response_failed(proxied):
    topic = "Failing response [[fault:cut]][[fault_at:section]][[after:3]]"
    events = [line["event"] for line in python_client("stream", f"{proxied.url}/v1", topic)]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    error, failed = events[-2:]
    assert error["type"] == "error" and error["code"] == "upstream_unavailable" and error["message"]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "server_error"
    assert not any(e["type"] == "response.completed" for e in events)


def test_openai_node_streams_events_openai_python_accepts(proxied):
    events = node_client("responses.mjs", f"{proxied.url}/v1", "Responses from Node [[sections:2]]")
    check_events(sdk_checked(events))


def test_vercel_ai_sdk_default_provider_streams_the_tutorial(proxied):
    """`streamText({ model: openai('write_tutorial') })`, unmodified: the Responses API."""
    lines = node_client("vercel.mjs", f"{proxied.url}/v1", "Vercel streamText [[sections:2]]")
    *deltas, end = lines
    text = "".join(d["text"] for d in deltas)
    assert len(deltas) > 10 and text == end["text"]  # it streamed, and the deltas are the whole text
    # NOTE: no reasoning: @ai-sdk/openai reads only reasoning *summary* events, not reasoning_text.
    assert end["finishReason"] == "stop"
    usage = end["usage"]
    assert usage["outputTokens"] > 0 and usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    name = split_link(text)[1].removeprefix("\n\n---\n\n[Download ").split("]", 1)[0]
    url = text.rsplit("(", 1)[1].removesuffix(")\n")
    assert "Vercel streamText" in check_tutorial(text, {"name": name, "url": url})
