"""`Generation` and the body writer in-process: a real agent run on the real bridge, its LLM calls
relayed through `GatewayLLM` and `Call`, with a scripted upstream behind the relay's seam
(`app.upstream.reply.ReplyClient`) instead of sockets. Fast, and every path of the job: tokens, usage,
the file, heartbeats, a client that leaves, upstream failures, the time limit, unsupported LLM calls,
and the socket writer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest

from app.agents.base import Agent, AgentRequest, Artifact, Sink
from app.api.protocol import Completion
from app.errors import UpstreamError
from app.generation.body import ChatFraming, stream
from app.generation.job import Generation, collect
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.runtime.bridge import AsyncioBridge
from app.storage import FileStore
from app.transport.socket_body import SOCKET_BODY_KEY, SocketBody
from app.upstream.reply import SILENT, Read

BASE_URL = "http://gw.test"


class ScriptedReply:
    """One upstream reply: `Read`s, pauses (seconds of silence) and failures, in order. Implements
    `ReplyStream` without `pump` (never `steady`), as a stock client would."""

    steady = False

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.finished = False
        self.closed = False
        self._wake = gevent.event.Event()

    def read(self, wait: float | None) -> Read:
        while self.script:
            item = self.script[0]
            if isinstance(item, int | float):
                self._wake.wait(item if wait is None else min(item, wait))
                if self.closed:
                    raise OSError("closed")
                if wait is not None and wait < item:
                    self.script[0] = item - wait
                    return SILENT
                self.script.pop(0)
                continue
            self.script.pop(0)
            if isinstance(item, BaseException):
                raise item
            self.finished = not self.script
            return item
        raise AssertionError("read past the end of the reply")

    def pump(self, since: float, wait: float, take: Any) -> Any:
        raise AssertionError("pump is only called on a steady reply")

    def close(self) -> None:
        self.closed = True
        self._wake.set()


class ScriptedClient:
    """Hands out the replies in order and keeps what it was asked."""

    def __init__(self, *replies: ScriptedReply) -> None:
        self.replies = list(replies)
        self.payloads: list[dict[str, Any]] = []

    def stream(self, payload: dict[str, Any]) -> ScriptedReply:
        self.payloads.append(payload)
        return self.replies.pop(0)


def reply(*texts: str, usage: dict[str, int] | None = None, pause: float = 0.0) -> ScriptedReply:
    script: list[Any] = [pause] if pause else []
    script += [Read(text, 1) for text in texts]
    script.append(Read("", 0, usage))
    return ScriptedReply(script)


class Notes(Agent):
    """Plans (reasoning), adds a title, writes (content): the shape of a real agent."""

    id = "notes"
    name = "Notes"
    description = "test agent"
    artifact = "note"
    default_title = "note"

    def __init__(self, ask: str = "aask") -> None:
        self.ask = ask

    async def run(self, request: AgentRequest, sink: Sink, runtime: Any) -> Artifact:
        llm = runtime.llm(sink, request.temperature)
        sink.kind = "reasoning"
        await getattr(llm, self.ask)(f"plan {request.topic}")
        sink.kind = "content"
        sink.emit("content", "# Notes\n")
        await llm.aask("write")
        return Artifact(title="Notes", text=sink.content())


class Harness:
    def __init__(
        self,
        settings: Any,
        tmp_path: Any,
        bridge: AsyncioBridge,
        client: ScriptedClient,
        agent: Agent,
        **limits: Any,
    ):
        from app.runtime.llm import Runtime

        self.metrics = Metrics()
        self.store = FileStore(tmp_path)
        self.store.ensure()
        self.runtime = Runtime(settings, self.store, self.metrics)
        self.runtime.client = client  # the seam: the relay reads whatever implements ReplyClient
        self.client = client
        self.agent = agent
        self.bridge = bridge
        self.lifecycle = Lifecycle(10)
        self.max_seconds = limits.get("max_seconds", 30.0)
        self.max_content_chars = limits.get("max_content_chars", 4 << 20)

    def start(self, topic: str = "gevent") -> Generation:
        return Generation(
            self.bridge,
            self.runtime,
            self.agent,
            AgentRequest(topic=topic, language="English"),
            metrics=self.metrics,
            lifecycle=self.lifecycle,
            admission=self.lifecycle.admit(),
            started=time.monotonic(),
            max_seconds=self.max_seconds,
            max_content_chars=self.max_content_chars,
        )

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0  # type: ignore[union-attr]

    def files(self) -> list[str]:
        return sorted(p.name for p in self.store.folder.iterdir())

    def settle_tasks(self) -> int:
        deadline = time.monotonic() + 5
        while self.bridge.tasks() and time.monotonic() < deadline:
            gevent.sleep(0.01)
        return self.bridge.tasks()


@pytest.fixture(scope="module")
def bridge() -> Iterator[AsyncioBridge]:
    """One per module, as there is one per worker: asyncio allows one running loop per thread."""
    bridge = AsyncioBridge()
    yield bridge
    bridge.stop()


@pytest.fixture
def make(settings, tmp_path, bridge) -> Any:
    def build(*replies: ScriptedReply, agent: Agent | None = None, **limits: Any) -> Harness:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        return Harness(settings, folder, bridge, ScriptedClient(*replies), agent or Notes(), **limits)

    return build


def events(body: Iterator[bytes]) -> list[Any]:
    """The SSE body's events: JSON payloads, "[DONE]", or ":" comments."""
    out: list[Any] = []
    for raw in b"".join(body).split(b"\n\n"):
        if not raw:
            continue
        line = raw.decode()
        if line.startswith(":"):
            out.append(":")
        else:
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def deltas(chunks: list[Any], key: str) -> str:
    return "".join(
        c["choices"][0]["delta"].get(key) or "" for c in chunks if isinstance(c, dict) and c.get("choices")
    )


def test_a_stream_relays_every_token_in_order_then_the_file_the_usage_and_done(make):
    h = make(
        reply('{"plan"', ": 1}", usage={"prompt_tokens": 7, "completion_tokens": 2}),
        reply("Hello", " world", usage={"prompt_tokens": 5, "completion_tokens": 3}),
    )
    generation = h.start()
    completion = Completion(model="notes", include_usage=True)
    out = events(stream(generation, ChatFraming(completion, BASE_URL, None), heartbeat=5.0))

    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert deltas(out, "reasoning_content") == '{"plan": 1}'
    content = deltas(out, "content")
    (name,) = h.files()
    assert content == f"# Notes\nHello world\n\n---\n\n[Download {name}]({BASE_URL}/download/{name})\n"
    assert (h.store.folder / name).read_text() == "# Notes\nHello world"  # the file is the content
    final, usage, done = out[-3], out[-2], out[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert (
        final["file"]
        == final["note"]
        == {
            "name": name,
            "url": f"{BASE_URL}/download/{name}",
            "bytes": len("# Notes\nHello world"),
            "title": "Notes",
            "media_type": "text/markdown",
        }
    )
    assert usage["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    assert done == "[DONE]"
    assert len({c["id"] for c in out if isinstance(c, dict)}) == 1
    # What the agent asked went upstream as chat completions, in order.
    assert [p["messages"][-1]["content"] for p in h.client.payloads] == ["plan gevent", "write"]
    assert h.value("gateway_streamed_tokens_total", model="notes", kind="reasoning") == 2
    assert h.value("gateway_streamed_tokens_total", model="notes", kind="content") == 3  # and the title
    assert h.value("gateway_generation_duration_seconds_count", model="notes", outcome="completed") == 1
    assert h.value("gateway_tutorials_written_total", model="notes") == 1
    assert not h.lifecycle.active and h.lifecycle.held == 0 and h.settle_tasks() == 0


def test_non_streaming_collects_the_same_text_and_result(make):
    h = make(reply("a", "b"), reply("c", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    content, reasoning, result = collect(h.start())
    assert (content, reasoning) == ("# Notes\nc", "ab")
    assert result.file is not None and result.file.kind == "note" and result.file.title == "Notes"
    # The first call's usage was not reported: estimated from its characters (4 per token).
    chars = sum(len(m["content"]) for m in h.client.payloads[0]["messages"])
    assert result.usage.prompt_tokens == -(-chars // 4) + 1
    assert h.value("gateway_generation_duration_seconds_count", model="notes", outcome="completed") == 1


def test_upstream_silence_becomes_heartbeats_and_the_stream_goes_on(make):
    h = make(reply("x", pause=0.35), reply("y"))
    out = events(stream(h.start(), ChatFraming(Completion(model="notes"), BASE_URL, None), heartbeat=0.1))
    assert out.count(":") >= 2
    assert deltas(out, "reasoning_content") == "x" and out[-1] == "[DONE]"
    assert h.value("gateway_heartbeats_total", model="notes") == out.count(":")


def test_a_client_that_leaves_cancels_the_agent_and_closes_the_upstream_reply(make):
    slow = ScriptedReply([Read("a", 1), 30.0, Read("never", 1)])
    h = make(slow)
    body = stream(h.start(), ChatFraming(Completion(model="notes"), BASE_URL, None), heartbeat=5.0)
    assert b"role" in next(body) and b"a" in next(body)  # the role chunk, then the first token
    body.close()  # what gunicorn does when a write to the client fails
    assert slow.closed  # the upstream sees its request end at once
    assert h.settle_tasks() == 0  # MetaGPT's task was cancelled
    assert h.files() == []
    assert h.value("gateway_generation_duration_seconds_count", model="notes", outcome="cancelled") == 1
    assert h.value("gateway_client_disconnects_total", model="notes") == 1
    assert not h.lifecycle.active and h.lifecycle.held == 0


def test_a_stream_the_server_closes_before_its_first_event_still_ends_the_generation(make):
    slow = ScriptedReply([Read("a", 1), 30.0, Read("never", 1)])
    h = make(slow)
    generation = h.start()
    assert h.lifecycle.held == 1
    body = stream(generation, ChatFraming(Completion(model="notes"), BASE_URL, None), heartbeat=5.0)
    body.close()  # a WSGI server closes the iterable on every way out, iterated or not
    assert h.lifecycle.held == 0 and not h.lifecycle.active
    assert h.settle_tasks() == 0
    assert h.value("gateway_generation_duration_seconds_count", model="notes", outcome="cancelled") == 1
    body.close()  # once only
    assert h.lifecycle.held == 0


def test_an_upstream_failure_mid_stream_is_an_error_event_and_nothing_is_published(make):
    broken = ScriptedReply(
        [Read("a", 1), UpstreamError("The upstream LLM timed out.", code="upstream_timeout")]
    )
    h = make(broken)
    out = events(stream(h.start(), ChatFraming(Completion(model="notes"), BASE_URL, None), heartbeat=5.0))
    assert out[-2] == {
        "error": {
            "message": "The upstream LLM timed out.",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_timeout",
        }
    }
    assert out[-1] == "[DONE]" and h.files() == []
    assert h.value("gateway_generation_duration_seconds_count", model="notes", outcome="failed") == 1
    assert h.settle_tasks() == 0


def test_the_time_limit_ends_the_generation_with_its_own_error(make):
    h = make(ScriptedReply([30.0, Read("late", 1)]), max_seconds=0.3)
    out = events(stream(h.start(), ChatFraming(Completion(model="notes"), BASE_URL, None), heartbeat=0.1))
    error = out[-2]["error"]
    assert error["code"] == "generation_timeout" and "0.3 s" in error["message"]
    assert h.files() == [] and h.settle_tasks() == 0


def test_an_llm_call_the_gateway_does_not_relay_fails_clearly(make):
    h = make(agent=Notes(ask="aask_code"))
    out = events(stream(h.start(), ChatFraming(Completion(model="notes"), BASE_URL, None), heartbeat=5.0))
    error = out[-2]["error"]
    assert error["code"] == "agent_error" and "function calling (aask_code)" in error["message"]
    assert h.client.payloads == []  # nothing went upstream


def _unchunk(data: bytes) -> bytes:
    out, rest = b"", data
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        out, rest = out + rest[:n], rest[n + 2 :]
    return out


def test_the_socket_writer_sends_what_the_yielding_body_would(make):
    """With a `SocketBody`, the first event is yielded (gunicorn sends it with the head) and every
    later one is written to the socket as a chunk of HTTP/1.1 chunked encoding."""
    yielded = make(reply("p"), reply("one", " two"))
    expected = events(
        stream(yielded.start(), ChatFraming(Completion(model="notes"), BASE_URL, None), heartbeat=5.0)
    )

    h = make(reply("p"), reply("one", " two"))
    ours, theirs = gevent.socket.socketpair()
    try:
        environ = {"gunicorn.socket": ours, SOCKET_BODY_KEY: True, "SERVER_PROTOCOL": "HTTP/1.1"}
        body = SocketBody.of(environ)
        assert body is not None
        first = list(stream(h.start(), ChatFraming(Completion(model="notes"), BASE_URL, None), 5.0, body))
        ours.shutdown(2)
        received = b""
        while data := theirs.recv(65536):
            received += data
    finally:
        ours.close()
        theirs.close()
    got = events(iter([*first, _unchunk(received)]))
    assert len(first) == 1 and b"role" in first[0]

    def shape(items: list[Any]) -> list[Any]:  # ids, times and file names differ between runs
        return [
            item if not isinstance(item, dict) else {k: v for k, v in item.items() if k == "choices"}
            for item in items[:-3]
        ]

    assert shape(got) == shape(expected)
    assert deltas(got, "content").startswith("# Notes\none two")
    assert h.value("gateway_streamed_bytes_total", model="notes") == len(first[0]) + len(_unchunk(received))


def test_an_upstream_models_thinking_is_reasoning_in_order_and_never_in_the_file(make):
    thinking = ScriptedReply([Read("", 0, None, False, "hmm, "), Read("Hi", 1, None, False, "done."), Read()])
    h = make(reply("p"), thinking)
    out = events(stream(h.start(), ChatFraming(Completion(model="notes"), BASE_URL, None), heartbeat=5.0))
    pieces = [
        (k, v)
        for c in out
        if isinstance(c, dict) and c.get("choices")
        for k, v in c["choices"][0]["delta"].items()
        if k in ("content", "reasoning_content") and v
    ]
    assert pieces[:5] == [
        ("reasoning_content", "p"),
        ("content", "# Notes\n"),
        ("reasoning_content", "hmm, "),
        ("reasoning_content", "done."),
        ("content", "Hi"),
    ]
    (name,) = h.files()
    assert (h.store.folder / name).read_text() == "# Notes\nHi"


def test_a_text_past_the_content_limit_ends_with_an_error_and_nothing_is_saved(make):
    endless = ScriptedReply([Read("word " * 10, 10) for _ in range(100)] + [Read()])
    h = make(reply("p"), endless, max_content_chars=200)
    out = events(stream(h.start(), ChatFraming(Completion(model="notes"), BASE_URL, None), heartbeat=5.0))
    error = out[-2]["error"]
    assert error["code"] == "upstream_bad_output" and "200 characters" in error["message"]
    assert len(deltas(out, "content")) <= 200 and h.files() == []
    assert endless.closed and len(endless.script) > 50  # the upstream was closed, not read to its end
