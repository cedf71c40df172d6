"""2,100 slow connections to gunicorn's TCP port (issue 19), more than its two workers' 1,000
connections each, do not stop `/healthz`, `/readyz` and `/metrics` answering there (the compose
healthcheck and Prometheus use that port), nor nginx's traffic on the Unix socket."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.integration.conftest import gateway_behind_nginx

pytestmark = pytest.mark.integration

SLOW = 2100


def test_health_and_metrics_answer_under_a_flood_of_slow_connections(llm_server, tmp_path):
    with gateway_behind_nginx(llm_server, tmp_path, {}, workers=2) as proxied:
        host, port = proxied.app.url.removeprefix("http://").split(":")
        slow: list[socket.socket] = []
        try:
            for _ in range(SLOW):
                sock = socket.create_connection((host, int(port)), timeout=5)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: flood\r\n")  # a head never finished
                slow.append(sock)
            time.sleep(1)
            for _ in range(5):  # each within the compose healthcheck's 4 s timeout
                for path in ("/healthz", "/readyz", "/metrics"):
                    started = time.monotonic()
                    r = httpx.get(f"{proxied.app.url}{path}", timeout=4)
                    assert r.status_code == 200, (path, r.status_code)
                    assert time.monotonic() - started < 2, path
                # and the public way in, through nginx
                assert httpx.get(f"{proxied.url}/v1/models", timeout=4).status_code == 200
                time.sleep(0.5)
        finally:
            for sock in slow:
                sock.close()
