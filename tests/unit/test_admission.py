"""The door gives back what it took on every way out, exceptions included: in-process, each path that
admits a generation (chat streamed and not, the Responses API streamed, not and background, a chat
UI's housekeeping request) meets an exception after admission, from the upstream client or from the
response store, and answers OpenAI's 500 with its admission released and nothing left running."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import gevent
import pytest

from app import create_app
from app.services import init_app, services
from tests.unit.test_generation import ScriptedReply

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
TOPIC = "Admission"
HOUSEKEEPING = "### Task:\nSuggest a concise title for this chat."


class Exploding:
    """An upstream client whose every call raises what no handler expects (a bug, a library's
    TypeError): the failure mode of the lone surrogate that once leaked admissions."""

    def __init__(self) -> None:
        self.calls = 0

    def stream(self, payload: dict[str, Any]) -> Any:
        self.calls += 1
        raise TypeError("exploding upstream client")


class Silent:
    """An upstream client whose replies say nothing until closed: a generation that is under way."""

    def stream(self, payload: dict[str, Any]) -> ScriptedReply:
        return ScriptedReply([3600.0])


class FailingStore:
    """A response store whose writes raise an unexpected exception."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def create(self, response: dict[str, Any]) -> None:
        raise ValueError("failing store")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture(scope="module")
def module_app(settings):
    """One app per module, as one per worker: its bridge's loop is the thread's one running loop."""
    app = create_app(
        settings.model_copy(update={"max_generations_per_worker": 3, "first_event_wait_seconds": 0.1})
    )
    app.config["PROPAGATE_EXCEPTIONS"] = False
    yield app
    services(app).bridge.stop()


@pytest.fixture
def app(module_app):
    """The module's app, with the services and upstream client a test changed put back afterwards."""
    svc = services(module_app)
    client = svc.runtime.client
    yield module_app
    svc.runtime.client = client
    init_app(module_app, svc)


def chat(stream: bool, topic: str = TOPIC) -> dict[str, Any]:
    return {"model": "write_tutorial", "stream": stream, "messages": [{"role": "user", "content": topic}]}


def responses(stream: bool, background: bool = False, topic: str = TOPIC) -> dict[str, Any]:
    return {"model": "write_tutorial", "stream": stream, "background": background, "input": topic}


def settled(app: Any) -> bool:
    """Nothing runs once the request is over: no admission held, no generation, no agent task."""
    svc = services(app)
    gevent.sleep(0.02)  # the loop runs what was handed to it (a cancel, a task's first step)
    deadline = time.monotonic() + 5
    while (svc.lifecycle.held or svc.lifecycle.active or svc.bridge.tasks()) and time.monotonic() < deadline:
        gevent.sleep(0.01)
    return svc.lifecycle.held == 0 and not svc.lifecycle.active and not svc.bridge.tasks()


def read(response: Any) -> bytes:
    """The whole body (kept: `.json` reads it again), and the response closed as a server closes it."""
    try:
        return bytes(response.get_data())
    finally:
        response.close()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat(stream=True)),
        (CHAT, chat(stream=False)),
        (CHAT, chat(stream=True, topic=HOUSEKEEPING)),
        (CHAT, chat(stream=False, topic=HOUSEKEEPING)),
        (RESPONSES, responses(stream=True)),
        (RESPONSES, responses(stream=False)),
    ],
    ids=["chat-stream", "chat", "housekeeping-stream", "housekeeping", "responses-stream", "responses"],
)
def test_an_exception_from_the_upstream_client_after_admission_releases_it(app, path, body):
    client = Exploding()
    services(app).runtime.client = client
    capacity = services(app).lifecycle.capacity
    for _ in range(capacity + 2):  # a leak would fill the capacity and answer 429
        r = app.test_client().post(path, json=body)
        read(r)
        assert r.status_code == 500, r.data
        assert r.json["error"]["type"] == "server_error" and "exploding" not in r.json["error"]["message"]
        assert settled(app)
    assert client.calls == capacity + 2  # each got past admission to the upstream call


def test_a_background_response_whose_upstream_client_raises_fails_with_a_code_and_releases(app):
    services(app).runtime.client = Exploding()
    capacity = services(app).lifecycle.capacity
    for _ in range(capacity + 2):
        r = app.test_client().post(RESPONSES, json=responses(stream=False, background=True))
        assert r.status_code == 200 and r.json["status"] in ("queued", "in_progress")
        services(app).lifecycle.background.join(timeout=10)
        assert settled(app)
        stored = app.test_client().get(f"{RESPONSES}/{r.json['id']}")
        assert stored.json["status"] == "failed" and stored.json["error"]["code"]
        events = read(app.test_client().get(f"{RESPONSES}/{r.json['id']}?stream=true"))
        assert b'"type":"error","code":"agent_error"' in events


@pytest.mark.parametrize(
    "body",
    [
        responses(stream=True),
        responses(stream=False, background=True),
        responses(stream=True, background=True),
    ],
    ids=["stream", "background", "background-stream"],
)
def test_a_response_store_that_raises_after_admission_releases_it(app, body):
    svc = services(app)
    svc.runtime.client = Silent()  # the generation is under way when the store fails
    init_app(app, dataclasses.replace(svc, responses=FailingStore(svc.responses)))
    for _ in range(svc.lifecycle.capacity + 2):
        r = app.test_client().post(RESPONSES, json=body)
        read(r)
        assert r.status_code == 500 and r.json["error"]["type"] == "server_error"
        assert settled(app)
