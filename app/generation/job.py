"""One request's agent run: started on the bridge, read from the WSGI greenlet, cancelled if abandoned.

MetaGPT's LLM calls arrive on the queue as `Call`s and are relayed by the reading greenlet itself
(`Generation.next`): the upstream socket's bytes become token events without an asyncio iteration.
With a `SocketBody`, ordinary tokens after the first go from the upstream poller's tick straight to
the client (`relay_to`, `_pumped`), and the greenlet wakes only for the rest.

Cancellation: the SSE generator's `finally` runs when the client goes away (gunicorn closes the
response iterator after a failed write, and heartbeats make that write happen during LLM silence) or
when the stream ends; `close()` closes the call being relayed (the upstream sees it at once) and
cancels the job's future, which cancels the asyncio task, which raises CancelledError inside MetaGPT
at its `await`. See ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent.queue

from app.agents.base import Agent, AgentRequest, AgentResult, Kind, Sink
from app.errors import AgentError, APIError, ClientClosedRequest, GenerationTimeout, UpstreamError
from app.generation.call import Call
from app.lifecycle import Admission, Lifecycle
from app.metrics import Metrics
from app.runtime.bridge import AsyncioBridge

if TYPE_CHECKING:
    from app.runtime.llm import Runtime
    from app.transport.direct import DirectRelay
    from app.transport.socket_body import SocketBody
    from app.upstream.reply import Read, ReplyClient

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Token:
    kind: Kind
    text: str
    count: int = 1  # upstream tokens (chunks) it holds


@dataclass(frozen=True)
class Finished:
    result: AgentResult


@dataclass(frozen=True)
class Failed:
    error: APIError


Event = Token | Finished | Failed
_SILENT = object()  # `_relay`: the upstream was silent for the whole wait
_FLUSH = object()  # the tick relayed a token but the client's socket did not take all of it


class Generation:
    """Runs `agent` on the bridge; its events arrive on a gevent queue in the order they happened.

    The owner must end it exactly once with `close(outcome)`: completed, failed or cancelled.
    """

    def __init__(
        self,
        bridge: AsyncioBridge,
        runtime: Runtime,
        agent: Agent,
        request: AgentRequest,
        *,
        metrics: Metrics,
        lifecycle: Lifecycle,
        admission: Admission,
        started: float,
        max_seconds: float,
        max_content_chars: int = 4 << 20,
    ) -> None:
        self.model = agent.id
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.admission = admission  # given back by `close`
        self.started = started  # time.monotonic() when the request arrived
        self.max_seconds = max_seconds
        # NOTE: the queue is filled by the asyncio loop's greenlet and read by the request's greenlet;
        # both run on the worker's one thread, so a plain gevent queue is safe and wakes the reader.
        self._events: gevent.queue.Queue[Event | Call] = gevent.queue.Queue()
        self._pending: Event | None = None
        self._queued: Token | None = None  # the content token of a read that also had reasoning
        self._sent_at = started  # when the client was last sent something (heartbeats count from it)
        self._closed = False
        self._call: Call | None = None  # the LLM call being relayed
        self._direct: DirectRelay | None = None
        self.writer: SocketBody | None = None  # the stream's socket writer, woken by `abort`
        self._client: ReplyClient = runtime.client
        sink = Sink(
            lambda kind, text: self._events.put(Token(kind, text)), self._events.put, max_content_chars
        )
        self._sink = sink
        lifecycle.started(self)
        try:
            self._future = bridge.submit(self._job(agent, request, sink, runtime))
        except BaseException:
            lifecycle.ended(self)
            raise

    async def _job(self, agent: Agent, request: AgentRequest, sink: Sink, runtime: Runtime) -> None:
        active = self.metrics.active_generations.labels(self.model)
        active.inc()
        try:
            async with asyncio.timeout(self.max_seconds):
                artifact = await agent.run(request, sink, runtime)
                if artifact is None:
                    result = AgentResult(usage=sink.usage)
                else:
                    result = await runtime.publish(agent, artifact, sink)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            message = f"The generation took longer than {self.max_seconds:g} s and was stopped."
            self._fail(agent, GenerationTimeout(message))
        except APIError as exc:  # the upstream LLM failed, or its output was unusable
            self._fail(agent, exc)
        except Exception:
            log.exception("agent %s failed", agent.id)
            self._events.put(Failed(AgentError("The agent failed.")))
        else:
            self._events.put(Finished(result))
        finally:
            active.dec()
            # Tasks other than this one still alive on the loop: 0 when nothing was left behind.
            self.metrics.asyncio_tasks.set(len(asyncio.all_tasks()) - 1)

    def _fail(self, agent: Agent, error: APIError) -> None:
        """End the generation with `error`, and tell the operator what the client is told."""
        log.warning("agent %s failed: %s (%s, HTTP %d)", agent.id, error.message, error.code, error.status)
        self._events.put(Failed(error))

    def relay_to(self, direct: DirectRelay) -> None:
        """From now on, ordinary tokens of a `steady` upstream reply go to `direct` from the poller's
        tick (`UpstreamStream.pump`) instead of being returned by `next`: no greenlet switch and a
        handful of Python calls per token. `next` then returns only what is not a plain token."""
        self._direct = direct

    def next(self, timeout: float | None) -> Event | None:
        """The next event, or None after `timeout` seconds of silence.

        LLM calls are relayed here, by the caller's greenlet: each read of the upstream socket becomes
        one Token (see `app.upstream`), and the call's future is settled on the loop at its end.
        """
        if self._pending is not None:
            event, self._pending = self._pending, None
            return event
        if self._queued is not None:
            queued, self._queued = self._queued, None
            return queued
        self._sent_at = time.monotonic()  # the caller has just sent what the last call returned
        while True:
            wait = None if timeout is None else timeout - (time.monotonic() - self._sent_at)
            call = self._call
            if call is None:
                try:
                    item = self._events.get(timeout=None if wait is None else max(wait, 0.0))
                except gevent.queue.Empty:
                    return None
                if not isinstance(item, Call):
                    return item
                if item.cancelled:
                    continue
                self._call = call = item
                call.stream = self._client.stream(call.payload)
            assert call.stream is not None
            if self._direct is not None and timeout is not None and call.stream.steady:
                token = self._relay(call, call.stream.pump, self._idle_since, timeout, self._pumped)
            else:
                token = self._relay(call, call.stream.read, wait)
            if token is _SILENT:
                return None
            if token is not None:
                return token  # type: ignore[return-value]

    def _idle_since(self) -> float:
        return self._sent_at

    def _pumped(self, read: Read) -> Any:
        """In the poller's tick: relay a plain token straight to the client (None: done, sleep on);
        anything else wakes the reader with it (`_relay` deals with it there)."""
        call = self._call
        if call is None or read.usage is not None or read.reasoning or call.stream.finished:  # type: ignore[union-attr]
            return read
        if not read.text:  # a chunk without content (a role, an empty delta, a tool call)
            return None
        call.parts.append(read.text)
        self._sink.relayed(call.kind, read.text)
        self._sent_at = time.monotonic()
        if self._direct.now(call.kind, read.text, read.tokens):  # type: ignore[union-attr]
            return None
        return _FLUSH

    def _relay(self, call: Call, reader: Callable[..., Any], *args: Any) -> Token | object | None:
        """One `reader(*args)` of the call's reply as a Token, or None: nothing to show (headers,
        usage, a token the tick relayed), or the call ended (`next` goes on); `_SILENT` when the
        upstream was silent for the whole wait."""
        try:
            result = reader(*args)
        except UpstreamError as exc:
            self._call = None
            call.settle(exc)
            return None
        except OSError:  # closed: the call was cancelled on the loop, whose events come next
            self._call = None
            return None
        if result is _FLUSH:  # the tick relayed a token the client's socket did not take in full
            self._direct.wait()  # type: ignore[union-attr]
            self._sent_at = time.monotonic()  # the client has taken it only now
            return None
        read: Read = result
        if read.silent:
            return _SILENT
        if read.usage is not None:
            call.usage = read.usage
        token = None
        if read.reasoning:  # the model's thinking: shown to the client, never part of the reply
            token = Token("reasoning", read.reasoning)
        if read.text:
            call.parts.append(read.text)
            try:
                self._sink.relayed(call.kind, read.text)
            except UpstreamError as exc:  # past the content limit: the call ends with it
                self._call = None
                call.stream.close()  # type: ignore[union-attr]
                call.settle(exc)
                return None
            if token is None:
                token = Token(call.kind, read.text, read.tokens)
            elif call.kind == "reasoning":
                token = Token("reasoning", read.reasoning + read.text, read.tokens + 1)
            else:
                self._queued = Token(call.kind, read.text, read.tokens)
        if call.stream.finished:  # type: ignore[union-attr]  # MetaGPT goes on; this token is sent first
            self._call = None
            call.settle()
        return token

    def peek(self, timeout: float) -> Event | None:
        """Wait up to `timeout` for the first event without consuming it."""
        if self._pending is None:
            self._pending = self.next(timeout)
        return self._pending

    def abort(self, error: APIError) -> None:
        """End the generation from outside (shutdown): the reader gets `error` next, the job is cancelled,
        and a writer waiting for a client that does not read gives up at once."""
        self._events.put(Failed(error))
        if self.writer is not None:
            self.writer.interrupt()
        if not self._future.done():
            self._future.cancel()

    def close(self, outcome: str) -> None:
        """Cancel the job if it still runs, and record how the generation ended (once)."""
        if self._call is not None:  # the upstream sees its response closed now
            self._call.cancel()
            self._call = None
        if not self._future.done():
            self._future.cancel()
        if not self._closed:
            self._closed = True
            self.lifecycle.ended(self)
            self.admission.release()
            elapsed = time.monotonic() - self.started
            self.metrics.generation_duration.labels(self.model, outcome).observe(elapsed)


# How often a non-streaming request looks at its client's connection: it is cancelled within this.
CLIENT_CHECK_SECONDS = 1.0


def collect(generation: Generation, gone: Callable[[], bool] | None = None) -> tuple[str, str, AgentResult]:
    """Run to the end (non-streaming): the whole content, the whole reasoning, and the result. With
    `gone`, the client's connection is looked at every `CLIENT_CHECK_SECONDS`: once it has hung up,
    the generation is cancelled like an abandoned stream and `ClientClosedRequest` (499) is raised."""
    parts: dict[Kind, list[str]] = {"content": [], "reasoning": []}
    tokens = generation.metrics.streamed_tokens
    outcome = "cancelled"
    timeout = None if gone is None else CLIENT_CHECK_SECONDS
    checked = time.monotonic()
    try:
        while True:
            event = generation.next(timeout=timeout)
            if gone is not None and (event is None or time.monotonic() - checked >= CLIENT_CHECK_SECONDS):
                checked = time.monotonic()
                if gone():
                    generation.metrics.client_disconnects.labels(generation.model).inc()
                    raise ClientClosedRequest("The client closed the connection before the answer was ready.")
            if isinstance(event, Token):
                parts[event.kind].append(event.text)
                tokens.labels(generation.model, event.kind).inc(event.count)
            elif isinstance(event, Finished):
                outcome = "completed"
                return "".join(parts["content"]), "".join(parts["reasoning"]), event.result
            elif isinstance(event, Failed):
                outcome = "failed"
                raise event.error
    finally:
        generation.close(outcome)
