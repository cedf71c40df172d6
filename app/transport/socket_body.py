"""A streaming body's later events written by the request's greenlet straight to gunicorn's socket."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.socket

SOCKET_BODY_KEY = "gateway.socket_body"  # set by app.transport.worker: the app may write HTTP/1.x itself


def _worker_socket(environ: dict[str, Any]) -> gevent.socket.socket | None:
    """The client's socket, when the gateway's gunicorn worker marked the request as its own."""
    sock = environ.get("gunicorn.socket")
    if not environ.get(SOCKET_BODY_KEY) or not isinstance(sock, gevent.socket.socket):
        return None
    return sock


def hang_up_check(environ: dict[str, Any]) -> Callable[[], bool] | None:
    """For a request on the gateway's gunicorn worker: a check of whether its client has hung up
    (the connection reads as closed; bytes of a next request mean it is still there). None elsewhere."""
    sock = _worker_socket(environ)
    if sock is None:
        return None
    raw = sock._sock  # non-blocking: gevent's own recv would wait for a byte

    def gone() -> bool:
        try:
            return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:  # reset
            return True

    return gone


class SendTimeout(TimeoutError):
    """The client took none of what was left for it within the time limit: it is treated as gone."""


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

    A client that stops reading (connected straight to gunicorn: nginx always reads) would hold its
    greenlet and generation slot for ever: `flush` waits at most `send_timeout` seconds, and never
    past `deadline` (the generation's time limit), then raises `SendTimeout`; `interrupt` (shutdown)
    wakes a waiting `flush` at once.
    """

    __slots__ = ("_chunked", "_error", "_left", "_raw", "_sock", "_waiting", "deadline", "send_timeout")

    def __init__(self, sock: Any, chunked: bool, send_timeout: float = 60.0) -> None:
        self._sock = sock
        # gevent's plain socket wraps a non-blocking stdlib socket; anything else (TLS) uses sendall.
        self._raw = sock._sock if type(sock) is gevent.socket.socket else None
        self._chunked = chunked
        self._left = b""
        self._error: OSError | None = None
        self._waiting = False
        self.send_timeout = send_timeout
        self.deadline: float | None = None  # time.monotonic() past which no write waits

    @property
    def immediate(self) -> bool:
        """Whether `send_now` can send at all (a plain socket)."""
        return self._raw is not None

    @classmethod
    def of(cls, environ: dict[str, Any], send_timeout: float = 60.0) -> SocketBody | None:
        """For an HTTP/1.x request on the gateway's gunicorn worker, which says so in the environ
        (`app.transport.worker`: only it knows the wire is HTTP, not uwsgi); None elsewhere: the body
        is then yielded (the Flask test client, other servers)."""
        sock = _worker_socket(environ)
        protocol = environ.get("SERVER_PROTOCOL")
        if sock is None or protocol not in ("HTTP/1.1", "HTTP/1.0"):
            return None
        return cls(sock, chunked=protocol == "HTTP/1.1", send_timeout=send_timeout)

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
        if not left:
            return
        if self._raw is not None:  # the client may have caught up already: no timer for that
            try:
                sent = self._raw.send(left)
            except BlockingIOError:
                sent = 0
            if sent == len(left):
                return
            left = left[sent:]
        wait = self.send_timeout
        if self.deadline is not None:
            wait = max(min(wait, self.deadline - time.monotonic()), 0.001)
        self._waiting = True
        try:
            with gevent.Timeout(wait, SendTimeout):
                self._sock.sendall(left)
        finally:
            self._waiting = False

    def interrupt(self) -> None:
        """Wake a `flush` waiting for the client (the server is shutting down): it raises at once."""
        if self._waiting:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
