"""The gateway's gunicorn worker: gunicorn's gevent worker, with its error pages in the API's error format,
the socket-body flag for streams, a stop that drains the app and closes idle keep-alive connections at
once, the open-files limit its connections need, and the app's long-lived objects frozen out of the
garbage collector.

gunicorn's gevent worker, told to stop (SIGTERM: `docker stop`, a reload's old workers), stops accepting
within a second, then waits for every connection it holds, including those idle between two requests:
nginx keeps up to 32 of them open per worker for 60 s, so a stop took ~60 s with nothing running, and
requests nginx sent on them meanwhile got `server_shutting_down` (issue 16). Here a stopping worker
stops accepting at once and closes every connection that is waiting for its next request with nothing
received; nginx sees the close and drops the connection from its cache.
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import fcntl
import gc
import json
import logging
import resource
import signal
import socket
import struct
import sys
import termios
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

import gevent
from flask import Flask
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.arbiter import Arbiter
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


# Descriptors a worker holds besides its client and upstream connections: listening sockets, logs,
# the heartbeat and metrics files, epolls, pipes, the files being written.
DESCRIPTOR_MARGIN = 256


def descriptors_needed(connections: int, listeners: int, generations: int) -> int:
    """The open files a worker may need: `connections` for each listener (gunicorn's pool per listener),
    an upstream connection for each generation the server admits (any worker may get them all; its
    pool of idle ones never holds more than were in use at once), and `DESCRIPTOR_MARGIN`."""
    return connections * listeners + generations + DESCRIPTOR_MARGIN


def raise_descriptor_limit(needed: int) -> tuple[int, int]:
    """This process's soft RLIMIT_NOFILE raised to `needed` if below it (never lowered): (before, after).
    ValueError when the hard limit is lower: only CAP_SYS_RESOURCE could raise that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft, soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(f"the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return soft, needed


def _native_logging_locks() -> None:
    """Give logging back locks of the OS thread's, once the worker has stopped serving.

    gevent's patching gives logging's module lock and its handlers' locks gevent's thread identity,
    whose module is cleared early when the interpreter exits; a handler only a module still holds
    (Flask's `default_handler`) is freed later, and its weakref callback (`_removeHandlerRef`) took the
    lock: `Exception ignored ... TypeError: 'NoneType' object is not callable` at every worker's exit.
    """
    logging._lock = _thread.RLock()  # type: ignore[attr-defined]
    for ref in list(logging._handlerList):  # type: ignore[attr-defined]
        handler = ref()
        if handler is not None and handler.lock is not None:
            handler.lock = _thread.RLock()


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
        # NOTE: until gunicorn installs the worker's signal handlers (after gevent's patching, which
        # takes a while), the forked worker runs the master's, which queue a SIGTERM for a master loop
        # that is not running here: a stop right after a start went unseen, and the master killed the
        # worker at its graceful timeout. Until then a stop ends the worker as soon as it has started.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self._stop_before_serving)
        util.write_error = _write_json_error  # gunicorn builds status and message; only the body changes
        self._clients: dict[gevent.Greenlet, socket.socket] = {}  # each handler's connection
        # Handlers waiting for their connection's next request, longest waiting first (dict order).
        self._idle: dict[gevent.Greenlet, None] = {}
        self._fresh: set[gevent.Greenlet] = set()  # handlers whose connection has sent no request yet
        self._listener_of: dict[gevent.Greenlet, int] = {}  # each handler's listening socket (fd)
        self._open: collections.Counter[int] = collections.Counter()  # handlers per listening socket
        try:
            super().init_process()  # serves until the worker stops
        finally:
            _native_logging_locks()

    def _stop_before_serving(self, sig: int, frame: Any) -> None:
        self.alive = False

    def load_wsgi(self) -> None:
        """Raise the open-files limit to what the settings need (or refuse to start), start the files'
        retention (one worker of the server leads it), and tell the app it may
        write a streaming body's later events to the socket itself (`app.transport.socket_body`):
        true when gunicorn speaks HTTP on it (not uwsgi). Then freeze
        what the app (MetaGPT included) leaves in memory: hundreds of thousands of long-lived objects,
        which a full collection would walk while every stream of the worker waits (seen in the
        benchmark as simultaneous gaps)."""
        super().load_wsgi()
        gc.freeze()
        if not isinstance(self.wsgi, Flask) or "gateway" not in self.wsgi.extensions:
            self._fit_descriptor_limit(0)  # another WSGI app (gunicorn's own tests of this worker)
        else:
            from app.services import services

            app_services = services(self.wsgi)
            self._fit_descriptor_limit(self.cfg.workers * app_services.settings.max_generations_per_worker)
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

    def _fit_descriptor_limit(self, generations: int) -> None:
        """Raise the open-files limit to what the settings need, or refuse to start (gunicorn's "worker
        failed to boot": the master stops). Running short fails later and elsewhere: once a client's
        idle connections take the descriptors, accept() and the upstream connections of other clients'
        generations fail with EMFILE."""
        listeners = len(self.sockets)
        needed = descriptors_needed(self.worker_connections, listeners, generations)
        try:
            before, after = raise_descriptor_limit(needed)
        except (ValueError, OSError) as exc:
            self.log.error(
                "open files: a worker needs %d = GATEWAY_WORKER_CONNECTIONS %d x %d listeners + %d upstream "
                "connections (GATEWAY_WORKERS x GATEWAY_MAX_GENERATIONS_PER_WORKER) + %d; RLIMIT_NOFILE "
                "cannot be raised to it (%s): raise the hard limit (ulimit -Hn; compose `ulimits: nofile`; "
                "systemd LimitNOFILE) or lower GATEWAY_WORKER_CONNECTIONS. Not starting.",
                needed,
                self.worker_connections,
                listeners,
                generations,
                DESCRIPTOR_MARGIN,
                exc,
            )
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if after != before:
            self.log.info("open files: RLIMIT_NOFILE raised from %d to %d", before, after)

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
        # NOTE: a SIGTERM can arrive while the app is still being imported (a stop right after a start):
        # then there is no `wsgi` yet, and an AttributeError raised here would surface in the import as
        # "Exception in worker process" and halt the master with "Worker failed to boot".
        app = getattr(self, "wsgi", None)
        if not isinstance(app, Flask) or "gateway" not in app.extensions:
            return  # not loaded yet, or another WSGI app (gunicorn's own tests of this worker)
        from app.services import services

        deadline = max(self.cfg.graceful_timeout - DRAIN_MARGIN, 1)
        services(app).lifecycle.drain(deadline, refuse_new=False)

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
        # NOTE: the stdlib socket's shutdown, not gevent's: gevent's first throws `cancel_wait_ex`
        # (EBADF, "closed in another greenlet") into the reader, which gunicorn logs as "Socket error
        # processing request" with its traceback. The kernel's EOF wakes the handler, which ends quietly.
        with contextlib.suppress(OSError):
            getattr(client, "_sock", client).shutdown(socket.SHUT_RDWR)
        return True
