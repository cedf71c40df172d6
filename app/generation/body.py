"""The body of a streamed completion: the SSE event sequence of one generation, and its writer.

`stream` yields the first event to gunicorn (which sends it with the head) and writes the later ones
to the socket itself (`app.transport.socket_body`); once the first token is out, plain tokens go from
the upstream poller's tick to the socket (`app.transport.direct`) and this generator wakes only for
heartbeats, the end, or a client that does not keep up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Protocol

from app.agents.base import Kind
from app.api import sse
from app.api.links import LinkSigner
from app.api.protocol import Completion, file_link
from app.generation.job import Finished, Generation, Token
from app.metrics import Batched
from app.transport.direct import DirectRelay
from app.transport.socket_body import SocketBody

if TYPE_CHECKING:
    from app.agents.base import AgentResult
    from app.errors import APIError

DEADLINE_GRACE = 5.0  # seconds past the generation's time limit a slow reader gets for its error event


class ChatFraming:
    """A chat completion's events: the role chunk, a chunk per token, the link, the finish chunk (and
    the usage chunk if asked), then `data: [DONE]`."""

    closing = sse.DONE

    def __init__(self, completion: Completion, base_url: str, links: LinkSigner | None) -> None:
        self.completion, self.base_url, self.links = completion, base_url, links
        self.frames: dict[Kind, Callable[[str], bytes]] = {
            "content": sse.Template(lambda text: completion.chunk({"content": text})),
            "reasoning": sse.Template(lambda text: completion.chunk({"reasoning_content": text})),
        }

    def opening(self) -> bytes:
        return sse.data(self.completion.chunk({"role": "assistant", "content": ""}))

    def finished(self, result: AgentResult) -> list[bytes]:
        completion = self.completion
        link = file_link(result, self.base_url, self.links)
        out, extra = [], {}
        if link is not None:
            out.append(sse.data(completion.chunk({"content": link.link_markdown()})))
            extra = link.fields()  # extension
        out.append(sse.data(completion.chunk({}, finish_reason="stop", **extra)))
        if completion.include_usage:
            out.append(sse.data(completion.usage_chunk(result.usage)))
        return out

    def failed(self, error: APIError) -> list[bytes]:
        return [sse.data(error.body())]

    def closed(self, outcome: str) -> None:
        pass


class Framing(Protocol):
    """How one API frames a generation's events (chat here, the Responses API in app.api.responses)."""

    frames: dict[Kind, Callable[[str], bytes]]  # a token's event(s), also sent from the poller's tick
    closing: bytes  # after the last event

    def opening(self) -> bytes: ...

    def finished(self, result: AgentResult) -> list[bytes]: ...  # each is written on its own

    def failed(self, error: APIError) -> list[bytes]: ...

    def closed(self, outcome: str) -> None: ...  # the body ended: completed, failed or cancelled


def _events(
    generation: Generation,
    framing: Framing,
    heartbeat: float,
    status: list[str],
    direct: tuple[SocketBody, Batched] | None,
) -> Generator[bytes, None, None]:
    """The SSE body as a sequence of events; `status[0]` says how it ended. With `direct` (the body
    and the streamed-bytes counter), tokens after the first go from the poller's tick to the body."""
    metrics, model = generation.metrics, generation.model
    first_token = True
    frames = framing.frames
    tokens: dict[Kind, Batched] = {
        kind: Batched(metrics.streamed_tokens.labels(model, kind)) for kind in frames
    }
    try:
        yield framing.opening()
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
                        generation.relay_to(DirectRelay(direct[0], frames, tokens, direct[1]))
                tokens[event.kind].add(event.count)
                yield frames[event.kind](event.text)
            elif isinstance(event, Finished):
                yield from framing.finished(event.result)
                status[0] = "completed"
                break
            else:
                yield from framing.failed(event.error)
                status[0] = "failed"
                break
        if framing.closing:
            yield framing.closing
    finally:
        for counter in tokens.values():
            counter.flush()


class Body:
    """A stream's response iterable. The server iterates its events; `close`, which a WSGI server calls
    on every way out (PEP 3333), even before the first event, ends the generation if the events never
    ran (their own `finally` ends it otherwise)."""

    __slots__ = ("_end", "events")

    def __init__(self, events: Generator[bytes, None, None], end: Callable[[str], None]) -> None:
        self.events, self._end = events, end

    def __iter__(self) -> Iterator[bytes]:
        return self.events  # the server iterates the generator itself: nothing in between per event

    def __next__(self) -> bytes:
        return next(self.events)

    def close(self) -> None:
        try:
            self.events.close()
        finally:
            self._end("cancelled")


def stream(
    generation: Generation, framing: Framing, heartbeat: float, body: SocketBody | None = None
) -> Body:
    """The SSE body. Headers are already decided; from here an error is an event, then [DONE].

    With `body` (gunicorn), the first event is yielded (gunicorn sends it with the head) and every
    later one is written to the socket directly; without it, every event is yielded. Bytes count as
    streamed once the server has taken them: after a direct write, or when the server asks for the
    next event (the previous write succeeded). A failed write ends the body: `OSError` from a
    direct write, `GeneratorExit` when gunicorn's own write failed.
    """
    metrics, model = generation.metrics, generation.model
    ended = False

    def end(outcome: str) -> None:
        nonlocal ended
        if not ended:
            ended = True
            generation.close(outcome)
            framing.closed(outcome)
            metrics.requests.labels(model, "true", "200").inc()

    return Body(_written(generation, framing, heartbeat, body, end), end)


def _written(
    generation: Generation,
    framing: Framing,
    heartbeat: float,
    body: SocketBody | None,
    end: Callable[[str], None],
) -> Generator[bytes, None, None]:
    metrics, model = generation.metrics, generation.model
    status = ["cancelled"]
    written = Batched(metrics.streamed_bytes.labels(model))
    direct = None if body is None else (body, written)
    events = _events(generation, framing, heartbeat, status, direct)
    try:
        if body is None:
            pending = 0
            for event in events:
                written.add(pending)
                pending = len(event)
                yield event
            written.add(pending)
        else:
            # A client that does not read holds nothing past the time limit (and a few seconds for
            # the time limit's error event); abort (shutdown) wakes the writer at once.
            body.deadline = generation.started + generation.max_seconds + DEADLINE_GRACE
            generation.writer = body
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
        end(status[0])
