"""The upstream LLM call, lean: read by the request's own greenlet, HTTP parsed in C, SSE by hand.

The token path never touches asyncio, nor a queue. At 20 tokens/s every token is its own read;
through aiohttp on the bridge's asyncio loop each one cost several loop iterations and wake-ups
(~170 us of CPU per token, measured). Here the greenlet that writes the client's response also reads
the upstream socket (gevent-patched, non-blocking), feeds the bytes to `httptools` (llhttp, the
parser node.js uses) and reads only `choices[0].delta.content` and the final `usage` from each
chunk's JSON (the openai SDK builds a pydantic object per chunk). Whatever arrived in one read
becomes one event. Once a reply is under way, `pump` lets the poller's tick take its reads itself,
without waking the greenlet (see `app.generation`). Connections are kept alive and reused. Every
failure leaves here as an `UpstreamError`.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gevent
import httptools
import orjson
from gevent import monkey
from gevent.hub import Waiter, get_hub

from app.errors import UpstreamError

log = logging.getLogger(__name__)

# Retried before any byte of the answer arrived: nothing was generated for the client yet.
_RETRY_STATUSES = {429, 500, 502, 503, 504}
_MAX_BACKOFF_SECONDS = 5.0
_READ_SIZE = 65536
_MAX_IDLE_CONNECTIONS = 512
_DONE = b"[DONE]"
_DRAIN_SECONDS = 5.0


class EventDecoder:
    """Server-sent events to `data` payloads: fields other than `data` and comments are ignored."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events


def parse_chunk(payload: bytes) -> tuple[str, dict[str, Any] | None]:
    """One upstream chunk: its content text (maybe empty) and, on the last one, the usage."""
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream LLM sent a malformed event.", code="upstream_bad_output") from None
    if type(chunk) is not dict:
        raise UpstreamError("The upstream LLM sent a malformed event.", code="upstream_bad_output")
    if "error" in chunk:
        raise UpstreamError("The upstream LLM reported an error mid-stream.", code="upstream_status")
    content = ""
    choices = chunk.get("choices")
    if choices and type(choices) is list and type(choices[0]) is dict:
        delta = choices[0].get("delta")
        if type(delta) is dict:
            text = delta.get("content")
            if type(text) is str:
                content = text
    usage = chunk.get("usage")
    return content, usage if type(usage) is dict else None


def _backoff(attempt: int, retry_after: bytes) -> float:
    if retry_after.isdigit():
        return min(float(retry_after), _MAX_BACKOFF_SECONDS)
    return min(0.5 * 2**attempt, _MAX_BACKOFF_SECONDS)


class _Response:
    """httptools' callbacks for one response: status known, body pieces, complete."""

    __slots__ = ("body", "complete", "headers_done", "keep_alive", "parser", "retry_after")

    def __init__(self) -> None:
        self.parser: Any = None
        self.keep_alive = False
        self.headers_done = False
        self.body: list[bytes] = []
        self.complete = False
        self.retry_after = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = value.strip()

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # NOTE: asked here: once the message is complete llhttp has reset and always answers False.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


_NativeEpoll = monkey.get_original("select", "epoll")
_DEADLINE_SECONDS = 0.1  # how often the tick looks at the waiters' deadlines
# Readable sockets a tick should find before the interval may lengthen: each tick costs a process
# wake-up whatever it relays, about what relaying one to three tokens costs (bench/PERFORMANCE.md);
# over 20 tokens its share of each stays small.
_TARGET_READY = 20
_STEP = 0.005  # the interval moves in steps of 5 ms: the timer is not restarted for noise


class ReadinessPoller:
    """Wakes the greenlets waiting on upstream sockets in batches, every `interval` seconds or so.

    Waiting on a socket the usual gevent way costs, per token, a watcher started and stopped, a timer,
    and usually a whole `epoll_wait` and process wake-up of its own: at 20 tokens/s per stream the
    worker wakes once per token. Here one repeating timer polls a native epoll of every relayed
    socket and switches to each ready reader in turn: a worker under load wakes `1/interval` times a
    second, whatever the streams, and a token waits at most `interval` (20 ms by default). With few
    tokens arriving, the interval lengthens, up to `longest`, until a tick finds about
    `_TARGET_READY` readable sockets (adaptive moderation, as network cards do with interrupts); it
    shortens again as soon as they arrive faster. A reader may instead leave its reads to the tick
    (`wait(..., pump)`): then it is switched to only when `pump` has something for it. Deadlines
    (heartbeats, read timeouts) are checked every `_DEADLINE_SECONDS` or so.
    """

    def __init__(self, interval: float, longest: float | None = None) -> None:
        self.interval = interval  # the shortest
        self.longest = max(interval, longest or interval)
        self.current = interval  # what the timer repeats at now
        self._rate: float | None = None  # readable sockets a second, smoothed over ~10 ticks
        self._epoll: Any = None
        self._registered: set[int] = set()
        self._waiting: dict[int, tuple[Waiter, float, Callable[[], Any] | None]] = {}
        self._timer: Any = None
        self._deadlines_at = 0.0  # when the tick looks at the deadlines next
        self._ticked = 0.0  # when the timer last ticked (or started)

    def wait(self, fd: int, timeout: float, pump: Callable[[], Any] | None = None) -> Any:
        """Until `fd` is readable (True) or `timeout` passed (False); OSError if `forget` is called.

        With `pump`, the tick calls `pump()` itself, in the hub, each time `fd` is readable, and the
        caller wakes only with its first result that is not None (or with what it raised). The hub
        must not block: `pump` reads and writes without waiting.
        """
        if self._epoll is None:
            self._epoll = _NativeEpoll()
        if fd not in self._registered:
            self._epoll.register(fd, select.EPOLLIN)
            self._registered.add(fd)
        waiter = Waiter()
        self._waiting[fd] = (waiter, time.monotonic() + timeout, pump)
        if self._timer is None:  # from rest: the shortest interval, until the rate is known
            self._rate = None
            self._start(self.interval)
        try:
            return waiter.get()
        finally:
            entry = self._waiting.get(fd)
            if entry is not None and entry[0] is waiter:
                del self._waiting[fd]

    def _adapt(self, ready: int, now: float) -> None:
        """After a tick that found `ready` readable sockets: the interval that would find
        `_TARGET_READY` at the rate seen lately, within [interval, longest], in steps of `_STEP`."""
        elapsed, self._ticked = now - self._ticked, now
        rate = ready / elapsed if elapsed > 0 else 0.0
        if self._rate is None:
            self._rate = rate
        else:  # NOTE: a faster rate counts at once (half weight), a slower one over ~10 ticks: from
            # the longest interval, a burst of streams is relayed at the shortest within ~0.15 s
            self._rate += (0.5 if rate > self._rate else 0.1) * (rate - self._rate)
        wanted = self.longest if self._rate <= 0 else _TARGET_READY / self._rate
        wanted = min(max(round(wanted / _STEP) * _STEP, self.interval), self.longest)
        if abs(wanted - self.current) >= _STEP / 2:
            self._timer.stop()
            self._start(wanted)

    def forget(self, fd: int) -> None:
        """Before `fd` is closed (or pooled): unregister it; its waiter, if any, gets an OSError."""
        if fd in self._registered:
            self._registered.discard(fd)
            self._epoll.unregister(fd)
        entry = self._waiting.pop(fd, None)
        if entry is not None:
            closed = OSError(errno.EBADF, "the upstream connection was closed")
            get_hub().loop.run_callback(entry[0].throw, closed)

    def _start(self, interval: float) -> None:
        self.current = interval
        self._ticked = time.monotonic()
        self._timer = get_hub().loop.timer(interval, interval)
        self._timer.start(self._tick)

    def _tick(self) -> None:  # runs in the hub
        try:
            waiting = self._waiting
            ready = self._epoll.poll(0)
            for fd, _ in ready:
                entry = waiting.pop(fd, None)
                if entry is None:
                    continue
                waiter, _, pump = entry
                if pump is None:
                    waiter.switch(True)
                    continue
                try:
                    result = pump()
                except BaseException as exc:  # the waiter raises it, as if it had read itself
                    waiter.throw(exc)
                    continue
                if result is None:
                    waiting[fd] = entry
                else:
                    waiter.switch(result)
            now = time.monotonic()
            if now >= self._deadlines_at and waiting:
                self._deadlines_at = now + _DEADLINE_SECONDS
                expired = [fd for fd, (_, deadline, _) in waiting.items() if deadline <= now]
                for fd in expired:
                    entry = waiting.get(fd)  # an earlier switch may have changed the table
                    if entry is not None and entry[1] <= now:
                        del waiting[fd]
                        entry[0].switch(False)
            if not self._registered and not waiting:
                self._timer.stop()
                self._timer = None
            elif self.longest > self.interval:
                self._adapt(len(ready), now)
        except Exception:  # never let the tick die: every stream of the worker depends on it
            log.exception("upstream poller tick failed")


class _Connection:
    __slots__ = ("fd", "poller", "ready", "recv", "sock", "tls", "used")

    def __init__(self, sock: socket.socket, poller: ReadinessPoller, tls: bool) -> None:
        self.sock = sock
        # Reads happen only when the poller says the socket is readable, so they go straight to the
        # non-blocking stdlib socket under gevent's (one Python frame less per token); TLS needs gevent's.
        raw = getattr(sock, "_sock", None)
        self.recv = raw.recv if not tls and raw is not None else sock.recv
        self.fd = sock.fileno()
        self.poller = poller
        self.tls = tls
        self.ready = False  # bytes (may) be waiting: read before waiting
        self.used = False

    def close(self) -> None:
        self.poller.forget(self.fd)
        self.sock.close()


@dataclass(slots=True)
class Read:
    """What one read of the reply brought: its content text (maybe empty), how many chunks had
    content, the usage (on the last), and whether the upstream was merely silent."""

    text: str = ""
    tokens: int = 0
    usage: dict[str, Any] | None = None
    silent: bool = False


SILENT = Read(silent=True)


class UpstreamClient:
    """The worker's client for the LLM's `/chat/completions`: a pool of keep-alive connections.

    Used from greenlets only (it blocks cooperatively); one per worker, which has one OS thread.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        read_timeout: float,
        connect_timeout: float,
        retries: int,
        poll_interval: float = 0.02,
        longest_poll_interval: float | None = None,
    ) -> None:
        self.poller = ReadinessPoller(poll_interval, longest_poll_interval)
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"the LLM base URL must be http(s)://host[:port]/path, not {base_url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if url.scheme == "https" else None
        host = url.netloc.rpartition("@")[2]
        path = url.path.rstrip("/") + "/chat/completions"
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            "User-Agent: metagpt-agent-gateway\r\nContent-Length: "
        ).encode("latin-1")
        self.read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self.retries = retries
        self._idle: list[_Connection] = []

    def connect(self) -> _Connection:
        """An idle keep-alive connection if there is one, else a new one (raises OSError)."""
        if self._idle:
            return self._idle.pop()
        sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock, self.poller, self._tls is not None)

    def release(self, conn: _Connection) -> None:
        self.poller.forget(conn.fd)
        if len(self._idle) < _MAX_IDLE_CONNECTIONS:
            conn.used = True
            self._idle.append(conn)
        else:
            conn.close()

    def request_bytes(self, payload: dict[str, Any]) -> bytes:
        body = orjson.dumps({**payload, "stream": True, "stream_options": {"include_usage": True}})
        return self._head + str(len(body)).encode() + b"\r\n\r\n" + body

    def stream(self, payload: dict[str, Any]) -> UpstreamStream:
        """A streaming chat completion, not started yet: `read()` connects, sends and reads it."""
        return UpstreamStream(self, self.request_bytes(payload))

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class UpstreamStream:
    """One streaming reply, read piece by piece by the greenlet that relays it.

    `read(wait)` returns what arrived within `wait` seconds (an empty `Read` when the upstream was
    silent that long: time for a heartbeat) and sets `finished` at the end. Retries (connection
    refused, 429, 5xx) happen before the first byte of the answer only. `close()` may be called from
    another greenlet: the reader then fails at once with an `OSError`.
    """

    def __init__(self, client: UpstreamClient, request: bytes) -> None:
        self._client = client
        self._request = request
        self._conn: _Connection | None = None
        self._parser: Any = None
        self._response = _Response()
        self._decoder = EventDecoder()
        self._attempt = 0
        self._last = 0.0
        self.finished = False
        self.closed = False

    def _start(self) -> None:
        """Connect and send, retrying while nothing of the answer arrived."""
        client = self._client
        while True:
            try:
                conn = client.connect()
            except OSError:  # refused, unreachable, DNS, connect timeout
                if self._attempt < client.retries:
                    self._pause(_backoff(self._attempt, b""))
                    continue
                raise UpstreamError(
                    "The upstream LLM could not be reached.", code="upstream_unavailable"
                ) from None
            if self.closed:
                conn.close()
                raise OSError("closed")
            self._conn = conn
            self._response = _Response()
            self._parser = httptools.HttpResponseParser(self._response)
            self._response.parser = self._parser
            self._decoder = EventDecoder()
            self._last = time.monotonic()
            try:
                conn.sock.settimeout(self._client.read_timeout)
                conn.sock.sendall(self._request)
                conn.sock.settimeout(0.0)  # from here on, reads wait on the poller
                conn.ready = False
            except OSError:
                self._drop()
                if conn.used:
                    continue  # a stale keep-alive connection: a fresh one does not count as a retry
                raise UpstreamError(
                    "The upstream LLM dropped the connection.", code="upstream_unavailable"
                ) from None
            return

    def _pause(self, seconds: float) -> None:
        self._attempt += 1
        gevent.sleep(seconds)
        if self.closed:
            raise OSError("closed")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def steady(self) -> bool:
        """Reading a plain-TCP reply after its 200 head: what `pump` can relay in the poller's tick."""
        conn = self._conn
        return conn is not None and not conn.tls and self._response.headers_done and not self.finished

    def read(self, wait: float | None) -> Read:
        return self._guard(self._read, wait)

    def pump(self, since: float, wait: float, take: Callable[[Read], Any]) -> Any:
        """Like `read(wait)` on a `steady` stream, but reads are taken in the poller's tick, in the
        hub: `take(read)` there returns None when it dealt with the read (the caller sleeps on), or
        what the caller wakes with. Returns that, or SILENT after `wait` seconds without a byte
        from the upstream (counted from `since` at the earliest). Raises like `read`."""
        return self._guard(self._pump, since, wait, take)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except UpstreamError:
            self._drop()
            raise
        except OSError:
            self._drop()
            if self.closed:
                raise
            raise UpstreamError(
                "The upstream LLM dropped the connection or sent a broken response.",
                code="upstream_unavailable",
            ) from None
        except httptools.HttpParserError:
            self._drop()
            raise UpstreamError(
                "The upstream LLM sent a malformed HTTP response.", code="upstream_unavailable"
            ) from None

    def _limit(self) -> float:
        limit = self._client.read_timeout - (time.monotonic() - self._last)
        if limit <= 0:
            raise UpstreamError("The upstream LLM timed out.", code="upstream_timeout")
        return limit

    def _read(self, wait: float | None) -> Read:
        if wait is not None and wait <= 0:
            return SILENT
        while True:
            if self._conn is None:
                self._start()
            assert self._conn is not None
            conn = self._conn
            if not conn.ready:
                limit = self._limit()
                if not self._client.poller.wait(conn.fd, limit if wait is None else min(wait, limit)):
                    if wait is not None and wait < limit:
                        return SILENT
                    raise UpstreamError("The upstream LLM timed out.", code="upstream_timeout")
                if self.closed:
                    raise OSError(errno.EBADF, "closed")
            read = self._take(conn)
            if read is not None:
                return read

    def _pump(self, since: float, wait: float, take: Callable[[Read], Any]) -> Any:
        conn = self._conn
        assert conn is not None

        def tick() -> Any:  # in the hub, when the socket is readable
            read = self._take(conn)
            return None if read is None else take(read)

        while True:
            limit = self._limit()
            left = wait - (time.monotonic() - max(since, self._last))
            if left <= 0:
                return SILENT
            result = self._client.poller.wait(conn.fd, min(left, limit), tick)
            if self.closed:
                raise OSError(errno.EBADF, "closed")
            if result is not False:  # False: a deadline passed; tokens may have flowed meanwhile
                return result

    def _take(self, conn: _Connection) -> Read | None:
        """One read of the socket: what it brought, or None when there is nothing to show yet (no
        byte waiting, the head not complete, a retry started). Never waits on a `steady` stream."""
        response = self._response
        try:
            data = conn.recv(_READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError):
            conn.ready = False
            return None
        # More may be waiting only if the read filled the buffer (or TLS holds decrypted bytes).
        conn.ready = len(data) == _READ_SIZE or (conn.tls and conn.sock.pending() > 0)  # type: ignore[attr-defined]
        self._last = time.monotonic()
        if not data:
            stale = conn.used and not response.headers_done and not response.body
            self._drop()
            if stale:  # a keep-alive connection the server had closed: try again, afresh
                return None
            raise UpstreamError(
                "The upstream LLM closed the connection before the end of its answer.",
                code="upstream_unavailable",
            )
        headers_done = response.headers_done
        self._parser.feed_data(data)
        if not response.headers_done:
            return None
        if not headers_done:
            status = self._parser.get_status_code()
            if status != 200:
                self._drop()
                if status in _RETRY_STATUSES and self._attempt < self._client.retries:
                    self._pause(_backoff(self._attempt, response.retry_after))
                    return None
                raise UpstreamError(f"The upstream LLM answered with HTTP {status}.", code="upstream_status")
        return self._events()

    def _events(self) -> Read:
        response = self._response
        body, response.body = response.body, []
        texts: list[str] = []
        usage = None
        for piece in body:
            for data in self._decoder.feed(piece):
                if data == _DONE:
                    self._finish()
                    return Read("".join(texts), len(texts), usage)
                content, last_usage = parse_chunk(data)
                if content:
                    texts.append(content)
                if last_usage is not None:
                    usage = last_usage
        if response.complete:  # the body ended without [DONE]: what arrived is the whole answer
            self._finish()
        return Read("".join(texts), len(texts), usage)

    def _finish(self) -> None:
        self.finished = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not self._response.keep_alive:
            conn.close()
        elif self._response.complete:
            self._client.release(conn)
        else:  # [DONE] came before the body's end (the chunked terminator): reuse it once that arrives
            gevent.spawn(_drain, self._client, conn, self._parser, self._response)

    def close(self) -> None:
        """Stop: closes the connection (the upstream sees the client go) and wakes a blocked reader."""
        self.closed = True
        self._drop()


def _drain(client: UpstreamClient, conn: _Connection, parser: Any, response: _Response) -> None:
    client.poller.forget(conn.fd)
    try:
        conn.sock.settimeout(_DRAIN_SECONDS)
        while not response.complete:
            data = conn.sock.recv(_READ_SIZE)
            if not data:
                raise OSError("closed")
            parser.feed_data(data)
    except (OSError, httptools.HttpParserError):
        conn.close()
        return
    if response.keep_alive:
        client.release(conn)
    else:
        conn.close()
