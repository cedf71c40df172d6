"""The load generator: many SSE streams from one cheap asyncio process (or a few of them).

Each stream is one `POST ... HTTP/1.0` with a Content-Length, so nginx answers without chunked
encoding and ends the body by closing the connection. The body is read with large reads straight
from the socket (an `asyncio.Protocol`, no StreamReader and no task switch per read) and split into
SSE events on `\\n\\n`. Only what the benchmark needs is kept per stream: a few timestamps, the
arrival offset of every token event (float32), counts and the error, if any.

A *slot* keeps one stream open: it starts at its place in the ramp and, while the measured window
lasts, replaces its stream the moment it ends, so N streams stay open through the window. A stream
still running at the hard deadline is closed and counted as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import time
from array import array
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["gateway", "floor"]

_READ_LIMIT = 1 << 20  # headers larger than this are an error, not something to wait for
_CONTENT = b'"content":'
_REASONING = b'"reasoning_content":'
_DONE = b"data: [DONE]"
_ERROR = b'data: {"error"'
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Spec:
    """What one load generator process does. Times are absolute (time.time())."""

    host: str
    port: int
    mode: Mode
    bodies: BodyMaker
    slots: int  # streams this process keeps open
    slot_offset: int  # this process's slots are number slot_offset, slot_offset + stride, ...
    slot_stride: int
    total_slots: int  # all processes together: the level's N (spreads the ramp evenly)
    ramp_start: float
    ramp: float
    window_end: float  # no new stream starts after this
    deadline: float  # streams still open now are cut and counted as errors
    max_streams: int | None = None  # stop after this many streams in this process (the CPU-fit phase)


@dataclass(frozen=True)
class BodyMaker:
    """Builds a unique request body per stream; the topic is what the LLM's journal reports."""

    label: str  # unique per phase, e.g. "g50": topics are "bench-g50-p0-s12"
    directives: str = ""  # appended to the gateway topic, e.g. "[[sections:2]]"
    section_prompt: str = ""  # the floor's template, with {topic} (MetaGPT's CONTENT_PROMPT, filled)

    @property
    def prefix(self) -> str:
        return f"bench-{self.label}-"

    def topic(self, process: int, seq: int) -> str:
        return f"{self.prefix}p{process}-s{seq}"

    def body(self, mode: Mode, topic: str) -> bytes:
        if mode == "gateway":
            content = f"{topic} {self.directives}".strip()
            payload = {
                "model": "write_tutorial",
                "stream": True,
                "messages": [{"role": "user", "content": content}],
            }
        else:
            content = self.section_prompt.replace("{topic}", topic)
            payload = {
                "model": "scripted",
                "stream": True,
                "messages": [{"role": "user", "content": content}],
            }
        return json.dumps(payload).encode()


@dataclass
class StreamResult:
    """One stream as the client saw it. Offsets are seconds after `start`."""

    topic: str
    start: float
    status: int = 0
    ttfb: float | None = None  # first byte of the body
    ttft: float | None = None  # first token event
    total: float | None = None
    tokens: int = 0
    bytes: int = 0
    error: str | None = None
    arrivals: array[float] = field(default_factory=lambda: array("f"))  # token event offsets

    @property
    def first_token_at(self) -> float | None:
        return None if self.ttft is None else self.start + self.ttft


def is_token(event: bytes) -> bool:
    """A `content` delta with a non-empty value, or any `reasoning_content` delta."""
    if _REASONING in event:
        return True
    at = event.find(_CONTENT)
    if at < 0:
        return False
    at += len(_CONTENT)
    if event[at : at + 1] == b" ":  # the LLM's json.dumps writes `"content": "..."`
        at += 1
    return event[at : at + 1] == b'"' and event[at + 1 : at + 2] != b'"'


class _StreamProtocol(asyncio.Protocol):
    """Reads one close-delimited HTTP/1.0 response and records its SSE events."""

    def __init__(self, result: StreamResult, request: bytes) -> None:
        self.result = result
        self.request = request
        self.buffer = bytearray()
        self.headers_done = False
        self.done_seen = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        result = self.result
        buffer = self.buffer
        buffer += data
        if not self.headers_done:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _READ_LIMIT:
                    self._fail("headers too large")
                return
            try:
                result.status = int(buffer[: buffer.find(b"\r\n")].split()[1])
            except (IndexError, ValueError):
                self._fail("bad status line")
                return
            if result.status != 200:
                self._fail(f"status {result.status}")
                return
            self.headers_done = True
            del buffer[: end + 4]
            if not buffer:
                return
            result.bytes += len(buffer)  # the body's share of what arrived with the headers
        else:
            result.bytes += len(data)
        if result.ttfb is None:
            result.ttfb = now - result.start
        pos = 0
        while (end := buffer.find(b"\n\n", pos)) >= 0:
            event = bytes(buffer[pos:end])
            pos = end + 2
            if is_token(event):
                offset = now - result.start
                if result.ttft is None:
                    result.ttft = offset
                result.tokens += 1
                result.arrivals.append(offset)
            elif event.startswith(_DONE):
                self.done_seen = True
            elif event.startswith(_ERROR) and result.error is None:
                result.error = "error event: " + event[6:200].decode("utf-8", "replace")
        if pos:
            del buffer[:pos]

    def _fail(self, error: str) -> None:
        if self.result.error is None:
            self.result.error = error
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        result = self.result
        result.total = time.time() - result.start
        if result.error is None:
            if exc is not None:
                result.error = f"connection lost: {exc!r}"
            elif not self.done_seen:
                result.error = "no [DONE]"
        if not self.closed.done():
            self.closed.set_result(None)


async def run_stream(
    host: str, port: int, path: str, body: bytes, topic: str, deadline: float
) -> StreamResult:
    """One stream, until the server closes it or `deadline` passes."""
    head = (
        f"POST {path} HTTP/1.0\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    result = StreamResult(topic=topic, start=time.time())
    loop = asyncio.get_running_loop()
    protocol = _StreamProtocol(result, head.encode() + body)
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: protocol, host, port), timeout=max(deadline - time.time(), 0.01)
        )
    except (OSError, TimeoutError) as exc:
        result.error = f"connect: {exc!r}"
        result.total = time.time() - result.start
        return result
    try:
        await asyncio.wait_for(asyncio.shield(protocol.closed), timeout=max(deadline - time.time(), 0.01))
    except TimeoutError:
        result.error = result.error or "timeout: still open at the deadline"
        transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(protocol.closed, timeout=1)
    return result


async def run_spec(spec: Spec, process: int) -> list[StreamResult]:
    """Run this process's slots; returns every stream it ran."""
    path = "/v1/chat/completions"
    results: list[StreamResult] = []
    counter = itertools.count()
    started = 0

    async def slot(index: int) -> None:
        nonlocal started
        global_index = spec.slot_offset + index * spec.slot_stride
        start_at = spec.ramp_start + spec.ramp * global_index / max(spec.total_slots, 1)
        await asyncio.sleep(max(start_at - time.time(), 0))
        while time.time() < spec.window_end and time.time() < spec.deadline:
            if spec.max_streams is not None and started >= spec.max_streams:
                return
            started += 1
            topic = spec.bodies.topic(process, next(counter))
            body = spec.bodies.body(spec.mode, topic)
            results.append(await run_stream(spec.host, spec.port, path, body, topic, spec.deadline))

    await asyncio.gather(*(slot(i) for i in range(spec.slots)))
    return results


def _process_main(spec: Spec, process: int, conn: multiprocessing.connection.Connection) -> None:
    # The runner stops this process: on Ctrl-C (which reaches the whole terminal group) it terminates
    # it, and if the runner itself is killed the kernel sends SIGTERM (no orphaned load generator).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        conn.send(asyncio.run(run_spec(spec, process)))
    finally:
        conn.close()


class LoadGenerators:
    """The load generator processes of one phase: start them, look at their pids, collect results."""

    def __init__(self, specs: list[Spec]) -> None:
        context = multiprocessing.get_context("fork")  # the runner has no threads or event loop
        self._pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for number, spec in enumerate(specs):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_process_main, args=(spec, number, send), daemon=True)
            process.start()
            send.close()
            self._pipes.append(receive)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def done(self) -> bool:
        return all(pipe.poll() for pipe in self._pipes) or not any(p.is_alive() for p in self.processes)

    def collect(self, timeout: float) -> list[StreamResult]:
        results: list[StreamResult] = []
        deadline = time.monotonic() + timeout
        for pipe, process in zip(self._pipes, self.processes, strict=True):
            if not pipe.poll(max(deadline - time.monotonic(), 0)):
                raise TimeoutError(f"load generator {process.pid} did not report within {timeout} s")
            try:
                results.extend(pipe.recv())
            except EOFError:
                process.join(5)
                code = process.exitcode
                raise RuntimeError(f"load generator {process.pid} failed (exit code {code})") from None
            process.join(5)
        return results

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(5)
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, 9)
                process.join(1)
        for pipe in self._pipes:
            pipe.close()


def split(total: int, parts: int) -> list[int]:
    """`total` slots over `parts` processes, as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
