"""Overload, upstream faults, hostile input, API keys, disconnect storms, SIGTERM and a soak run."""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import psutil
import pytest

from tests.integration.conftest import Proxied, Stack, gateway_behind_nginx, gateway_env
from tests.integration.helpers import body, metric, settle, split_link, stream_raw
from tests.procs import free_port, gunicorn_args, server

pytestmark = pytest.mark.integration
KEYS = ("key-one-7f3a", "key-two-91bc")
LIMIT = 3


@dataclass
class Guarded:
    app: Stack
    nginx: Proxied

    def auth(self, key: str = KEYS[0]) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def guarded(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """One worker with API keys, a limit of 3 generations, no upstream retries and a 2 s read timeout."""
    folder = tmp_path_factory.mktemp("guarded")
    env = {
        "GATEWAY_API_KEYS": ",".join(KEYS),
        "GATEWAY_MAX_GENERATIONS_PER_WORKER": str(LIMIT),
        "GATEWAY_LLM_MAX_RETRIES": "0",
        "GATEWAY_LLM_TIMEOUT_SECONDS": "2",
    }
    with gateway_behind_nginx(llm_server, folder, env) as proxied:
        yield Guarded(app=proxied.app, nginx=proxied)


# --- API keys ---------------------------------------------------------------------------------------


def test_keys_guard_every_endpoint_including_downloads_through_nginx(guarded):
    base, app = guarded.nginx.url, guarded.app.url
    s = stream_raw(base, body("Keyed download", stream=True), headers=guarded.auth())
    assert s.status == 200
    info = s.chunks()[-1]["tutorial"]
    tutorial, _ = split_link(s.text())
    download = f"/download/{info['name']}"
    requests = [
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/write_tutorial", None),
        ("POST", "/v1/chat/completions", body("Keyed")),
        ("GET", download, None),
    ]
    for root in (base, app):
        for method, path, payload in requests:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": KEYS[0]},
                {"Authorization": f"Basic {KEYS[0]}"},
            ):
                r = httpx.request(method, root + path, json=payload, headers=headers, timeout=30)
                assert r.status_code == 401, (root, path, headers, r.status_code)
                assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"]
                assert r.headers["www-authenticate"].startswith("Bearer")
        for key in KEYS:
            r = httpx.get(root + download, headers=guarded.auth(key), timeout=10)
            assert r.status_code == 200 and r.content == tutorial.encode()
            assert httpx.get(root + "/v1/models", headers=guarded.auth(key), timeout=10).status_code == 200
        for open_path in ("/healthz", "/readyz", "/openapi.json"):
            assert httpx.get(root + open_path, timeout=10).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
    models = openai.OpenAI(base_url=f"{base}/v1", api_key=KEYS[1], max_retries=0).models.list()
    assert [m.id for m in models] == ["write_tutorial", "write_teaching_plan"]


# --- admission control ------------------------------------------------------------------------------


def test_overload_gets_429_at_once_and_admitted_streams_complete(guarded):
    results: list[RawResult] = []
    holding = threading.Barrier(LIMIT + 1, timeout=30)

    def admitted(n: int) -> None:
        payload = body(f"Admitted {n} [[fault:stall]][[after:2]][[stall:1.5]]", stream=True)
        with httpx.stream(
            "POST",
            f"{guarded.nginx.url}/v1/chat/completions",
            json=payload,
            headers=guarded.auth(),
            timeout=60,
        ) as r:
            chunks = r.iter_raw()
            first = next(chunks)
            holding.wait()
            results.append(RawResult(r.status_code, first + b"".join(chunks)))

    threads = [threading.Thread(target=admitted, args=(n,)) for n in range(LIMIT)]
    for t in threads:
        t.start()
    holding.wait()
    rejected_before = metric(guarded.app.url, "gateway_rejected_requests_total")
    for n in range(5):
        start = time.monotonic()
        r = httpx.post(
            f"{guarded.nginx.url}/v1/chat/completions",
            headers=guarded.auth(),
            timeout=10,
            json=body(f"Excess {n}", stream=True),
        )
        assert time.monotonic() - start < 1.0
        assert r.status_code == 429 and r.headers["retry-after"]
        assert r.json()["error"]["type"] == "rate_limit_error"
    assert metric(guarded.app.url, "gateway_rejected_requests_total") - rejected_before == 5
    for t in threads:
        t.join(60)
    assert [r.status for r in results] == [200] * LIMIT
    for r in results:
        assert r.raw.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"stop"' in r.raw


@dataclass
class RawResult:
    status: int
    raw: bytes


# --- upstream faults --------------------------------------------------------------------------------

FAULTS = [
    # directive, HTTP status, error code, whether the error arrives as an event after a 200
    ("[[fault:http500]]", 502, "upstream_status", False),
    ("[[fault:http429]]", 502, "upstream_status", False),
    ("[[fault:close]]", 502, "upstream_unavailable", False),
    ("[[fault:stall]][[after:2]][[stall:8]]", 200, "upstream_timeout", True),
    ("[[fault:cut]][[fault_at:section]][[after:3]]", 200, "upstream_unavailable", True),
    ("[[fault:bad_outline]]", 200, "upstream_bad_output", True),
    ("[[fault:empty_outline]]", 200, "upstream_bad_output", True),
    ("[[fault:stall]][[fault_at:section]][[after:3]][[stall:8]]", 200, "upstream_timeout", True),
]


@pytest.mark.parametrize(("directive", "status", "code", "as_event"), FAULTS)
def test_upstream_fault(guarded, directive, status, code, as_event):
    app = guarded.app.url
    files_before = set(os.listdir(guarded.app.tutorials))
    failed_before = metric(app, "gateway_llm_requests_total", outcome="failed")
    outcome_before = metric(app, "gateway_generation_duration_seconds_count", outcome="failed")
    s = stream_raw(guarded.nginx.url, body(f"Fault {directive}", stream=True), headers=guarded.auth())
    assert s.status == status
    if as_event:
        assert s.events[-1] == b"data: [DONE]\n\n"
        error = s.data()[-2]["error"]
        assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in s.chunks())
    else:
        error = json.loads(s.raw)["error"]
        assert s.headers["x-should-retry"] == "false"
    assert error["code"] == code and error["type"] == "upstream_error" and error["message"]
    assert settle(app, "gateway_active_generations", 0) == 0
    assert settle(app, "gateway_asyncio_tasks", 0) == 0
    assert metric(app, "gateway_generation_duration_seconds_count", outcome="failed") - outcome_before == 1
    if code != "upstream_bad_output":
        assert metric(app, "gateway_llm_requests_total", outcome="failed") - failed_before == 1
    assert set(os.listdir(guarded.app.tutorials)) == files_before  # nothing half-written or published


def test_upstream_connection_refused(llm_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("refused")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = gateway_env(llm_server, folder, GATEWAY_LLM_MAX_RETRIES="0")
    env["GATEWAY_LLM_BASE_URL"] = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with server(gunicorn_args(port), health_url=f"{url}/readyz", log=folder / "gunicorn.log", env=env):
        for stream in (True, False):
            r = httpx.post(f"{url}/v1/chat/completions", json=body("Refused", stream=stream), timeout=30)
            assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
            assert r.headers["x-should-retry"] == "false"
        assert settle(url, "gateway_active_generations", 0) == 0
        assert metric(url, "gateway_llm_requests_total", outcome="failed") == 2
        assert os.listdir(folder / "tutorials") == []


def test_generation_time_limit(llm_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("time-limit")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = gateway_env(llm_server, folder, GATEWAY_MAX_GENERATION_SECONDS="2")
    with server(gunicorn_args(port), health_url=f"{url}/readyz", log=folder / "gunicorn.log", env=env):
        s = stream_raw(url, body("Too slow [[pace:20]]", stream=True))
        assert s.status == 200 and s.events[-1] == b"data: [DONE]\n\n"
        assert s.data()[-2]["error"]["code"] == "generation_timeout"
        r = httpx.post(f"{url}/v1/chat/completions", json=body("Too slow whole [[pace:20]]"), timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "generation_timeout"
        assert r.headers["x-should-retry"] == "false"
        assert settle(url, "gateway_active_generations", 0) == 0
        assert os.listdir(folder / "tutorials") == []
    logged = (folder / "gunicorn.log").read_text()
    line = "The generation took longer than 2 s and was stopped. (generation_timeout, HTTP 504)"
    assert logged.count(f"agent write_tutorial failed: {line}") == 2


# --- hostile input ----------------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"model":"write_tutorial","messages":' + b"[" * depth + b"]" * depth + b"}"


HOSTILE = [
    (b"{", 400),
    (b"", 400),
    (b"null", 400),
    (b'"a string"', 400),
    (b'{"model": null, "messages": null}', 400),
    (b'{"model": "write_tutorial", "messages": [null]}', 400),
    (b'{"model": "write_tutorial", "messages": {"role": "user"}}', 400),
    (b'{"model": ["write_tutorial"], "messages": [{"role": "user", "content": "x"}]}', 400),
    (b'{"model": "write_tutorial", "messages": [{"role": "user", "content": 42}]}', 400),
    (b'{"model": "write_tutorial", "messages": [{"role": "hacker", "content": "x"}]}', 400),
    (b'{"model": "write_tutorial", "messages": [{"role": "user", "content": [{"type": "video"}]}]}', 400),
    (
        b'{"model": "write_tutorial", "messages": [{"role": "user", '
        b'"content": [{"type": "text", "text": 5}]}]}',
        400,
    ),
    (b'{"model": "write_tutorial", "messages": [{"role": "user", "content": "a\\u0000b"}]}', 400),
    (b'{"model": "write_tutorial", "stream": "true", "messages": [{"role": "user", "content": "x"}]}', 400),
    (
        b'{"model": "write_tutorial", "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}',
        400,
    ),
    (b'{"model": "write_tutorial", "messages": [{"role": "user", "content": "\xff\xfe\xfd"}]}', 400),
    (b"\xff\xfe\x00\x00", 400),
    (_nested(100_000), 400),
    (
        json.dumps(
            {"model": "write_tutorial", "messages": [{"role": "user", "content": "x"}] * 10_000}
        ).encode(),
        400,
    ),
    (
        json.dumps(
            {"model": "write_tutorial", "messages": [{"role": "user", "content": "x" * 200_000}]}
        ).encode(),
        400,
    ),
    (
        json.dumps(
            {"model": "write_tutorial", "messages": [{"role": "user", "content": "t" * 5_000}]}
        ).encode(),
        400,
    ),
    (
        json.dumps(
            {"model": "write_tutorial", "messages": [{"role": "user", "content": "x" * 2_000_000}]}
        ).encode(),
        413,
    ),
]


@pytest.mark.parametrize(("raw", "status"), HOSTILE, ids=[f"hostile{n}" for n in range(len(HOSTILE))])
def test_hostile_bodies(stack, proxied, raw, status):
    for root in (stack.url, proxied.url):
        r = httpx.post(
            f"{root}/v1/chat/completions",
            content=raw,
            timeout=30,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == status, (root, r.text[:300])
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"


# --- disconnects, shutdown, soak -------------------------------------------------------------------


def worker_rss(stack: Stack) -> int:
    return sum(c.memory_info().rss for c in psutil.Process(stack.pid).children())


def test_disconnect_storm(stack):
    n_clients = 100
    for n in range(3):  # warm up the worker before the baseline
        stream_raw(stack.url, body(f"Storm warm-up {n}", stream=True))
    baseline = worker_rss(stack)
    disconnects = metric(stack.url, "gateway_client_disconnects_total")

    def leave(n: int) -> None:
        payload = body(f"Storm{n:03d}x [[pace:10]]", stream=True)
        with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=payload, timeout=60) as r:
            assert r.status_code == 200
            for count, _ in enumerate(r.iter_raw(), 1):
                if count >= 3:
                    break

    with ThreadPoolExecutor(n_clients) as pool:
        list(pool.map(leave, range(n_clients)))
    deadline = time.monotonic() + 15
    topics = {f"Storm{n:03d}x" for n in range(n_clients)}
    while time.monotonic() < deadline:
        entries = [e for e in stack.journal() if e["topic"] in topics]
        if len(entries) >= n_clients and all(e["outcome"] != "running" for e in entries):
            break
        time.sleep(0.2)
    assert {e["topic"] for e in entries} == topics
    assert all(e["outcome"] == "client_closed" for e in entries), [
        e for e in entries if e["outcome"] != "client_closed"
    ]
    assert settle(stack.url, "gateway_active_generations", 0) == 0
    assert settle(stack.url, "gateway_asyncio_tasks", 0) == 0
    assert metric(stack.url, "gateway_client_disconnects_total") - disconnects == n_clients
    growth = worker_rss(stack) - baseline
    assert growth < 30 * 2**20, f"worker RSS grew by {growth / 2**20:.1f} MiB"


def test_sigterm_lets_short_streams_finish_and_ends_long_ones_cleanly(llm_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sigterm")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # graceful timeout 8 s; gunicorn.conf.py's drain margin (5 s) ends late streams at 3 s
    env = gateway_env(llm_server, folder, GATEWAY_GRACEFUL_TIMEOUT="8")
    with server(
        gunicorn_args(port), health_url=f"{url}/readyz", log=folder / "gunicorn.log", env=env
    ) as proc:
        results: dict[str, bytes] = {}
        started = threading.Barrier(3, timeout=30)

        def run(name: str, topic: str) -> None:
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json=body(topic, stream=True), timeout=60
            ) as r:
                chunks = r.iter_raw()
                first = next(chunks)
                started.wait()
                results[name] = first + b"".join(chunks)

        threads = [
            threading.Thread(target=run, args=("short", "Short [[pace:150]][[sections:1]]")),
            threading.Thread(target=run, args=("long", "Long [[fault:stall]][[after:2]][[stall:60]]")),
        ]
        for t in threads:
            t.start()
        started.wait()
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        for t in threads:
            t.join(30)
        proc.wait(20)
        exited = time.monotonic() - sent
    short = results["short"].split(b"\n\n")
    assert results["short"].endswith(b"data: [DONE]\n\n") and b'"finish_reason":"stop"' in results["short"]
    assert results["long"].endswith(b"data: [DONE]\n\n")
    long_error = json.loads(results["long"].split(b"\n\n")[-3][len(b"data: ") :])["error"]
    assert long_error["code"] == "service_unavailable"
    assert len(short) > 10
    assert exited < 8, f"gunicorn took {exited:.1f} s to stop"


@pytest.mark.soak
def test_soak_no_growth(stack):
    """Steady streams for SOAK_SECONDS (20 in CI; run longer by hand); RSS and fds sampled each second."""
    seconds = float(os.environ.get("SOAK_SECONDS", "20"))
    stop = time.monotonic() + seconds
    rss: list[int] = []
    fds: list[int] = []
    workers = psutil.Process(stack.pid).children()

    def client(n: int) -> int:
        done = 0
        while time.monotonic() < stop:
            s = stream_raw(stack.url, body(f"Soak {n} [[sections:1]]", stream=True))
            assert s.status == 200 and s.events[-1] == b"data: [DONE]\n\n"
            done += 1
        return done

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client, n) for n in range(8)]
        while time.monotonic() < stop:
            rss.append(sum(w.memory_info().rss for w in workers))
            fds.append(sum(w.num_fds() for w in workers))
            time.sleep(1)
        completed = sum(f.result() for f in futures)
    assert completed >= 8
    quarter = max(len(rss) // 4, 1)
    first, last = statistics.mean(rss[quarter : 2 * quarter] or rss[:1]), statistics.mean(rss[-quarter:])
    assert last < first * 1.10 + 8 * 2**20, f"RSS grew from {first / 2**20:.0f} to {last / 2**20:.0f} MiB"
    assert max(fds[-quarter:]) <= max(fds[:quarter]) + 20, fds
