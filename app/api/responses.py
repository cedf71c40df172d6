"""OpenAI's Responses API: `POST /v1/responses`, `GET /v1/responses/<id>` (the object, or its events
with `stream=true&starting_after=N`), `POST /v1/responses/<id>/cancel`, `DELETE /v1/responses/<id>`.

A response runs the same `Generation` as a chat completion; only the framing differs
(`app.api.responses_wire`). Without `background`, the request's greenlet drives it, on the fast path,
and a client that leaves cancels it, as for chat; with `store` (OpenAI's default) its object is kept.
With `background: true`, a greenlet of the worker's own drives it (`drive`) whatever becomes of any
connection: it records the events in the response store, one write per relay tick, and the object about
once a second; clients, on any worker (and with Redis, any host), read them from there (`attach`) from
any sequence number, as often as they like. A cancel request is a flag in the store that the driver
looks at twice a second.
"""

from __future__ import annotations

import logging
import re
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
import gevent.lock
from flask import Blueprint, Response, g, jsonify, request

from app.api import sse
from app.api.completions import _payload, hand_off, start_generation
from app.api.protocol import file_link
from app.api.responses_wire import (
    TERMINAL_STATUSES,
    Event,
    ResponseStream,
    frame,
    parse_responses_request,
)
from app.errors import AgentError, APIError, InvalidRequest, NotFound
from app.generation.body import stream
from app.generation.job import Failed, Finished, Generation, Token, collect
from app.metrics import Batched, Metrics
from app.services import services
from app.transport.socket_body import SocketBody, hang_up_check

if TYPE_CHECKING:
    from app.agents.base import AgentResult, Kind
    from app.api.links import LinkSigner
    from app.response_store import ResponseStore

log = logging.getLogger(__name__)

bp = Blueprint("responses", __name__)

FLUSH_SECONDS = 0.05  # a background response's events are written at most this long after they happen
CANCEL_CHECK_SECONDS = 0.5  # how often a background driver looks for a cancel request
SNAPSHOT_SECONDS = 1.0  # how often its object (the output so far) is written
_INTEGER = re.compile(r"-?[0-9]{1,18}")
TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})


class ResponsesFraming:
    """The Responses API's events for `app.generation.body.stream`: no `[DONE]`; the object is stored
    at the end when `store` asks for it."""

    closing = b""

    def __init__(
        self,
        rs: ResponseStream,
        base_url: str,
        links: LinkSigner | None,
        on_end: Callable[[ResponseStream], None] | None,
    ) -> None:
        self.rs, self.base_url, self.links, self.on_end = rs, base_url, links, on_end
        self.frames: dict[Kind, Callable[[str], bytes]] = {
            "content": lambda text: _framed(rs.token("content", text)),
            "reasoning": lambda text: _framed(rs.token("reasoning", text)),
        }

    def opening(self) -> bytes:
        return _framed(self.rs.start())

    def finished(self, result: AgentResult) -> list[bytes]:
        events = self.rs.finish(result.usage, file_link(result, self.base_url, self.links))
        self._ended()
        return [frame(event) for event in events]

    def failed(self, error: APIError) -> list[bytes]:
        events = self.rs.fail(error)
        self._ended()
        return [frame(event) for event in events]

    def closed(self, outcome: str) -> None:
        """The body ended: a stream its client left is stored as cancelled, not as still running."""
        if outcome == "cancelled" and self.rs.status == "in_progress":
            self.rs.cancelled()
            self._ended()

    def _ended(self) -> None:
        if self.on_end is not None:
            try:
                self.on_end(self.rs)
            except APIError as exc:  # the client still gets its events; GET will not find it
                log.warning("could not store response %s: %s", self.rs.id, exc.message)


def _framed(events: list[Event]) -> bytes:
    return b"".join(frame(event) for event in events)


def _store() -> ResponseStore:
    return services().responses


def _stored(rid: str) -> tuple[ResponseStore, dict[str, Any]]:
    """The store, and the response `rid` names; 404 when it is unknown, expired or deleted."""
    store = _store()
    response = store.get(rid)
    if response is None:
        raise NotFound(f"No response with id '{rid}' (it may have expired).", param="response_id")
    return store, response


@bp.post("/v1/responses")
def create_response() -> Response:
    started = time.monotonic()
    svc = services()
    settings, metrics, lifecycle = svc.settings, svc.metrics, svc.lifecycle
    body = parse_responses_request(_payload())
    g.metrics_stream = "true" if body.stream else "false"
    background, stored = bool(body.background), body.store is not False
    if background and not stored:
        raise InvalidRequest("A background response must be stored (store: true).", param="store")
    generation, base_url = start_generation(svc, body.as_chat(), started)
    rs = ResponseStream(body)
    store = _store()

    if background:
        store.create(rs.snapshot())
        store.append(rs.id, rs.start())
        lifecycle.background.spawn(drive, hand_off(generation), rs, store, base_url, svc.links)
        metrics.responses_background.inc()
        if body.stream:
            # Counted now: this stream is the store's, not a generation's body, which counts itself.
            metrics.requests.labels(generation.model, "true", "200").inc()
            events = attach(store, rs.id, -1, settings.heartbeat_seconds, metrics)
            return Response(events, headers=sse.HEADERS)
        return jsonify(rs.snapshot())

    if not body.stream:
        content, reasoning, result = collect(generation, hang_up_check(request.environ))
        if reasoning:
            rs.token("reasoning", reasoning)
        rs.token("content", content)
        rs.finish(result.usage, file_link(result, base_url, svc.links))
        if stored:
            try:
                store.create(rs.snapshot())
            except APIError as exc:  # the client still gets its response; GET will not find it
                log.warning("could not store response %s: %s", rs.id, exc.message)
        return jsonify(rs.snapshot())

    first = generation.peek(settings.first_event_wait_seconds)
    if isinstance(first, Failed):
        raise first.error  # the request's end closes the generation (`_close_unowned`)
    on_end = None
    if stored:
        store.create(rs.snapshot())
        on_end = lambda ended: store.update(ended.id, ended.snapshot())  # noqa: E731
    body_iter = stream(
        hand_off(generation),
        ResponsesFraming(rs, base_url, svc.links, on_end),
        settings.heartbeat_seconds,
        SocketBody.of(request.environ, settings.send_timeout_seconds),
    )
    return Response(body_iter, status=200, headers=sse.HEADERS, direct_passthrough=True)


class EventWriter:
    """A worker's background responses' events, written together every FLUSH_SECONDS: one call (with
    Redis, one round trip) per tick for all of them, however many run. Writes are serialized, so a
    response's events reach the store in order."""

    def __init__(self, store: ResponseStore) -> None:
        self.store = store
        self.pending: dict[str, list[Event]] = {}
        self._lock = gevent.lock.Semaphore()
        self._flusher: gevent.Greenlet | None = None

    def add(self, rid: str, events: list[Event]) -> None:
        self.pending.setdefault(rid, []).extend(events)
        if self._flusher is None or self._flusher.dead:
            self._flusher = gevent.spawn(self._run)

    def _run(self) -> None:
        while self.pending:
            gevent.sleep(FLUSH_SECONDS)
            self.flush()

    def flush(self, rid: str | None = None) -> None:
        """Write what is pending (only `rid`'s, if given), after any write under way."""
        with self._lock:
            if rid is None:
                batch, self.pending = self.pending, {}
            else:
                batch = {rid: self.pending.pop(rid, [])}
            try:
                self.store.append_many(batch)
            except APIError as exc:  # readers miss these events; the generations go on
                log.warning("could not store the events of %d responses: %s", len(batch), exc.message)


_writers: weakref.WeakKeyDictionary[Any, EventWriter] = weakref.WeakKeyDictionary()


def _writer(store: ResponseStore) -> EventWriter:
    writer = _writers.get(store)
    if writer is None:
        writer = _writers[store] = EventWriter(store)
    return writer


def drive(
    generation: Generation,
    rs: ResponseStream,
    store: ResponseStore,
    base_url: str,
    links: LinkSigner | None,
) -> None:
    """A background response, to its end: its events into the store, whoever is reading."""
    metrics, model = generation.metrics, generation.model
    tokens = {kind: Batched(metrics.streamed_tokens.labels(model, kind)) for kind in ("content", "reasoning")}
    writer = _writer(store)
    pending: list[Event] = []
    outcome = "cancelled"
    checked = snapped = time.monotonic()
    try:
        while True:
            event = generation.next(timeout=CANCEL_CHECK_SECONDS)
            if isinstance(event, Token):
                tokens[event.kind].add(event.count)
                pending += rs.token(event.kind, event.text, event.count)
            elif isinstance(event, Finished):
                pending += rs.finish(event.result.usage, file_link(event.result, base_url, links))
                outcome = "completed"
                break
            elif isinstance(event, Failed):
                pending += rs.fail(event.error)
                outcome = "failed"
                break
            if pending:
                writer.add(rs.id, pending)
                pending = []
            now = time.monotonic()
            if now - snapped >= SNAPSHOT_SECONDS:
                _write(store.update, rs.id, rs.snapshot())
                snapped = now
            if now - checked >= CANCEL_CHECK_SECONDS:
                checked = now
                if _cancel_requested(store, rs.id):
                    rs.cancelled()
                    break
    except Exception:
        log.exception("background response %s failed", rs.id)
        pending += rs.fail(AgentError("The response failed."))
        outcome = "failed"
    finally:
        generation.close(outcome)  # cancels the agent and the upstream call if it still runs
        for counter in tokens.values():
            counter.flush()
        writer.add(rs.id, pending)
        writer.flush(rs.id)  # every event is stored before the final status: readers end on either
        _write(store.update, rs.id, rs.snapshot())
        metrics.responses_background.dec()


def _write(method: Callable[[str, Any], None], rid: str, value: Any) -> None:
    """A background driver's write: a failing store loses what readers would see, not the generation."""
    try:
        method(rid, value)
    except APIError as exc:
        log.warning("could not store events of response %s: %s", rid, exc.message)


def _cancel_requested(store: ResponseStore, rid: str) -> bool:
    try:
        return store.cancel_requested(rid)
    except APIError:
        return False


def attach(store: ResponseStore, rid: str, after: int, heartbeat: float, metrics: Metrics) -> Iterator[bytes]:
    """A response's stored events after sequence number `after`, then the new ones as they are written,
    until the response ends. Leaving changes nothing for the response; a store that fails ends the
    stream (the client may attach again from the last sequence number it saw)."""
    metrics.responses_attached.inc()
    try:
        yield sse.comment("attached")
        while True:
            events = store.events(rid, after, wait=heartbeat)
            if events is None:
                return  # deleted, or expired
            if events:
                after = events[-1][0]
                yield _framed(events)
                if events[-1][1] in TERMINAL_EVENTS:
                    return
                continue
            response = store.get(rid)
            if response is None:
                return
            if response["status"] in TERMINAL_STATUSES:
                late = store.events(rid, after, wait=0)  # written just before the status
                if late:
                    yield _framed(late)
                return
            yield sse.comment("keep-alive")
    except APIError as exc:
        log.warning("stopped streaming response %s: %s", rid, exc.message)
    finally:
        metrics.responses_attached.dec()


@bp.get("/v1/responses/<rid>")
def get_response(rid: str) -> Response:
    store, response = _stored(rid)
    if request.args.get("stream", "false").lower() != "true":
        return jsonify(response)
    raw = request.args.get("starting_after")
    after = -1
    if raw is not None:
        if not _INTEGER.fullmatch(raw):
            raise InvalidRequest("starting_after must be an integer.", param="starting_after")
        after = int(raw)
    if not response.get("background"):  # only a background response's events are stored (as OpenAI)
        raise InvalidRequest("Only a background response can be streamed again.", param="stream")
    if raw is not None:
        services().metrics.responses_resumed.inc()
    svc = services()
    return Response(
        attach(store, rid, after, svc.settings.heartbeat_seconds, svc.metrics), headers=sse.HEADERS
    )


@bp.post("/v1/responses/<rid>/cancel")
def cancel_response(rid: str) -> Response:
    store, response = _stored(rid)
    if not response.get("background"):
        raise InvalidRequest("Only a background response can be cancelled.", param="response_id")
    if response["status"] in TERMINAL_STATUSES:
        return jsonify(response)
    store.request_cancel(rid)
    deadline = time.monotonic() + 3 * CANCEL_CHECK_SECONDS + 1
    while time.monotonic() < deadline:  # the driver stops within CANCEL_CHECK_SECONDS
        gevent.sleep(0.1)
        latest = store.get(rid)
        if latest is None or latest["status"] in TERMINAL_STATUSES:
            return jsonify(latest or {**response, "status": "cancelled"})
    return jsonify(store.get(rid) or response)


@bp.delete("/v1/responses/<rid>")
def delete_response(rid: str) -> Response:
    store, _ = _stored(rid)
    store.delete(rid)  # a running generation sees it as a cancel request and stops
    return jsonify({"id": rid, "object": "response", "deleted": True})
