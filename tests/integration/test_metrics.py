"""Metrics are exact across two gunicorn workers (prometheus-client multiprocess mode)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.integration.conftest import gateway_env
from tests.integration.helpers import body, metric, settle, stream_raw
from tests.procs import free_port, gunicorn_args, server

pytestmark = pytest.mark.integration


class Gateway2:
    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid

    def value(self, name: str, **labels: str) -> float:
        return metric(self.url, name, **labels)

    def workers(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.pid).children()]


@pytest.fixture(scope="module")
def gw2(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway2]:
    data_dir = tmp_path_factory.mktemp("gateway2")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server(
        gunicorn_args(port, workers=2),
        health_url=f"{url}/readyz",
        log=data_dir / "gunicorn.log",
        env=gateway_env(llm_server, data_dir),
    ) as proc:
        deadline = time.monotonic() + 60
        while len(psutil.Process(proc.pid).children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield Gateway2(url, proc.pid)


def wait_gauge(gw: Gateway2, expected: float, timeout: float = 10) -> float:
    return settle(gw.url, "gateway_active_generations", expected, timeout)


def test_streamed_bytes_equal_what_clients_received(gw2):
    before = gw2.value("gateway_streamed_bytes_total", model="write_tutorial")
    requests_before = gw2.value("gateway_requests_total", model="write_tutorial", stream="true", status="200")
    received = 0
    tokens = 0
    for n in range(6):
        s = stream_raw(gw2.url, body(f"Byte count {n}", stream=True, stream_options={"include_usage": True}))
        assert s.status == 200
        received += len(s.raw)
        tokens += sum(
            1
            for c in s.chunks()
            if c["choices"]
            and (c["choices"][0]["delta"].get("content") or c["choices"][0]["delta"].get("reasoning_content"))
        )
    after = gw2.value("gateway_streamed_bytes_total", model="write_tutorial")
    assert after - before == received
    assert (
        gw2.value("gateway_requests_total", model="write_tutorial", stream="true", status="200")
        - requests_before
        == 6
    )
    # every content delta but the gateway's own (title, separators, link) is one upstream token
    assert gw2.value("gateway_streamed_tokens_total", model="write_tutorial") >= tokens - 6 * 6
    assert gw2.value("gateway_tutorials_written_total") >= 6
    assert gw2.value("gateway_llm_requests_total", outcome="completed") >= 6 * 4
    assert gw2.value("gateway_time_to_first_token_seconds_count", model="write_tutorial") >= 6
    assert (
        gw2.value("gateway_generation_duration_seconds_count", model="write_tutorial", outcome="completed")
        >= 6
    )
    assert wait_gauge(gw2, 0) == 0


def test_gauge_rises_during_generations_and_returns_to_zero(gw2):
    assert wait_gauge(gw2, 0) == 0
    release = threading.Event()
    started = threading.Barrier(5, timeout=30)

    def slow_stream(n: int) -> None:
        with httpx.stream(
            "POST",
            f"{gw2.url}/v1/chat/completions",
            timeout=60,
            json=body(f"Gauge {n} [[pace:5]]", stream=True),
        ) as r:
            chunks = r.iter_raw()
            next(chunks)
            started.wait()
            release.wait(30)

    threads = [threading.Thread(target=slow_stream, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    started.wait()
    assert wait_gauge(gw2, 4) == 4
    disconnects = gw2.value("gateway_client_disconnects_total")
    release.set()  # the clients leave mid-stream
    for t in threads:
        t.join(30)
    assert wait_gauge(gw2, 0) == 0
    assert gw2.value("gateway_client_disconnects_total") - disconnects == 4
    assert gw2.value("gateway_generation_duration_seconds_count", outcome="cancelled") >= 4
    assert gw2.value("gateway_llm_requests_total", outcome="cancelled") >= 4

    failed = gw2.value("gateway_generation_duration_seconds_count", outcome="failed")
    s = stream_raw(gw2.url, body("Gauge fails [[fault:cut]][[fault_at:section]][[after:2]]", stream=True))
    assert s.data()[-2]["error"]["code"] == "upstream_unavailable"
    r = httpx.post(
        f"{gw2.url}/v1/chat/completions", json=body("Gauge fails early [[fault:http500]]"), timeout=30
    )
    assert r.status_code == 502
    assert wait_gauge(gw2, 0) == 0
    assert gw2.value("gateway_generation_duration_seconds_count", outcome="failed") - failed == 2
    assert gw2.value("gateway_requests_total", model="write_tutorial", stream="false", status="502") >= 1
    assert gw2.value("gateway_llm_requests_total", outcome="failed") >= 2


def test_killed_worker_drops_its_share_of_the_gauge(gw2):
    assert wait_gauge(gw2, 0) == 0
    results: dict[int, str] = {}
    holding = threading.Barrier(7, timeout=30)

    def slow_stream(n: int) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{gw2.url}/v1/chat/completions",
                timeout=60,
                json=body(f"Killed worker {n} [[fault:stall]][[after:2]][[stall:8]]", stream=True),
            ) as r:
                chunks = r.iter_raw()
                next(chunks)
                holding.wait()
                for _ in chunks:
                    pass
            results[n] = "finished"
        except httpx.HTTPError:
            results[n] = "cut"

    threads = [threading.Thread(target=slow_stream, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    holding.wait()
    assert wait_gauge(gw2, 6) == 6
    workers = gw2.workers()
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while sum(1 for v in results.values() if v == "cut") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    cut = sum(1 for v in results.values() if v == "cut")
    assert 0 < cut < 6, results  # both workers had streams (gunicorn spreads accepts)
    assert wait_gauge(gw2, 6 - cut) == 6 - cut
    # the master replaced the worker, and the survivors' streams are unaffected
    deadline = time.monotonic() + 60
    while len(gw2.workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(gw2.workers()) == 2 and workers[0] not in gw2.workers()
    for t in threads:
        t.join(60)
    assert sum(1 for v in results.values() if v == "finished") == 6 - cut
    assert wait_gauge(gw2, 0) == 0
