"""A client connected straight to gunicorn's TCP port that never reads (issue 19) holds its generation
slot only until the write time limit, the generation's time limit, or shutdown, whichever comes first.
Before, it held it for ever while `gateway_active_generations` showed 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import gateway_env
from tests.integration.helpers import metric
from tests.procs import free_port, gunicorn_args, server

pytestmark = pytest.mark.integration

# Megabytes of tutorial at once (in 16 KiB chunks): more than the kernel buffers between the
# worker and a client that reads nothing, so the worker's write must wait.
NEVER_READ = "Never read [[sections:3]][[section_chars:3000000]][[chunk_chars:16384]][[pace:0]]"
PROBE = "Probe [[pace:0]]"


@contextmanager
def gateway(llm_url: str, folder: Path, **env: str) -> Iterator[tuple[str, int]]:
    """One worker, one generation at a time, straight on TCP; yields (url, master pid)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {"GATEWAY_MAX_GENERATIONS_PER_WORKER": "1", "GATEWAY_MAX_CONTENT_CHARS": str(64 << 20), **env}
    with server(
        gunicorn_args(port), health_url=f"{url}/readyz", log=folder / "gunicorn.log",
        env=gateway_env(llm_url, folder, **settings),
    ) as proc:  # fmt: skip
        yield url, proc.pid


def never_read(url: str) -> socket.socket:
    """Send a streaming request on a connection whose receive buffer is tiny and is never read."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect((host, int(port)))
    payload = json.dumps(
        {"model": "write_tutorial", "stream": True, "messages": [{"role": "user", "content": NEVER_READ}]}
    ).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def seconds_until_admitted(url: str, limit: float) -> float:
    """Probe until a new generation is admitted (the slot is free); seconds it took."""
    start = time.monotonic()
    probe = {"model": "write_tutorial", "stream": True, "messages": [{"role": "user", "content": PROBE}]}
    while time.monotonic() - start < limit:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=probe, timeout=30) as r:
            if r.status_code == 200:
                return time.monotonic() - start
            assert r.status_code == 429
        time.sleep(0.25)
    raise AssertionError(f"the slot was still held after {limit} s")


def test_a_client_that_never_reads_is_let_go_after_the_write_time_limit(llm_server, tmp_path):
    with gateway(llm_server, tmp_path, GATEWAY_SEND_TIMEOUT_SECONDS="3") as (url, _):
        sock = never_read(url)
        try:
            took = seconds_until_admitted(url, 20)
        finally:
            sock.close()
        assert took < 15
        assert metric(url, "gateway_client_disconnects_total", model="write_tutorial") >= 1


def test_the_generation_time_limit_wakes_a_blocked_writer(llm_server, tmp_path):
    env = {"GATEWAY_SEND_TIMEOUT_SECONDS": "1000", "GATEWAY_MAX_GENERATION_SECONDS": "6"}
    with gateway(llm_server, tmp_path, **env) as (url, _):
        start = time.monotonic()
        sock = never_read(url)
        try:
            seconds_until_admitted(url, 30)
        finally:
            sock.close()
        assert time.monotonic() - start < 6 + 5 + 5  # the limit, its grace for the error event, slack


def test_shutdown_wakes_a_blocked_writer(llm_server, tmp_path):
    # Draining ends streams 5 s before the graceful timeout (DRAIN_MARGIN): here at 3 s.
    env = {"GATEWAY_SEND_TIMEOUT_SECONDS": "1000", "GATEWAY_GRACEFUL_TIMEOUT": "8"}
    with gateway(llm_server, tmp_path, **env) as (url, master):
        sock = never_read(url)
        try:
            time.sleep(2)  # the worker is now waiting for the client
            start = time.monotonic()
            os.kill(master, signal.SIGTERM)
            while _alive(master):
                assert time.monotonic() - start < 7, "the worker waited for the client until killed"
                time.sleep(0.1)
        finally:
            sock.close()
    log = (tmp_path / "gunicorn.log").read_text()
    assert "draining: 1 generations running" in log and "SIGKILL" not in log


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by the test's Popen) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"
