"""The upstream LLM call, lean: read by a greenlet over keep-alive connections, SSE decoded by hand.

The token path never touches asyncio. At 20 tokens/s every token is its own read; through aiohttp on
the bridge's asyncio loop each one cost several loop iterations and wake-ups (~170 us of CPU per
token, measured), while a greenlet blocked in `recv` on gevent's hub costs one switch. So the
stdlib's `http.client` (gevent-patched sockets) streams the response with `read1` (whatever one chunk
holds, never waiting for more), and the gateway reads only `choices[0].delta.content` and the final
`usage` from each chunk's JSON (the openai SDK builds a pydantic object per chunk). Every failure
leaves here as an `UpstreamError`.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gevent
import orjson

from app.errors import UpstreamError

# Retried before any byte of the answer arrived: nothing was generated for the client yet.
_RETRY_STATUSES = {429, 500, 502, 503, 504}
_MAX_BACKOFF_SECONDS = 5.0
_READ_SIZE = 65536
_MAX_IDLE_CONNECTIONS = 512


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


@dataclass
class Delta:
    """One upstream chunk: its content text (maybe empty) and, on the last one, the usage."""

    content: str
    usage: dict[str, Any] | None = None


def parse_chunk(payload: bytes) -> Delta:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream LLM sent a malformed event.", code="upstream_bad_output") from None
    if not isinstance(chunk, dict):
        raise UpstreamError("The upstream LLM sent a malformed event.", code="upstream_bad_output")
    if "error" in chunk:
        raise UpstreamError("The upstream LLM reported an error mid-stream.", code="upstream_status")
    content = ""
    choices = chunk.get("choices")
    if choices and isinstance(choices, list) and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            content = delta["content"]
    usage = chunk.get("usage")
    return Delta(content, usage if isinstance(usage, dict) else None)


def _backoff(attempt: int, response: http.client.HTTPResponse | None) -> float:
    if response is not None and (after := response.getheader("retry-after", "")).isdigit():
        return min(float(after), _MAX_BACKOFF_SECONDS)
    return min(0.5 * 2**attempt, _MAX_BACKOFF_SECONDS)


class _Stale(Exception):
    """A reused keep-alive connection turned out closed before it answered: try a fresh one."""


class _ConnectFailed(Exception):
    """No connection could be made (refused, unreachable, DNS, connect timeout): nothing was sent."""


class UpstreamClient:
    """The worker's client for the LLM's `/chat/completions`: a pool of keep-alive connections.

    Used from greenlets only (it blocks cooperatively). One instance per worker; not thread-safe, and
    it needs none: the worker has one OS thread.
    """

    def __init__(
        self, base_url: str, api_key: str, read_timeout: float, connect_timeout: float, retries: int
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"the LLM base URL must be http(s)://host[:port]/path, not {base_url!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._path = url.path.rstrip("/") + "/chat/completions"
        self._tls = ssl.create_default_context() if self._https else None
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._retries = retries
        self._idle: list[http.client.HTTPConnection] = []

    def _new_connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise _ConnectFailed(str(exc)) from None
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _send(self, body: bytes) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """POST on an idle connection if there is one (a stale one is dropped), else on a new one."""
        while self._idle:
            conn = self._idle.pop()
            try:
                return conn, self._request(conn, body, reused=True)
            except _Stale:
                conn.close()
        conn = self._new_connection()
        try:
            return conn, self._request(conn, body, reused=False)
        except BaseException:
            conn.close()
            raise

    def _request(
        self, conn: http.client.HTTPConnection, body: bytes, reused: bool
    ) -> http.client.HTTPResponse:
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            return conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if reused:
                raise _Stale() from None
            raise

    def _release(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if response.isclosed() and not response.will_close and len(self._idle) < _MAX_IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.close()

    def _finish(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        """After [DONE]: read the body's end (the chunked terminator) so the connection is reusable."""
        try:
            while response.read1(_READ_SIZE):
                pass
        except (http.client.HTTPException, OSError):
            conn.close()
            return
        self._release(conn, response)

    def stream_chat(self, payload: dict[str, Any]) -> Iterator[Delta]:
        """POST a streaming chat completion and yield its deltas. Closing the iterator early (or
        killing the greenlet) closes the connection, which is how the upstream learns to stop."""
        body = orjson.dumps({**payload, "stream": True, "stream_options": {"include_usage": True}})
        for attempt in range(self._retries + 1):
            conn: http.client.HTTPConnection | None = None
            try:
                try:
                    conn, response = self._send(body)
                except _ConnectFailed:
                    if attempt < self._retries:
                        gevent.sleep(_backoff(attempt, None))
                        continue
                    raise UpstreamError(
                        "The upstream LLM could not be reached.", code="upstream_unavailable"
                    ) from None
                if response.status in _RETRY_STATUSES and attempt < self._retries:
                    conn.close()
                    gevent.sleep(_backoff(attempt, response))
                    continue
                if response.status != 200:
                    conn.close()
                    raise UpstreamError(
                        f"The upstream LLM answered with HTTP {response.status}.", code="upstream_status"
                    )
                decoder = EventDecoder()
                while raw := response.read1(_READ_SIZE):
                    for data in decoder.feed(raw):
                        if data == b"[DONE]":
                            self._finish(conn, response)
                            conn = None
                            return
                        yield parse_chunk(data)
                self._release(conn, response)
                conn = None
                return
            except TimeoutError:
                raise UpstreamError("The upstream LLM timed out.", code="upstream_timeout") from None
            except (http.client.HTTPException, OSError):
                # a dropped connection, a cut body, a malformed response
                raise UpstreamError(
                    "The upstream LLM dropped the connection or sent a broken response.",
                    code="upstream_unavailable",
                ) from None
            finally:
                if conn is not None:
                    conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
