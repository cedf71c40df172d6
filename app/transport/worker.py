"""The gateway's gunicorn worker: gunicorn's gevent worker, with its error pages in the API's error format,
the socket-body flag for streams, a stop that drains the app and closes idle keep-alive connections at
once, and the app's long-lived objects frozen out of the garbage collector.

gunicorn's gevent worker, told to stop (SIGTERM: `docker stop`, a reload's old workers), stops accepting
within a second, then waits for every connection it holds, including those idle between two requests:
nginx keeps up to 32 of them open per worker for 60 s, so a stop took ~60 s with nothing running, and
requests nginx sent on them meanwhile got `server_shutting_down` (issue 16). Here a stopping worker
stops accepting at once and closes every connection that is waiting for its next request with nothing
received; nginx sees the close and drops the connection from its cache.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import gc
import json
import socket
import struct
import termios
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

import gevent
from flask import Flask
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own answers to malformed HTTP, as OpenAI error objects instead of HTML pages."""
    code = "bad_request" if status_int < 500 else "server_error"
    error = {
        "message": f"{reason}: {mesg}",
        "type": "invalid_request_error" if status_int < 500 else "server_error",
        "param": None,
        "code": code,
    }
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin1") + body)


class _Listener(StreamServer):
    """gunicorn's per-socket server, remembered so that a stopping worker can stop accepting at once."""

    instances: ClassVar[weakref.WeakSet[_Listener]] = weakref.WeakSet()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instances.add(self)


# NOTE: gunicorn's GeventWorker.run builds its servers from this module attribute and keeps them local;
# this is the one way to reach them. It changes nothing else about them.
ggevent.StreamServer = _Listener


# Seconds before the graceful timeout at which streams still running are ended with an error event
# and [DONE], so that clients see a clean end instead of a cut when gunicorn stops waiting.
DRAIN_MARGIN = 5


def _unread_bytes(sock: socket.socket) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


class GatewayWorker(GeventWorker):
    """Besides the stop (module docstring), connections are bounded: a new connection has
    `header_timeout` seconds to deliver its first request head (later ones on it get gunicorn's
    `keepalive`), and when a listener's pool is full, the connection that has waited longest for a
    request, with nothing of it unread, is closed to make room. 2,100 slow connections to :8000
    (more than two workers' 1,000 each) held every slot for 75 s, so `/healthz` and `/metrics`
    there, the compose healthcheck's and Prometheus's, went unanswered (issue 19). Each listener
    has its own pool (gunicorn's), so such a flood never takes nginx's Unix socket's."""

    header_timeout = 15.0  # as nginx's client_header_timeout; the app's setting replaces it

    def run(self) -> None:
        """gunicorn's loop, then the background responses still running (app.api.responses): they end
        by themselves or at the drain's deadline, which aborts them with an error they record."""
        super().run()
        if isinstance(self.wsgi, Flask) and "gateway" in self.wsgi.extensions:
            from app.services import services

            services(self.wsgi).lifecycle.background.join(timeout=self.cfg.graceful_timeout)

    def init_process(self) -> None:
        util.write_error = _write_json_error  # gunicorn builds status and message; only the body changes
        self._clients: dict[gevent.Greenlet, socket.socket] = {}  # each handler's connection
        # Handlers waiting for their connection's next request, longest waiting first (dict order).
        self._idle: dict[gevent.Greenlet, None] = {}
        self._fresh: set[gevent.Greenlet] = set()  # handlers whose connection has sent no request yet
        self._listener_of: dict[gevent.Greenlet, int] = {}  # each handler's listening socket (fd)
        self._open: collections.Counter[int] = collections.Counter()  # handlers per listening socket
        super().init_process()

    def load_wsgi(self) -> None:
        """Start the files' retention (one worker of the server leads it), and tell the app it may
        write a streaming body's later events to the socket itself (`app.transport.socket_body`):
        true when gunicorn speaks HTTP on it (not uwsgi). Then freeze
        what the app (MetaGPT included) leaves in memory: hundreds of thousands of long-lived objects,
        which a full collection would walk while every stream of the worker waits (seen in the
        benchmark as simultaneous gaps)."""
        super().load_wsgi()
        gc.freeze()
        if isinstance(self.wsgi, Flask) and "gateway" in self.wsgi.extensions:
            from app.services import services

            app_services = services(self.wsgi)
            app_services.metrics.count_cpu()
            if app_services.retention is not None:  # the folder's: one worker of the server sweeps it
                app_services.retention.start()
            self.header_timeout = app_services.settings.header_timeout_seconds
        if getattr(self.cfg, "protocol", "http") != "http" or not hasattr(self.wsgi, "wsgi_app"):
            return
        from app.transport.socket_body import SOCKET_BODY_KEY  # imported with the app already

        app = self.wsgi.wsgi_app  # Flask's middleware slot: `self.wsgi` stays the Flask app

        def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
            environ[SOCKET_BODY_KEY] = True
            return app(environ, start_response)

        self.wsgi.wsgi_app = wsgi_app

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        me = gevent.getcurrent()
        key = listener.fileno()
        self._clients[me] = client
        self._listener_of[me] = key
        self._fresh.add(me)
        self._open[key] += 1
        if self._open[key] >= self.worker_connections:  # the pool is full: gevent stops accepting
            self._make_room(key)
        try:
            super().handle(listener, client, addr)
        finally:
            del self._clients[me]
            del self._listener_of[me]
            self._fresh.discard(me)
            self._open[key] -= 1

    def _make_room(self, key: int) -> None:
        """Close the connection of `key`'s listener that has waited longest for a request."""
        for handler in list(self._idle):
            if self._listener_of.get(handler) == key and self._close_if_idle(handler):
                return

    @contextlib.contextmanager
    def timeout_ctx(self) -> Iterator[None]:
        """gunicorn waits for each request of a keep-alive connection inside this (at most `keepalive`).
        Once the worker is stopping, a connection back here after a response begun before is closed."""
        me = gevent.getcurrent()
        if not self.alive:
            self._close_if_idle(me)
        self._idle[me] = None
        wait = self.header_timeout if me in self._fresh else self.cfg.keepalive
        try:
            with gevent.Timeout(wait, False):
                yield
        finally:
            self._idle.pop(me, None)
            self._fresh.discard(me)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: the app drains (readiness turns false; streams still running at the graceful
        timeout less `DRAIN_MARGIN` end with an error event), and the worker stops accepting and
        closes its idle connections at the same moment. A request that still reaches the app was on
        its way before: it is served, not refused (a reload then loses none)."""
        self._drain_app()
        super().handle_exit(sig, frame)  # alive = False: responses from now on close their connection
        gevent.spawn(self.close_idle_connections)

    def _drain_app(self) -> None:
        if not isinstance(self.wsgi, Flask) or "gateway" not in self.wsgi.extensions:
            return  # another WSGI app (gunicorn's own tests of this worker)
        from app.services import services

        deadline = max(self.cfg.graceful_timeout - DRAIN_MARGIN, 1)
        services(self.wsgi).lifecycle.drain(deadline, refuse_new=False)

    def close_idle_connections(self) -> None:
        """Stop accepting, and close each connection waiting for a request of which nothing has arrived.
        A request already arriving is served (and its connection then closed)."""
        for server in list(_Listener.instances):
            server.stop_accepting()
        for handler in list(self._idle):
            self._close_if_idle(handler)

    def _close_if_idle(self, handler: gevent.Greenlet) -> bool:
        client = self._clients.get(handler)
        if client is None or _unread_bytes(client) != 0:
            return False
        self._idle.pop(handler, None)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)  # the handler reads EOF and ends quietly
        return True
