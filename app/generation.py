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
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import gevent.queue
import gevent.socket

from app import sse
from app.agents.base import AgentRequest, AgentResult, AgentSpec, Call, Kind, Sink
from app.bridge import AsyncioBridge
from app.errors import AgentError, APIError, GenerationTimeout, UpstreamError
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.protocol import Completion, TutorialFile

if TYPE_CHECKING:
    from app.llm import Runtime
    from app.upstream import Read

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
    """Runs `spec` on the bridge; its events arrive on a gevent queue in the order they happened.

    The owner must end it exactly once with `close(outcome)`: completed, failed or cancelled.
    """

    def __init__(
        self,
        bridge: AsyncioBridge,
        runtime: Runtime,
        spec: AgentSpec,
        request: AgentRequest,
        *,
        metrics: Metrics,
        lifecycle: Lifecycle,
        started: float,
        max_seconds: float,
    ) -> None:
        self.model = spec.id
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.started = started  # time.monotonic() when the request arrived
        self.max_seconds = max_seconds
        # NOTE: the queue is filled by the asyncio loop's greenlet and read by the request's greenlet;
        # both run on the worker's one thread, so a plain gevent queue is safe and wakes the reader.
        self._events: gevent.queue.Queue[Event | Call] = gevent.queue.Queue()
        self._pending: Event | None = None
        self._closed = False
        self._call: Call | None = None  # the LLM call being relayed
        self._direct: _Direct | None = None
        self._client = runtime.client
        sink = Sink(lambda kind, text: self._events.put(Token(kind, text)), self._events.put)
        self._sink = sink
        lifecycle.started(self)
        self._future = bridge.submit(self._job(spec, request, sink, runtime))

    async def _job(self, spec: AgentSpec, request: AgentRequest, sink: Sink, runtime: Runtime) -> None:
        active = self.metrics.active_generations.labels(self.model)
        active.inc()
        try:
            async with asyncio.timeout(self.max_seconds):
                result = await spec.run(request, sink, runtime)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            message = f"The generation took longer than {self.max_seconds:g} s and was stopped."
            self._fail(spec, GenerationTimeout(message))
        except APIError as exc:  # the upstream LLM failed, or its output was unusable
            self._fail(spec, exc)
        except Exception:
            log.exception("agent %s failed", spec.id)
            self._events.put(Failed(AgentError("The agent failed.")))
        else:
            self._events.put(Finished(result))
        finally:
            active.dec()
            # Tasks other than this one still alive on the loop: 0 when nothing was left behind.
            self.metrics.asyncio_tasks.set(len(asyncio.all_tasks()) - 1)

    def _fail(self, spec: AgentSpec, error: APIError) -> None:
        """End the generation with `error`, and tell the operator what the client is told."""
        log.warning("agent %s failed: %s (%s, HTTP %d)", spec.id, error.message, error.code, error.status)
        self._events.put(Failed(error))

    def relay_to(self, direct: _Direct) -> None:
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
        since = time.monotonic()
        while True:
            wait = None if timeout is None else timeout - (time.monotonic() - since)
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
                token = self._relay(call, call.stream.pump, since, timeout, self._pumped)
                since = time.monotonic()  # the client got tokens meanwhile, or the call moved on
            else:
                token = self._relay(call, call.stream.read, wait)
            if token is _SILENT:
                return None
            if token is not None:
                return token  # type: ignore[return-value]

    def _pumped(self, read: Read) -> Any:
        """In the poller's tick: relay a plain token straight to the client (None: done, sleep on);
        anything else wakes the reader with it (`_relay` deals with it there)."""
        call = self._call
        if call is None or read.usage is not None or call.stream.finished:  # type: ignore[union-attr]
            return read
        if not read.text:  # a chunk without content (a role, an empty delta)
            return None
        call.parts.append(read.text)
        self._sink.relayed(call.kind, read.text)
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
            return None
        read: Read = result
        if read.silent:
            return _SILENT
        if read.usage is not None:
            call.usage = read.usage
        token = None
        if read.text:
            call.parts.append(read.text)
            self._sink.relayed(call.kind, read.text)
            token = Token(call.kind, read.text, read.tokens)
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
        """End the generation from outside (shutdown): the reader gets `error` next, the job is cancelled."""
        self._events.put(Failed(error))
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
            elapsed = time.monotonic() - self.started
            self.metrics.generation_duration.labels(self.model, outcome).observe(elapsed)


def collect(generation: Generation) -> tuple[str, str, AgentResult]:
    """Run to the end (non-streaming): the whole content, the whole reasoning, and the result."""
    parts: dict[Kind, list[str]] = {"content": [], "reasoning": []}
    tokens = generation.metrics.streamed_tokens
    outcome = "cancelled"
    try:
        while True:
            event = generation.next(timeout=None)
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


class _Batched:
    """A counter child incremented in batches: one locked write to its multiprocess file per
    `every` additions instead of one per event. `flush()` at the end makes the total exact."""

    __slots__ = ("_adds", "_child", "_every", "_value")

    def __init__(self, child: Any, every: int = 32) -> None:
        self._child = child
        self._every = every
        self._value = 0.0
        self._adds = 0

    def add(self, amount: float) -> None:
        self._value += amount
        self._adds += 1
        if self._adds >= self._every:
            self.flush()

    def flush(self) -> None:
        if self._value:
            self._child.inc(self._value)
        self._value = 0.0
        self._adds = 0


SOCKET_BODY_KEY = "gateway.socket_body"  # set by app.worker: the app may write HTTP/1.x itself


class SocketBody:
    """The rest of a streaming body, written by the request's greenlet straight to gunicorn's client
    socket (`environ["gunicorn.socket"]`, the same one gunicorn writes to).

    gunicorn sends the head and the first event; after that, each event through gunicorn would cost
    its `Response.write`, `write_chunk` and gevent's `sendall` (a `getsockopt` syscall each time). Here
    an event is framed like gunicorn frames it (a chunk of HTTP/1.1 chunked encoding; raw bytes for
    HTTP/1.0, where gunicorn closes the connection instead) and handed to the socket in one
    non-blocking `send`; only a client that does not keep up waits, cooperatively, in `sendall`.
    gunicorn writes the terminating chunk when the body ends. A failed write raises `OSError`.
    `send_now` is the same write for the poller's tick, which must not wait: what the socket does not
    take (or the error) is left for `flush`, in the greenlet.
    """

    __slots__ = ("_chunked", "_error", "_left", "_raw", "_sock")

    def __init__(self, sock: Any, chunked: bool) -> None:
        self._sock = sock
        # gevent's plain socket wraps a non-blocking stdlib socket; anything else (TLS) uses sendall.
        self._raw = sock._sock if type(sock) is gevent.socket.socket else None
        self._chunked = chunked
        self._left = b""
        self._error: OSError | None = None

    @property
    def immediate(self) -> bool:
        """Whether `send_now` can send at all (a plain socket)."""
        return self._raw is not None

    @classmethod
    def of(cls, environ: dict[str, Any]) -> SocketBody | None:
        """For an HTTP/1.x request on the gateway's gunicorn worker, which says so in the environ
        (`app.worker`: only it knows the wire is HTTP, not uwsgi); None elsewhere: the body
        is then yielded (the Flask test client, other servers)."""
        sock = environ.get("gunicorn.socket")
        protocol = environ.get("SERVER_PROTOCOL")
        if not environ.get(SOCKET_BODY_KEY) or not isinstance(sock, gevent.socket.socket):
            return None
        if protocol not in ("HTTP/1.1", "HTTP/1.0"):
            return None
        return cls(sock, chunked=protocol == "HTTP/1.1")

    def write(self, data: bytes) -> None:
        """Send `data` after anything `send_now` left, waiting for the client if need be."""
        if not self.send_now(data):
            self.flush()

    def send_now(self, data: bytes) -> bool:
        """`write` without waiting (in the hub): False when part of `data`, or the error of sending
        it, is left for `flush`."""
        if self._chunked:
            data = b"%X\r\n%b\r\n" % (len(data), data)
        raw = self._raw
        if raw is None or self._left or self._error is not None:
            self._left += data
            return False
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._error = exc
            return False
        if sent == len(data):
            return True
        self._left = data[sent:]
        return False

    def flush(self) -> None:
        """Send what `send_now` left, waiting for the client if need be; raises its error."""
        left, error, self._left, self._error = self._left, self._error, b"", None
        if error is not None:
            raise error
        if left:
            self._sock.sendall(left)


class _Direct:
    """Tokens from the poller's tick to the client (`Generation.relay_to`), counted like `_events`
    and `stream` count the events they send."""

    __slots__ = ("_body", "_frames", "_left", "_tokens", "_written")

    def __init__(
        self,
        body: SocketBody,
        frames: dict[Kind, sse.Template],
        tokens: dict[Kind, _Batched],
        written: _Batched,
    ) -> None:
        self._body, self._frames, self._tokens, self._written = body, frames, tokens, written
        self._left = 0  # bytes of the event `now` could not send in full

    def now(self, kind: Kind, text: str, count: int) -> bool:
        """In the hub: frame, count and send the token without waiting; False if part of it (or the
        error of sending it) is left for `wait`."""
        self._tokens[kind].add(count)
        event = self._frames[kind](text)
        if self._body.send_now(event):
            self._written.add(len(event))
            return True
        self._left = len(event)
        return False

    def wait(self) -> None:
        """In the reader's greenlet: send what `now` left, waiting for the client; raises OSError."""
        self._body.flush()
        self._written.add(self._left)
        self._left = 0


def tutorial_file(result: AgentResult, base_url: str) -> TutorialFile | None:
    if result.file is None:
        return None
    f = result.file
    return TutorialFile(name=f.name, url=f"{base_url}/download/{quote(f.name)}", bytes=f.bytes, title=f.title)


def _events(
    generation: Generation,
    completion: Completion,
    base_url: str,
    heartbeat: float,
    status: list[str],
    direct: tuple[SocketBody, _Batched] | None,
) -> Generator[bytes, None, None]:
    """The SSE body as a sequence of events; `status[0]` says how it ended. With `direct` (the body
    and the streamed-bytes counter), tokens after the first go from the poller's tick to the body."""
    metrics, model = generation.metrics, generation.model
    first_token = True
    frames: dict[Kind, sse.Template] = {
        "content": sse.Template(lambda text: completion.chunk({"content": text})),
        "reasoning": sse.Template(lambda text: completion.chunk({"reasoning_content": text})),
    }
    tokens: dict[Kind, _Batched] = {
        kind: _Batched(metrics.streamed_tokens.labels(model, kind)) for kind in frames
    }
    try:
        yield sse.data(completion.chunk({"role": "assistant", "content": ""}))
        while True:
            event = generation.next(timeout=heartbeat)
            if event is None:
                metrics.heartbeats.labels(model).inc()
                yield sse.comment("keep-alive")
            elif isinstance(event, Token):
                if first_token:
                    first_token = False
                    metrics.time_to_first_token.labels(model).observe(time.monotonic() - generation.started)
                    if direct is not None and direct[0].immediate:
                        generation.relay_to(_Direct(direct[0], frames, tokens, direct[1]))
                tokens[event.kind].add(event.count)
                yield frames[event.kind](event.text)
            elif isinstance(event, Finished):
                file = tutorial_file(event.result, base_url)
                extra = {}
                if file is not None:
                    yield sse.data(completion.chunk({"content": file.link_markdown()}))
                    extra["tutorial"] = file.as_dict()  # extension
                yield sse.data(completion.chunk({}, finish_reason="stop", **extra))
                if completion.include_usage:
                    yield sse.data(completion.usage_chunk(event.result.usage))
                status[0] = "completed"
                break
            else:
                yield sse.data(event.error.body())
                status[0] = "failed"
                break
        yield sse.DONE
    finally:
        for counter in tokens.values():
            counter.flush()


def stream(
    generation: Generation,
    completion: Completion,
    base_url: str,
    heartbeat: float,
    body: SocketBody | None = None,
) -> Iterator[bytes]:
    """The SSE body. Headers are already decided; from here an error is an event, then [DONE].

    With `body` (gunicorn), the first event is yielded (gunicorn sends it with the head) and every
    later one is written to the socket directly; without it, every event is yielded. Bytes count as
    streamed once the server has taken them: after a direct write, or when the server asks for the
    next event (the previous write succeeded). A failed write ends the body: `OSError` from a
    direct write, `GeneratorExit` when gunicorn's own write failed.
    """
    metrics, model = generation.metrics, generation.model
    status = ["cancelled"]
    written = _Batched(metrics.streamed_bytes.labels(model))
    direct = None if body is None else (body, written)
    events = _events(generation, completion, base_url, heartbeat, status, direct)
    try:
        if body is None:
            pending = 0
            for event in events:
                written.add(pending)
                pending = len(event)
                yield event
            written.add(pending)
        else:
            first = next(events)
            yield first
            written.add(len(first))
            write, add = body.write, written.add
            for event in events:
                write(event)
                add(len(event))
    except (GeneratorExit, OSError):
        metrics.client_disconnects.labels(model).inc()
        status[0] = "cancelled"
        raise
    finally:
        events.close()
        written.flush()
        generation.close(status[0])
        metrics.requests.labels(model, "true", "200").inc()
