"""nginx in front of several servers (replicas, hosts), as scripts/nginx_local.py renders it for a list of
upstreams: which failed requests it sends to another server. A completion is not idempotent, so only what
no server has begun is retried: a refused connection, or a connection closed before any answer within
the first 5 s (a stopping worker's backlog and idle keep-alive connections). A 503 is the client's, and
the replica that gave it stays in use: a retried 503 would mark it failed (the fleet limit's `refuse`
answer, which every replica gives alike, would take them all out). The servers are small HTTP stubs."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from scripts.nginx_local import prepare
from tests.procs import free_port, nginx_args, server

pytestmark = pytest.mark.integration

LATE_SECONDS = 5.5  # past nginx's proxy_next_upstream_timeout (5 s)


class Stub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StubServer

    def do_GET(self) -> None:  # nginx's health check goes through to here
        self._answer(200, {"status": "ok"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.posts += 1
        mode = self.server.mode
        if mode == "reset":  # read the request, then close without a byte
            self.close_connection = True
            self.connection.close()
        elif mode == "503":
            self._answer(503, {"error": {"code": "server_shutting_down"}})
        elif mode == "latereset":  # as a worker that died after working on the request for a while
            time.sleep(LATE_SECONDS)
            self.close_connection = True
            self.connection.close()
        else:
            self._answer(200, {"server": self.server.server_address[1]})

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


class StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), Stub)
        self.mode = mode
        self.posts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@contextmanager
def nginx_in_front_of(modes: list[str], folder: Path) -> Iterator[tuple[str, list[StubServer], Path]]:
    """nginx before one stub per mode ("refused" is an address where nothing listens)."""
    stubs = [StubServer(mode) for mode in modes if mode != "refused"]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in stubs]
    for thread in threads:
        thread.start()
    by_mode = iter(stubs)
    upstreams = [f"127.0.0.1:{free_port()}" if m == "refused" else next(by_mode).address for m in modes]
    port = free_port()
    conf = prepare(
        folder,
        listen=f"127.0.0.1:{port}",
        status_listen=f"127.0.0.1:{free_port()}",
        upstream=upstreams,
        tutorials_dir=folder / "tutorials",
        limits={"NGINX_RATE_PER_CLIENT": "1000", "NGINX_RATE_BURST": "1000"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with server(nginx_args(folder, conf), health_url=f"{url}/healthz", log=folder / "stdout.log"):
            yield url, stubs, folder / "error.log"
    finally:
        for stub in stubs:
            stub.shutdown()
            stub.server_close()


def post(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": []}, timeout=30)


def test_one_upstream_renders_as_before(tmp_path: Path) -> None:
    conf = prepare(
        tmp_path,
        listen="127.0.0.1:1",
        status_listen="127.0.0.1:2",
        upstream="unix:/run/gw.sock",
        tutorials_dir=tmp_path,
    )
    text = (conf.parent / "conf.d" / "gateway.conf").read_text()
    upstream = text.split("upstream gateway_app {", 1)[1].split("\n}", 1)[0]
    servers = [line.strip() for line in upstream.splitlines() if line.strip().startswith("server ")]
    assert servers == ["server unix:/run/gw.sock;"]


@pytest.mark.parametrize("failing", ["refused", "reset"])
def test_what_no_server_began_is_retried_on_another(failing: str, tmp_path: Path) -> None:
    with nginx_in_front_of([failing, "ok"], tmp_path) as (url, stubs, error_log):
        statuses = Counter(post(url).status_code for _ in range(4))
    assert statuses == {200: 4}
    ok = stubs[-1]
    assert ok.posts == 4
    if failing == "refused":
        assert "Connection refused" in error_log.read_text()
    else:
        assert stubs[0].posts >= 1  # it was tried, and the request went on to the other


def test_a_503_is_the_clients_and_its_replica_stays_in_use(tmp_path: Path) -> None:
    with nginx_in_front_of(["503", "ok"], tmp_path) as (url, stubs, _):
        answers = [post(url) for _ in range(6)]
    refusing, ok = stubs
    statuses = Counter(answer.status_code for answer in answers)
    assert refusing.posts >= 2, "the replica that answered 503 was taken out"
    assert statuses == {503: refusing.posts, 200: ok.posts}  # each request went to one server only
    assert all(a.json()["error"]["code"] == "server_shutting_down" for a in answers if a.status_code == 503)


def test_a_connection_lost_after_work_began_is_not_retried(tmp_path: Path) -> None:
    with nginx_in_front_of(["latereset", "ok"], tmp_path) as (url, stubs, _):
        late, ok = stubs
        answers = []
        for _ in range(3):
            started = time.monotonic()
            answers.append((post(url), time.monotonic() - started))
            if late.posts:
                break
    assert late.posts == 1, "least_conn never chose the late server"
    response, seconds = answers[-1]
    assert response.status_code in (502, 503) and seconds >= LATE_SECONDS
    assert ok.posts == len(answers) - 1  # the request whose server died late went nowhere else
