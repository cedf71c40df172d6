"""Real nginx (the rendered template) in front of real gunicorn: streaming, downloads, limits, errors."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.conftest import NGINX_STREAMS
from tests.integration.helpers import body, split_link, stream_raw
from tests.procs import nginx_binary

pytestmark = pytest.mark.integration


def assert_json_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code


def test_rendered_config_passes_nginx_t(proxied):
    result = subprocess.run(
        [
            nginx_binary(),
            "-t",
            "-p",
            str(proxied.prefix),
            "-c",
            str(proxied.prefix / "nginx.conf"),
            "-e",
            str(proxied.prefix / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_stream_is_unbuffered(proxied):
    """At 20 tokens/s the events must arrive spread over the generation, not together at the end."""
    arrivals: list[float] = []
    start = time.monotonic()
    payload = body("Unbuffered streaming [[pace:20]][[sections:1]]", stream=True)
    with httpx.stream("POST", f"{proxied.url}/v1/chat/completions", json=payload, timeout=60) as r:
        assert r.status_code == 200
        assert "x-accel-buffering" not in r.headers  # nginx consumes it
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - start)
    total = arrivals[-1]
    assert total > 4, f"generation too short to judge ({total:.1f} s)"
    assert arrivals[1] < 1.5  # first token long before the end
    early = sum(1 for t in arrivals if t < total / 2)
    assert early >= len(arrivals) * 0.3, f"only {early}/{len(arrivals)} events in the first half"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) < 2.0


def test_link_downloads_same_bytes_served_by_nginx(proxied):
    # A client's own X-Forwarded-Port / -Prefix never reach the app (nginx is the one trusted hop).
    spoofed = {"X-Forwarded-Port": "1", "X-Forwarded-Prefix": "/elsewhere"}
    s = stream_raw(proxied.url, body("Downloads through nginx", stream=True), headers=spoofed)
    assert s.status == 200 and s.events[-1] == b"data: [DONE]\n\n"
    tutorial, _ = split_link(s.text())
    info = s.chunks()[-1]["tutorial"]
    assert info["url"] == f"{proxied.url}/download/{info['name']}"  # absolute, from forwarded headers
    app_log_before = proxied.app.log.read_text()
    r = httpx.get(info["url"], timeout=10)
    assert r.status_code == 200 and r.content == tutorial.encode()
    assert r.headers["content-type"] == "text/markdown; charset=utf-8"
    assert r.headers["content-disposition"] == "attachment"  # nginx's header; the app's names the file
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["server"] == "nginx"  # server_tokens off: no version
    time.sleep(0.2)
    assert "/download/" not in proxied.app.log.read_text()[len(app_log_before) :]  # gunicorn never saw it
    assert f"GET /download/{info['name']}" in (proxied.prefix / "access.log").read_text()


def test_what_nginx_refuses_of_a_download_is_a_json_error(proxied):
    s = stream_raw(proxied.url, body("Refused downloads [[pace:0]][[sections:1]]", stream=True))
    url = s.chunks()[-1]["tutorial"]["url"]
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        assert_json_error(httpx.request(method, url, timeout=10), 405, "method_not_allowed")
    assert_json_error(
        httpx.get(url, headers={"Range": "bytes=999999-"}, timeout=10), 416, "range_not_satisfiable"
    )
    assert_json_error(httpx.get(url, headers={"If-Match": '"nope"'}, timeout=10), 412, "precondition_failed")
    assert httpx.get(url, headers={"Range": "bytes=0-9"}, timeout=10).status_code == 206  # ranges still work


ATTACKS = [
    "/download/../secret.txt",
    "/download/..%2fsecret.txt",
    "/download/%2e%2e/secret.txt",
    "/download/%2e%2e%2fsecret.txt",
    "/download/%252e%252e%252fsecret.txt",
    "/download/..%5csecret.txt",
    "/download/..\\secret.txt",
    "/download/%00secret.txt",
    "/download/secret.txt%00.md",
    "/download//etc/passwd",
    "/download/%2fetc%2fpasswd",
    "/download/../../../../etc/passwd",
    "/download/.",
    "/download/",
    "/download/.hidden-tmp",
    "/download../secret.txt",
    "/download/link-" + "a" * 32 + ".md",
    "/download/dir-" + "b" * 32 + ".md",
    "/download/dir-" + "b" * 32 + ".md/inner.md",
    "/download/%2e%2e%2f%2e%2e%2fsecret-" + "c" * 32 + ".md",
    "/secret.txt",
]


def test_traversal_and_encoding_attacks_never_leave_the_folder(proxied):
    folder = proxied.app.tutorials
    secret = folder.parent / "secret.txt"
    secret.write_text("TOP SECRET")
    (folder.parent / ("secret-" + "c" * 32 + ".md")).write_text("TOP SECRET")
    link = folder / ("link-" + "a" * 32 + ".md")
    if not link.exists():
        link.symlink_to(secret)
    inner = folder / ("dir-" + "b" * 32 + ".md")
    inner.mkdir(exist_ok=True)
    (inner / "inner.md").write_text("TOP SECRET")
    with httpx.Client(base_url=proxied.url, timeout=10) as client:
        for path in ATTACKS:
            # send the path exactly as written, without client-side normalisation
            request = client.build_request("GET", proxied.url)
            request.url = request.url.copy_with(raw_path=path.encode())
            r = client.send(request)
            assert r.status_code in (400, 404), (path, r.status_code)
            assert b"TOP SECRET" not in r.content, path
            assert r.headers["content-type"].startswith("application/json"), path


def test_metrics_not_public_health_is(proxied):
    assert_json_error(httpx.get(f"{proxied.url}/metrics", timeout=5), 404, "not_found")
    assert httpx.get(f"{proxied.url}/healthz", timeout=5).json() == {"status": "ok"}
    assert httpx.get(f"{proxied.url}/readyz", timeout=5).status_code == 200
    r = httpx.get(f"{proxied.url}/v1/models", timeout=5)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "write_tutorial"
    for header in ("x-content-type-options", "x-frame-options", "referrer-policy"):
        assert header in r.headers


def test_stub_status_on_internal_port(proxied):
    r = httpx.get(f"{proxied.status_url}/stub_status", timeout=5)
    assert r.status_code == 200 and "Active connections:" in r.text


def test_body_too_large_is_json_413(proxied):
    r = httpx.post(
        f"{proxied.url}/v1/chat/completions",
        content=b"x" * (2 << 20),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert_json_error(r, 413, "request_too_large")


def test_too_many_streams_is_json_429(proxied):
    opened = threading.Barrier(NGINX_STREAMS + 1, timeout=30)
    release = threading.Event()
    statuses: list[int] = []

    def hold_stream() -> None:
        payload = body("Holding a stream open [[pace:5]]", stream=True)
        with httpx.stream("POST", f"{proxied.url}/v1/chat/completions", json=payload, timeout=60) as r:
            statuses.append(r.status_code)
            chunks = r.iter_raw()  # keep a reference: a collected iterator closes the response
            next(chunks)
            opened.wait()
            release.wait(30)

    threads = [threading.Thread(target=hold_stream) for _ in range(NGINX_STREAMS)]
    for t in threads:
        t.start()
    try:
        opened.wait()
        r = httpx.post(
            f"{proxied.url}/v1/chat/completions", json=body("One too many", stream=True), timeout=10
        )
        assert_json_error(r, 429, "rate_limit_exceeded")
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert r.headers["retry-after"] == "1"
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert statuses == [200] * NGINX_STREAMS


def _raw(url: str, request: bytes) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"GET /v1/" + b"x" * 20000 + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            414,
            "uri_too_long",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 20000 + b"\r\nConnection: close\r\n\r\n",
            400,
            "headers_too_large",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n"
            b"Connection: close\r\n\r\n0\r\n\r\n",
            501,
            "not_implemented",
        ),
        (
            b"GET /v1/models HTTP/9.9\r\nHost: a\r\nConnection: close\r\n\r\n",
            505,
            "http_version_not_supported",
        ),
    ],
)
def test_what_nginx_refuses_while_reading_a_request_is_a_json_error_too(proxied, request_bytes, status, code):
    head, _, body = _raw(proxied.url, request_bytes).partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), head
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
