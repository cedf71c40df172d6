"""Every path that admits a generation gives its admission back however the request ends, on a real
gunicorn (gevent worker) with the scripted LLM: inputs that once got past the door and leaked it (lone
surrogates, integers past 64 bits) are 400s before any work, and inputs that fail after admission (the
upstream's faults, before and after the first token) end with the gauge back at 0 and the whole capacity
admitted again."""

from __future__ import annotations

from contextlib import ExitStack

import httpx
import pytest

from tests.integration.conftest import gateway_behind_nginx
from tests.integration.helpers import hold_stream, metric, settle

pytestmark = pytest.mark.integration

PER_WORKER = 1
REPEAT = PER_WORKER + 2  # more than the capacity: a leak would turn the last ones into 429s
TOPIC = "Door [[pace:0]][[sections:1]]"
BEFORE = "[[fault:http500]]"  # the upstream refuses the first call: nothing streamed yet
AFTER = "[[fault:cut]][[after:3]][[fault_at:section]][[pace:0]][[sections:1]]"  # cut mid-stream
# A chat UI's title request (the scripted LLM reads directives from the quoted chat).
HOUSEKEEPING = (
    "### Task:\nSuggest a title.\n<chat_history>\nUSER: Redis [[fault:http500]][[fault_at:housekeeping]]\n"
    "</chat_history>"
)


def chat(topic: str, stream: bool) -> tuple[str, dict]:
    return "/v1/chat/completions", {
        "model": "write_tutorial",
        "stream": stream,
        "messages": [{"role": "user", "content": topic}],
    }


def responses(topic: str, stream: bool, background: bool = False) -> tuple[str, dict]:
    return "/v1/responses", {
        "model": "write_tutorial",
        "stream": stream,
        "background": background,
        "input": topic,
    }


@pytest.fixture(scope="module")
def gateway(llm_server, tmp_path_factory):
    env = {"GATEWAY_MAX_GENERATIONS_PER_WORKER": str(PER_WORKER), "GATEWAY_FIRST_EVENT_WAIT_SECONDS": "2"}
    with gateway_behind_nginx(llm_server, tmp_path_factory.mktemp("door"), env) as proxied:
        yield proxied


def send(url: str, path: str, body: dict) -> tuple[int, bytes]:
    with httpx.stream("POST", url + path, json=body, timeout=60) as r:
        return r.status_code, r.read()


def released(gateway) -> None:
    """Nothing runs, and every place of the capacity is admitted again."""
    app = gateway.app.url
    assert settle(app, "gateway_responses_background", 0, timeout=30) == 0
    assert settle(app, "gateway_active_generations", 0, timeout=30) == 0
    with ExitStack() as held, httpx.Client(timeout=30) as client:
        statuses = [
            hold_stream(client, gateway.url, "Held [[pace:5]]", held).status_code for _ in range(PER_WORKER)
        ]
    assert statuses == [200] * PER_WORKER
    assert settle(app, "gateway_active_generations", 0, timeout=30) == 0


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (*chat("SQL \ud800", stream=True), 400),
        (*chat("SQL \ud800", stream=False), 400),
        (*responses(TOPIC, stream=False, background=True), 400),
        (*chat(TOPIC, stream=True), 400),
        (*responses(TOPIC, stream=True), 400),
    ],
    ids=[
        "surrogate-chat-stream",
        "surrogate-chat",
        "surrogate-metadata-background",
        "max-tokens",
        "max-output",
    ],
)
def test_what_cannot_be_written_out_again_is_a_400_before_any_work(gateway, path, body, status):
    if body.get("background"):
        body["metadata"] = {"k": "\ud800"}
    elif path.endswith("completions") and body["messages"][0]["content"] == TOPIC:
        body["max_tokens"] = 2**64
    elif path.endswith("responses"):
        body["max_output_tokens"] = 2**64
    before = metric(gateway.app.url, "gateway_generation_duration_seconds_count")
    for _ in range(REPEAT):
        code, raw = send(gateway.url, path, body)
        assert code == status, raw
        error = httpx.Response(code, content=raw).json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
    assert metric(gateway.app.url, "gateway_generation_duration_seconds_count") == before  # no work began
    released(gateway)


@pytest.mark.parametrize(
    ("path", "body", "expect"),
    [
        (*chat(BEFORE, stream=True), 502),
        (*chat(AFTER, stream=True), b'"code":"upstream_'),
        (*chat(BEFORE, stream=False), 502),
        (*chat(HOUSEKEEPING, stream=True), 502),
        (*chat(HOUSEKEEPING, stream=False), 502),
        (*responses(BEFORE, stream=True), 502),
        (*responses(AFTER, stream=True), b"event: response.failed"),
        (*responses(BEFORE, stream=False), 502),
        (*responses(AFTER, stream=False, background=True), b'"status":"in_progress"'),
        (*responses(AFTER, stream=True, background=True), b"event: response.failed"),
    ],
    ids=[
        "chat-stream-before",
        "chat-stream-after",
        "chat",
        "housekeeping-stream",
        "housekeeping",
        "responses-stream-before",
        "responses-stream-after",
        "responses",
        "responses-background",
        "responses-background-stream",
    ],
)
def test_a_request_that_fails_after_admission_gives_it_back(gateway, path, body, expect):
    for _ in range(REPEAT):
        code, raw = send(gateway.url, path, body)
        if isinstance(expect, int):
            assert code == expect, raw
            assert httpx.Response(code, content=raw).json()["error"]["code"].startswith("upstream_")
        else:
            assert code == 200 and expect in raw, raw[-500:]
        if body.get("background"):  # it runs on after its request: let it end first
            assert settle(gateway.app.url, "gateway_responses_background", 0, timeout=30) == 0
    released(gateway)
