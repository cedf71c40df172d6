"""The worker's client for the upstream LLM: its address, its request head, a pool of keep-alive
connections."""

from __future__ import annotations

import select
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import orjson
from gevent import monkey

from app.upstream.poller import ReadinessPoller
from app.upstream.stream import UpstreamStream

_MAX_IDLE_CONNECTIONS = 512
# NOTE: never select(): it refuses descriptors past 1,024 (FD_SETSIZE), which a worker holding its
# clients' keep-alive connections passes. gevent's own select() calls the stdlib's first, and its
# poll() starts a watcher per call; the stdlib's poll() has no such limit and costs one syscall.
_NativePoll = monkey.get_original("select", "poll")


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
        max_call_seconds: float = 600.0,
        max_reply_bytes: int = 8 << 20,
        max_line_bytes: int = 1 << 20,
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
        self.max_call_seconds = max_call_seconds
        self.max_reply_bytes = max_reply_bytes  # one call's reply, on the wire
        self.max_line_bytes = max_line_bytes  # one SSE line
        self._connect_timeout = connect_timeout
        self.retries = retries
        self._idle: list[_Connection] = []
        self._probe = _NativePoll()  # one descriptor at a time: whether an idle connection is readable

    def connect(self) -> _Connection:
        """An idle keep-alive connection if there is one, else a new one (raises OSError). An idle
        connection that is readable is dropped: the upstream closed it, or sent bytes after its last
        response that would be read as the next one's."""
        while self._idle:
            conn = self._idle.pop()
            if not self._readable(conn.fd):
                return conn
            conn.close()
        sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock, self.poller, self._tls is not None)

    def _readable(self, fd: int) -> bool:
        """Whether `fd` has bytes (or an end, or an error) waiting, without waiting."""
        probe = self._probe
        probe.register(fd, select.POLLIN)
        try:
            return bool(probe.poll(0))
        finally:
            probe.unregister(fd)

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
