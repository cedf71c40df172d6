"""A stopping worker closes idle keep-alive connections at once (app.transport.worker): behind nginx,
which keeps idle connections to each worker, an idle gateway stops in seconds, and a reload loses no
request."""

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
from tests.procs import free_port, gunicorn_args, server

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
