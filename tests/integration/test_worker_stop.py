"""A stopping worker closes idle keep-alive connections at once (app.transport.worker): behind nginx,
which keeps idle connections to each worker, an idle gateway stops in seconds, and a reload loses no
request. A stop logs no traceback: not for the idle connections it closes, not for a stream it lets
finish, not at the workers' exit, not while the workers are still starting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import Proxied, Stack, gateway_env, nginx_in_front
from tests.integration.helpers import body
from tests.procs import free_port, gunicorn_args, server, spawn, stop

pytestmark = pytest.mark.integration


@contextmanager
def _behind_nginx(llm_server: str, folder: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Proxied]]:
    """gunicorn (2 workers, its Unix socket) and nginx in front: (gunicorn's master, its port, nginx)."""
    port = free_port()
    sock = folder / "gunicorn.sock"
    args = gunicorn_args(port, workers=2, unix_socket=sock)
    env = gateway_env(llm_server, folder)
    url = f"http://127.0.0.1:{port}"
    with server(args, health_url=f"{url}/readyz", log=folder / "gunicorn.log", env=env) as proc:
        stack = Stack(url=url, llm_url=llm_server, tutorials=folder, log=folder, unix_socket=sock)
        with nginx_in_front(stack, folder / "nginx", streams=20, rate=100, burst=100) as proxied:
            yield proc, port, proxied


def _first_event(url: str, topic: str) -> int:
    """Status of a streamed completion, read up to its first event (then the client leaves)."""
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body(topic, stream=True), timeout=30) as r:
        if r.status_code == 200:
            assert next(r.iter_raw()).startswith(b"data: ")
        return r.status_code


def test_an_idle_gateway_behind_nginx_stops_at_once(llm_server, tmp_path):
    with _behind_nginx(llm_server, tmp_path) as (proc, port, proxied):
        with httpx.Client(base_url=proxied.url, timeout=10) as client:
            for _ in range(20):
                assert client.get("/v1/models").status_code == 200
        # A direct client idle on a keep-alive connection, too.
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while not reply.endswith(b"}\n"):  # the whole answer, {"status":"ok"}
            reply += idle.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
        # nginx now holds idle connections to the workers (gunicorn's keepalive: 75 s, nginx's: 60 s).
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
        stopped = time.monotonic() - sent
        idle.settimeout(5)
        assert idle.recv(4096) == b""  # closed by the worker, not left to time out
        idle.close()
    assert stopped < 5, f"gunicorn took {stopped:.1f} s to stop with nothing running"


def test_a_reload_behind_nginx_loses_no_request(llm_server, tmp_path):
    with _behind_nginx(llm_server, tmp_path) as (proc, _, proxied):
        old = {w.pid for w in psutil.Process(proc.pid).children()}
        # Keep-alive connections to both old workers in nginx's cache.
        assert [_first_event(proxied.url, f"Warm {n} [[sections:1]]") for n in range(10)] == [200] * 10
        os.kill(proc.pid, signal.SIGHUP)
        statuses = [_first_event(proxied.url, f"Reload {n} [[sections:1]]") for n in range(30)]
        deadline = time.monotonic() + 20
        while old & {w.pid for w in psutil.Process(proc.pid).children()} and time.monotonic() < deadline:
            time.sleep(0.1)
        left = old & {w.pid for w in psutil.Process(proc.pid).children()}
    assert statuses == [200] * 30, statuses
    assert not left, "the old workers did not stop"


# What an operator reads as a crash. Each came with every stop: gevent's socket.shutdown throwing into the
# reader of an idle connection being closed ("Socket error processing request" and its traceback); the
# interpreter's exit freeing a logging handler under gevent's lock ("Exception ignored in:
# <function _removeHandlerRef>"); a SIGTERM during a worker's import ("Exception in worker process").
NOISE = ("Traceback", "Exception ignored", "Socket error", "Exception in worker process")


def _kept_alive(port: int) -> socket.socket:
    """A connection that has had one whole answer and now waits for its next request."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = b""
    while not reply.endswith(b"}\n"):  # {"status":"ok"}
        data = sock.recv(4096)
        assert data, reply
        reply += data
    assert reply.startswith(b"HTTP/1.1 200")
    return sock


def test_a_stop_with_a_stream_running_and_idle_connections_logs_no_traceback(llm_server, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    env = gateway_env(llm_server, tmp_path)
    with server(gunicorn_args(port, workers=2), health_url=f"{url}/readyz", log=log, env=env) as proc:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert [client.get("/v1/models").status_code for _ in range(5)] == [200] * 5
        idle = [_kept_alive(port) for _ in range(4)]
        fresh = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]  # nothing sent
        try:
            topic = "Clean stop [[sections:2]][[pace:100]]"
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json=body(topic, stream=True), timeout=60
            ) as r:
                chunks = r.iter_raw()
                raw = next(chunks)  # the role chunk: the generation runs
                os.kill(proc.pid, signal.SIGTERM)
                raw += b"".join(chunks)
            proc.wait(60)
            assert [s.recv(4096) for s in idle + fresh] == [b""] * 6  # each closed by its worker
        finally:
            for s in idle + fresh:
                s.close()
    assert proc.returncode == 0
    assert raw.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"stop"' in raw  # finished, not cut
    text = log.read_text()
    assert text.count("Worker exiting") == 2
    for noise in NOISE:
        assert noise not in text, text[-4000:]


def test_a_stop_while_the_workers_are_starting_logs_no_traceback(llm_server, tmp_path):
    log = tmp_path / "gunicorn.log"
    proc = spawn(gunicorn_args(free_port(), workers=2), log=log, env=gateway_env(llm_server, tmp_path))
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("Booting worker") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # each worker is importing the app (seconds: MetaGPT)
        assert "Worker exiting" not in log.read_text()
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)
        stopped = time.monotonic() - sent
    finally:
        stop(proc)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert stopped < 30, f"{stopped:.0f} s: a worker missed the SIGTERM and waited for its SIGKILL"
    assert text.count("Worker exiting") == 2
    for noise in NOISE:
        assert noise not in text, text[-4000:]
