"""One streamed reply, lean: read by the request's own greenlet, HTTP parsed in C, SSE by hand.

The token path never touches asyncio, nor a queue: through aiohttp on the bridge's asyncio loop each
token cost several loop iterations and wake-ups (bench/PERFORMANCE.md). Here the greenlet that writes
the client's response also reads the upstream socket (gevent-patched, non-blocking), feeds the bytes
to `httptools` (llhttp, the parser node.js uses) and the SSE payloads to `chunk.parse_chunk`. Whatever
arrived in one read becomes one `Read`. Once a reply is under way, `pump` lets the poller's tick take
its reads itself, without waking the greenlet (see `app.generation`). Every failure leaves here as an
`UpstreamError`.
"""

from __future__ import annotations

import errno
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import httptools

from app.errors import UpstreamError
from app.upstream.chunk import parse_chunk
from app.upstream.decoder import EventDecoder
from app.upstream.reply import SILENT, Read
from app.upstream.think import ThinkSplitter

if TYPE_CHECKING:
    from app.upstream.client import UpstreamClient, _Connection

log = logging.getLogger(__name__)

# Retried before any byte of the answer arrived: nothing was generated for the client yet.
_RETRY_STATUSES = {429, 500, 502, 503, 504}
_MAX_BACKOFF_SECONDS = 5.0
_READ_SIZE = 65536
_DONE = b"[DONE]"
_DRAIN_SECONDS = 5.0


def _backoff(attempt: int, retry_after: bytes) -> float:
    if retry_after.isdigit():
        return min(float(retry_after), _MAX_BACKOFF_SECONDS)
    return min(0.5 * 2**attempt, _MAX_BACKOFF_SECONDS)


class _Response:
    """httptools' callbacks for one response: status known, body pieces, complete."""

    __slots__ = ("body", "complete", "content_type", "headers_done", "keep_alive", "parser", "retry_after")

    def __init__(self) -> None:
        self.parser: Any = None
        self.keep_alive = False
        self.headers_done = False
        self.body: list[bytes] = []
        self.complete = False
        self.retry_after = b""
        self.content_type = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"retry-after":
            self.retry_after = value.strip()
        elif lower == b"content-type":
            self.content_type = value.strip().lower()

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # NOTE: asked here: once the message is complete llhttp has reset and always answers False.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


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
        self._think: ThinkSplitter | None = ThinkSplitter()
        self._attempt = 0
        self._last = 0.0
        self._began = time.monotonic()
        self._room = client.max_reply_bytes  # bytes this call's replies may still take, retries included
        self.finished = False
        self.closed = False

    def _start(self) -> None:
        """Connect and send, retrying while nothing of the answer arrived."""
        client = self._client
        while True:
            try:
                conn = client.connect()
            except ssl.SSLCertVerificationError as exc:  # not a passing failure: retrying cannot help
                log.warning("upstream LLM: TLS certificate not accepted: %s", exc.verify_message or exc)
                raise UpstreamError(
                    "The upstream LLM's TLS certificate could not be verified.", code="upstream_unavailable"
                ) from None
            except OSError as exc:  # refused, unreachable, DNS, connect timeout, TLS handshake
                if self._attempt < client.retries:
                    self._pause(_backoff(self._attempt, b""))
                    continue
                log.warning("upstream LLM could not be reached: %s: %s", type(exc).__name__, exc)
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
            self._decoder = EventDecoder(self._client.max_line_bytes)
            self._think = ThinkSplitter()
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

    def pump(self, idle_since: Callable[[], float], wait: float, take: Callable[[Read], Any]) -> Any:
        """Like `read(wait)` on a `steady` stream, but reads are taken in the poller's tick, in the
        hub: `take(read)` there returns None when it dealt with the read (the caller sleeps on), or
        what the caller wakes with. Returns that, or SILENT once `wait` seconds passed since
        `idle_since()`, the last time the client was sent something: an upstream that sends bytes
        but no text does not hold back heartbeats. Raises like `read`."""
        return self._guard(self._pump, idle_since, wait, take)

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
        """Seconds the reader may still wait: until the read timeout (counted from the upstream's last
        byte) or the call's own limit (from its start: a drip-feeding upstream cannot hold it)."""
        now = time.monotonic()
        limit = self._client.read_timeout - (now - self._last)
        if limit <= 0:
            raise UpstreamError("The upstream LLM timed out.", code="upstream_timeout")
        whole = self._client.max_call_seconds - (now - self._began)
        if whole <= 0:
            raise UpstreamError(
                f"The upstream LLM call took longer than {self._client.max_call_seconds:g} s.",
                code="upstream_timeout",
            )
        return min(limit, whole)

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
                    self._limit()  # raises what ran out: the read timeout or the call's own limit
                    raise UpstreamError("The upstream LLM timed out.", code="upstream_timeout")
                if self.closed:
                    raise OSError(errno.EBADF, "closed")
            read = self._take(conn)
            if read is not None:
                return read

    def _pump(self, idle_since: Callable[[], float], wait: float, take: Callable[[Read], Any]) -> Any:
        conn = self._conn
        assert conn is not None

        def tick() -> Any:  # in the hub, when the socket is readable
            read = self._take(conn)
            return None if read is None else take(read)

        while True:
            limit = self._limit()
            left = wait - (time.monotonic() - idle_since())
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
        self._room -= len(data)
        if self._room < 0:
            self._drop()
            raise UpstreamError(
                f"The upstream LLM's reply exceeded {self._client.max_reply_bytes} bytes.",
                code="upstream_bad_output",
            )
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
            if not response.content_type.startswith(b"text/event-stream"):
                # e.g. a proxy's HTML page with status 200: nothing of it is an answer
                self._drop()
                kind = response.content_type.decode("latin-1") or "no content type"
                raise UpstreamError(
                    f"The upstream LLM answered with {kind}, not an event stream.", code="upstream_bad_output"
                )
        return self._events()

    def _events(self) -> Read:
        response = self._response
        body, response.body = response.body, []
        texts: list[str] = []
        thoughts: list[str] = []
        usage = None
        for piece in body:
            for data in self._decoder.feed(piece):
                if data == _DONE:
                    self._finish()
                    return self._read_of(texts, thoughts, usage, end=True)
                content, reasoning, last_usage = parse_chunk(data)
                if content:
                    texts.append(content)
                if reasoning:
                    thoughts.append(reasoning)
                if last_usage is not None:
                    usage = last_usage
        if response.complete:  # the body ended without [DONE]: what arrived is the whole answer
            self._finish()
        return self._read_of(texts, thoughts, usage, end=self.finished)

    def _read_of(self, texts: list[str], thoughts: list[str], usage: Any, end: bool) -> Read:
        text = "".join(texts)
        think = self._think
        if think is not None:  # until the reply's content has begun: a `<think>` block is reasoning
            thought, text = think.feed(text)
            if end:
                more_thought, more_text = think.flush()
                thought, text = thought + more_thought, text + more_text
            if thought:
                thoughts.append(thought)
            if think.done:
                self._think = None
        return Read(text, len(texts), usage, False, "".join(thoughts) if thoughts else "")

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
