"""Byte-level framing and headers of the stream, read with a plain HTTP client."""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import termios
import time
import uuid

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


def _request(stream: bool, topic: str, version: str, agent: str = "raw-test") -> bytes:
    payload = json.dumps(body(topic, stream=stream)).encode()
    return (
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"User-Agent: {agent}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def _read_chunked(reader) -> list[bytes]:
    """Strict chunked decoding: every chunk exactly `HEX\\r\\n<data>\\r\\n`, up to `0\\r\\n\\r\\n`."""
    chunks = []
    while True:
        size_line = reader.readline()
        assert size_line.endswith(b"\r\n") and size_line[:-2], size_line
        size = int(size_line[:-2], 16)
        data = reader.read(size + 2)
        assert data.endswith(b"\r\n"), data[-20:]
        if size == 0:
            assert data == b"\r\n"
            return chunks
        chunks.append(data[:-2])


def _head(reader) -> dict[bytes, bytes]:
    status = reader.readline()
    assert status.split()[1] == b"200", status
    headers = {}
    while (line := reader.readline()) != b"\r\n":
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return headers


def test_http11_body_is_exact_chunks_and_the_connection_stays_usable(stack):
    """The events after the first are written by the app itself: on the wire each one is exactly one
    chunk, gunicorn ends the body, and the kept-alive connection serves the next request."""
    host, port = stack.url.removeprefix("http://").split(":")
    agent = f"chunk-test-{uuid.uuid4().hex}"
    with socket.create_connection((host, int(port)), timeout=60) as sock, sock.makefile("rb") as reader:
        sock.sendall(_request(True, "Chunked framing", "1.1", agent))
        assert _head(reader)[b"transfer-encoding"] == b"chunked"
        chunks = _read_chunked(reader)
        assert len(chunks) > 10
        assert all(c.endswith(b"\n\n") and c.count(b"\n\n") == 1 for c in chunks)  # one event per chunk
        assert chunks[-1] == b"data: [DONE]\n\n"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert reader.readline().split()[1] == b"200"
    # gunicorn wrote only the first event (its access log counts those bytes); the app wrote the rest.
    deadline = time.monotonic() + 10
    while not (lines := [ln for ln in stack.log.read_text().splitlines() if agent in ln]):
        assert time.monotonic() < deadline, "no access log line"
        time.sleep(0.1)
    assert lines[0].split('"')[2].split() == ["200", str(len(chunks[0]))]


def test_http10_body_is_raw_events_until_close(stack):
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock, sock.makefile("rb") as reader:
        sock.sendall(_request(True, "Raw framing", "1.0"))
        headers = _head(reader)
        assert b"transfer-encoding" not in headers and b"content-length" not in headers
        raw = reader.read()  # to the end: the server closes the connection
    events = [block + b"\n\n" for block in raw.split(b"\n\n") if block]
    assert b"".join(events) == raw
    assert events[-1] == b"data: [DONE]\n\n"
    assert sum(1 for e in events if b'"content":"' in e) > 5


def _held_up(sock: socket.socket, seconds: float = 1.0, limit: float = 20.0) -> bytes:
    """Wait, reading nothing, until what is queued for `sock` stops growing for `seconds`: the
    server can send no more until the client reads. Returns a peek at the queue."""
    last, since, deadline = -1, time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        if queued != last:
            last, since = queued, time.monotonic()
        elif queued and time.monotonic() - since >= seconds:
            return sock.recv(queued, socket.MSG_PEEK)
        time.sleep(0.1)
    raise AssertionError("the server never filled the socket")


def test_a_client_that_reads_late_gets_every_event_in_order(stack):
    """A client (nginx's way in: gunicorn's Unix socket) that reads nothing while the reply streams,
    until the server can send no more: the poller's tick relays the tokens until the socket's buffer
    is full, the request's greenlet sends the rest once the client reads, and what arrives is the
    whole tutorial, once, in order."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(str(stack.unix_socket))
        # NOTE: the queue fills by events (each send is a buffer of its own), and the poller packs more
        # tokens into each event the longer its interval: a long reply fills it at any interval.
        sock.sendall(_request(True, "Late reader [[sections:40]][[pace:800]]", "1.1"))
        queued = _held_up(sock)
        assert b"[DONE]" not in queued  # held up mid-stream, not merely finished
        with sock.makefile("rb") as reader:
            assert _head(reader)[b"transfer-encoding"] == b"chunked"
            chunks = _read_chunked(reader)
    assert all(c.endswith(b"\n\n") and c.count(b"\n\n") == 1 for c in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n"
    payloads = [json.loads(c[len(b"data: ") :]) for c in chunks[:-1]]
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"
    content = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads)
    tutorial, _link = split_link(content)
    assert tutorial == (stack.tutorials / payloads[-1]["tutorial"]["name"]).read_text(encoding="utf-8")
