"""What real deployments do around the core (issue 18): non-streaming clients that leave or time out,
generations longer than a proxy's patience, download links clicked in a browser, models that think,
upstreams that drip, and chat UIs' housekeeping requests."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest

from tests.integration.conftest import Proxied, Stack, gateway_behind_nginx
from tests.integration.helpers import LINK_PREFIX as LINK_MARK
from tests.integration.helpers import body, metric, split_link, stream_raw
from tests.openwebui_prompts import follow_ups_body, tags_body, title_body

pytestmark = pytest.mark.integration

KEY = "real-clients-key"
LIMIT_SECONDS = 4  # the keyed stack's generation limit
LINK_TTL = 3


@dataclass
class Keyed:
    app: Stack
    nginx: Proxied


@pytest.fixture(scope="module")
def keyed(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    """A worker with an API key, short-lived links and a short generation limit, behind nginx told
    the same limit."""
    env = {
        "GATEWAY_API_KEYS": KEY,
        "GATEWAY_LINK_TTL_SECONDS": str(LINK_TTL),
        "GATEWAY_MAX_GENERATION_SECONDS": str(LIMIT_SECONDS),
    }
    folder = tmp_path_factory.mktemp("keyed")
    with gateway_behind_nginx(llm_server, folder, env, max_generation_seconds=LIMIT_SECONDS) as proxied:
        yield Keyed(app=proxied.app, nginx=proxied)


def outcomes(stack: Stack, topic: str, count: int, timeout: float = 8) -> tuple[list[dict], float]:
    """The journal entries of `topic` once `count` of them have ended, and how long that took."""
    start = time.monotonic()
    entries: list[dict] = []
    while time.monotonic() - start < timeout:
        entries = [e for e in stack.journal() if e["topic"] == topic]
        if len(entries) >= count and all(e["outcome"] != "running" for e in entries):
            break
        time.sleep(0.1)
    return entries, time.monotonic() - start


def files_about(stack: Stack, word: str) -> list[str]:
    return [
        p.name for p in stack.tutorials.iterdir() if p.is_file() and word in p.read_text(encoding="utf-8")
    ]


# --- non-streaming clients that leave -----------------------------------------------------------------


def leave_whole(url: str, topic: str, after: float) -> None:
    """A `stream: false` request whose client closes its socket after `after` seconds, unanswered."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    data = json.dumps(body(topic)).encode()
    with socket.create_connection((host, port), timeout=10) as sock:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        time.sleep(after)


@pytest.mark.parametrize("front", ["gunicorn", "nginx"])
def test_a_non_streaming_client_that_leaves_cancels_its_generation(stack, proxied, front):
    topic = f"Abandoned whole answer via {front}"
    cancelled = metric(stack.url, "gateway_generation_duration_seconds_count", outcome="cancelled")
    leave_whole(stack.url if front == "gunicorn" else proxied.url, f"{topic} [[pace:20]]", after=1.5)
    left = time.monotonic()
    entries, _ = outcomes(stack, topic, 1)
    assert [e["outcome"] for e in entries] == ["client_closed"], entries  # the outline call, closed
    assert time.monotonic() - left < 5
    assert files_about(stack, topic) == []
    assert (
        metric(stack.url, "gateway_generation_duration_seconds_count", outcome="cancelled") >= cancelled + 1
        # (other tests' streams may end meanwhile: the journal above says which call was this one's)
    )


def test_an_sdk_that_times_out_and_retries_leaves_nothing_running(stack):
    topic = "Timed out by the SDK"
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=2.0, max_retries=2)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="write_tutorial", messages=[{"role": "user", "content": f"{topic} [[pace:20]]"}]
        )
    entries, _ = outcomes(stack, topic, 3)
    assert [e["outcome"] for e in entries] == ["client_closed"] * 3  # three attempts, each cancelled
    assert files_about(stack, topic) == []


# --- what nginx must not cut --------------------------------------------------------------------------


def test_a_whole_answer_runs_to_the_apps_own_time_limit_through_nginx(keyed):
    rendered = (keyed.nginx.prefix / "conf.d" / "gateway.conf").read_text()
    assert f"proxy_read_timeout 1m{LIMIT_SECONDS}s;" in rendered  # nginx outwaits the app by a minute
    r = httpx.post(
        f"{keyed.nginx.url}/v1/chat/completions",
        json=body("Too long for its limit [[pace:5]]"),
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert r.status_code == 504
    error = r.json()["error"]
    assert error["code"] == "generation_timeout" and f"{LIMIT_SECONDS} s" in error["message"]


# --- download links that open in a browser ----------------------------------------------------------


def test_a_signed_link_opens_in_a_browser_without_the_key_until_it_expires(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    s = stream_raw(keyed.nginx.url, body("Signed links [[pace:0]][[sections:1]]", stream=True), headers=auth)
    assert s.status == 200
    info = s.chunks()[-1]["file"]
    tutorial, link = split_link(s.text())
    url = urlsplit(info["url"])
    assert set(parse_qs(url.query)) == {"expires", "signature"} and f"({info['url']})" in link
    browser = {"Accept": "text/html", "User-Agent": "Mozilla/5.0"}  # no Authorization header
    r = httpx.get(info["url"], headers=browser, timeout=10)
    assert r.status_code == 200 and r.content == tutorial.encode()
    assert r.headers["content-disposition"].startswith("attachment")

    bare = f"{url.scheme}://{url.netloc}{url.path}"
    (keyed.app.tutorials / ("Other-" + "c" * 32 + ".md")).write_text("another file")
    other = bare.replace(info["name"], "Other-" + "c" * 32 + ".md")  # this link does not open it
    tampered = info["url"].replace("signature=", "signature=x")
    for refused in (bare, tampered, f"{other}?{url.query}"):
        r = httpx.get(refused, headers=browser, timeout=10)
        assert r.status_code == 401, refused
        assert r.json()["error"]["code"] == "invalid_api_key" and "link" in r.json()["error"]["message"]
    time.sleep(LINK_TTL + 1.5)
    expired = httpx.get(info["url"], headers=browser, timeout=10)
    assert expired.status_code == 401 and expired.headers["content-type"] == "application/json"
    assert httpx.get(bare, headers=auth, timeout=10).status_code == 200  # the key still opens it


# --- models and routes --------------------------------------------------------------------------------


def test_models_have_a_name_and_a_description(proxied):
    models = httpx.get(f"{proxied.url}/v1/models", timeout=10).json()["data"]
    assert {m["id"]: m["name"] for m in models} == {
        "write_tutorial": "Tutorial writer",
        "write_teaching_plan": "Teaching plan writer",
    }
    assert all(m["description"] for m in models)


# --- chat UIs' housekeeping -----------------------------------------------------------------------------


CHAT = [
    {"role": "user", "content": "a tutorial about Redis [[pace:20]]"},
    # A whole tutorial: the task prompt that quotes it is longer than a topic may be (4,000 characters).
    {"role": "assistant", "content": "# Mastering Redis\n\n" + "Redis is an in-memory data store. " * 200},
]


@pytest.mark.parametrize(
    ("make_body", "field", "stream"),
    [(title_body, "title", False), (follow_ups_body, "follow_ups", True), (tags_body, "tags", False)],
)
def test_open_webui_housekeeping_is_answered_by_the_llm_in_seconds_without_an_agent(
    proxied, stack, make_body, field, stream
):
    payload = {**make_body(CHAT, model="write_tutorial"), "stream": stream}
    count = metric(stack.url, "gateway_generation_duration_seconds_count", model="housekeeping")
    started = time.monotonic()
    if stream:
        s = stream_raw(proxied.url, payload)
        assert s.status == 200 and s.data()[-1] == "[DONE]"
        answer, model = s.text(), s.chunks()[0]["model"]
        assert "file" not in s.chunks()[-1]
    else:
        r = httpx.post(f"{proxied.url}/v1/chat/completions", json=payload, timeout=30)
        assert r.status_code == 200
        answer, model = r.json()["choices"][0]["message"]["content"], r.json()["model"]
        assert "file" not in r.json() and LINK_MARK not in answer
    assert time.monotonic() - started < 5  # at 20 tokens/s: a short answer, not a tutorial
    assert model == "write_tutorial"
    assert field in json.loads(answer)  # the format the prompt asked for
    journal = stack.journal()
    assert not any(
        "### Task" in (e["topic"] or "") for e in journal if e["kind"] != "housekeeping"
    )  # no agent
    assert files_about(stack, "### Task") == []  # and so no file
    calls = [e for e in stack.journal() if e.get("kind") == "housekeeping" and e.get("task") == field]
    assert calls and calls[-1]["outcome"] == "completed"
    if field == "title":
        assert calls[-1]["max_tokens"] == 1000  # the client's max_tokens, honoured
    assert metric(stack.url, "gateway_generation_duration_seconds_count", model="housekeeping") == count + 1


# --- reasoning models upstream --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["think", "reasoning_content", "reasoning"])
def test_a_reasoning_models_thinking_is_reasoning_and_never_in_the_tutorial(stack, mode):
    topic = f"Thinking upstream {mode}"
    s = stream_raw(stack.url, body(f"{topic} [[pace:0]][[sections:2]][[reasoning:{mode}]]", stream=True))
    assert s.status == 200 and s.data()[-1] == "[DONE]", s.data()[-3:]
    tutorial, _ = split_link(s.text())
    reasoning = s.text("reasoning_content")
    assert "<think>" not in tutorial and "let me think" not in tutorial.lower()
    assert tutorial.startswith("# ") and topic in tutorial
    assert reasoning.count('{"title": "x"}') == 3  # each call's thinking: the outline, 2 sections
    info = s.chunks()[-1]["file"]
    assert (stack.tutorials / info["name"]).read_text(encoding="utf-8") == tutorial


def test_a_long_reasoning_phase_streams_to_the_client_and_a_client_leaving_it_cancels_it(stack):
    topic = "Thinking for long"
    payload = body(f"{topic} [[reasoning:reasoning_content]][[think_seconds:30]]", stream=True)
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=payload, timeout=30) as r:
        seen = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.append(line)
            if len(seen) >= 4:
                break  # thinking is arriving: leave
    entries, waited = outcomes(stack, topic, 1)
    assert [e["outcome"] for e in entries] == ["client_closed"] and waited < 5
    assert any("reasoning_content" in line for line in seen[1:])


def test_an_upstream_that_drips_gets_heartbeats_sent_and_a_client_leaving_noticed(stack):
    """Content-less chunks every 0.2 s for 30 s: bytes arrive, text does not."""
    topic = "Dripping upstream"
    payload = body(f"{topic} [[fault:drip]][[drip_every:0.2]][[stall:30]]", stream=True)
    heartbeats = 0
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=payload, timeout=30) as r:
        for line in r.iter_lines():
            heartbeats += line.startswith(": keep-alive")
            if heartbeats >= 2:  # GATEWAY_HEARTBEAT_SECONDS is 1 here
                break
    entries, waited = outcomes(stack, topic, 1)
    assert [e["outcome"] for e in entries] == ["client_closed"] and waited < 5
    assert entries[0]["drip_chunks"] > 5
