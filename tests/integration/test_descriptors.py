"""A worker past 1,024 descriptors (app.upstream.client, app.transport.worker): started with a soft
open-files limit of 1,024, the worker raises its own to what its settings need, and while a client holds
1,100 idle keep-alive connections to it, every stream of a batch completes. (The stale-connection check
used select(), which refuses a descriptor past 1,024: such streams failed with `ValueError: filedescriptor
out of range in select()`.) With a hard limit below what the settings need, the worker refuses to start,
saying why."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import psutil
import pytest

from app.transport.worker import DESCRIPTOR_MARGIN
from tests.integration.conftest import gateway_env
from tests.integration.helpers import body, split_link, stream_raw
from tests.procs import ROOT, free_port, gunicorn_args, server, stop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CONNECTIONS = 1400  # GATEWAY_WORKER_CONNECTIONS: one listener holds the idle ones and the streams
GENERATIONS = 200  # one worker x GATEWAY_MAX_GENERATIONS_PER_WORKER's default
NEEDED = CONNECTIONS + GENERATIONS + DESCRIPTOR_MARGIN
IDLE = 1100
STREAMS = 30


def _with_nofile(soft: int, hard: int | None, args: list[str]) -> list[str]:
    """`args` run with these open-files limits (as a service manager or a container would set them)."""
    limits = f"ulimit -Sn {soft}" + (f" && ulimit -Hn {hard}" if hard is not None else "")
    return ["/bin/sh", "-c", f'{limits} && exec "$@"', "sh", *args]


@contextmanager
def _test_may_open(count: int) -> Iterator[None]:
    """This process's own soft limit, raised for the test's sockets when it is low, then restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(count, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _idle_keep_alive(port: int) -> socket.socket:
    """A connection that has had one whole answer (`/healthz`) and now waits, kept alive."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
        reply = b""
        while not reply.endswith(b"}\n"):  # {"status":"ok"}, the whole answer
            data = sock.recv(4096)
            assert data, f"closed after {reply!r}"
            reply += data
        assert reply.startswith(b"HTTP/1.1 200") and b"connection: close" not in reply.lower()
    except BaseException:
        sock.close()
        raise
    return sock


def test_a_worker_past_1024_descriptors_completes_every_stream(llm_server, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = gateway_env(llm_server, tmp_path, GATEWAY_WORKER_CONNECTIONS=str(CONNECTIONS))
    args = _with_nofile(1024, None, gunicorn_args(port, workers=1))
    log = tmp_path / "gunicorn.log"
    with (
        _test_may_open(IDLE + 4 * STREAMS + 256),
        server(args, health_url=f"{url}/readyz", log=log, env=env) as proc,
    ):
        (worker,) = psutil.Process(proc.pid).children()
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        assert worker.rlimit(psutil.RLIMIT_NOFILE) == (NEEDED, hard)  # raised by the worker itself
        assert psutil.Process(proc.pid).rlimit(psutil.RLIMIT_NOFILE)[0] == 1024
        with ExitStack() as held:
            for _ in range(IDLE):
                held.callback(_idle_keep_alive(port).close)
            assert worker.num_fds() > IDLE  # every later connection's descriptor is past 1,024

            topics = [f"Descriptors {n} [[sections:2]]" for n in range(STREAMS)]
            with ThreadPoolExecutor(STREAMS) as pool:
                streams = list(pool.map(lambda t: stream_raw(url, body(t, stream=True), timeout=120), topics))
            upstream = [
                c.fd
                for c in worker.net_connections("tcp")
                if c.raddr and c.raddr.port == int(llm_server.rsplit(":", 1)[1])
            ]
            assert worker.num_fds() > IDLE
        assert max(upstream) > 1024  # the pooled connections the stale check looked at

    for topic, s in zip(topics, streams, strict=True):
        assert s.status == 200, (topic, s.raw[:300])
        data = s.data()
        assert data[-1] == "[DONE]" and not any(isinstance(d, dict) and "error" in d for d in data), topic
        finishes = [c["choices"][0]["finish_reason"] for c in s.chunks() if c["choices"]]
        assert [f for f in finishes if f] == ["stop"], (topic, finishes)
        tutorial, _ = split_link(s.text())
        info = next(c["file"] for c in s.chunks() if "file" in c)
        assert (tmp_path / "tutorials" / info["name"]).read_text() == tutorial, topic
    assert "filedescriptor out of range" not in log.read_text()


def test_a_worker_refuses_to_start_when_its_connections_need_more_descriptors_than_allowed(
    llm_server, tmp_path
):
    port = free_port()
    env = gateway_env(llm_server, tmp_path, GATEWAY_WORKER_CONNECTIONS=str(CONNECTIONS))
    args = _with_nofile(1024, 1500, gunicorn_args(port, workers=1))
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 3, stderr[-3000:]  # gunicorn's "worker failed to boot": no restarts
    assert (
        f"open files: a worker needs {NEEDED} = GATEWAY_WORKER_CONNECTIONS {CONNECTIONS} x 1 listeners + "
        f"{GENERATIONS} upstream connections (GATEWAY_WORKERS x GATEWAY_MAX_GENERATIONS_PER_WORKER) + "
        f"{DESCRIPTOR_MARGIN}; RLIMIT_NOFILE cannot be raised to it (the hard limit is 1500)" in stderr
    ), stderr[-3000:]
    assert "raise the hard limit" in stderr and "Worker failed to boot" in stderr
    for noise in ("Traceback", "Exception ignored"):
        assert noise not in stderr, stderr[-3000:]
