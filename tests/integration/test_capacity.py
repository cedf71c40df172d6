"""Capacity is the server's, not one worker's (issue 19): with W workers and a limit of L each, W x L
streams are admitted whatever worker nginx's connections land on, and a killed worker's streams stop
counting."""

from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack

import httpx
import psutil
import pytest

from tests.integration.conftest import gateway_behind_nginx
from tests.integration.helpers import hold_stream, settle

pytestmark = pytest.mark.integration

WORKERS = 2
PER_WORKER = 3
CAPACITY = WORKERS * PER_WORKER
# A stream that holds its generation: the outline's LLM call stalls after one token.
HELD = "Capacity {n} [[fault:stall]][[fault_at:outline]][[after:1]][[stall:60]]"


def open_stream(client: httpx.Client, url: str, n: int, stack: ExitStack) -> httpx.Response:
    return hold_stream(client, url, HELD.format(n=n), stack)


def fill(client: httpx.Client, url: str, stack: ExitStack, first: int) -> list[httpx.Response]:
    """Open streams one at a time until one is refused; returns the admitted ones."""
    admitted = []
    for n in range(first, first + CAPACITY + 1):
        response = open_stream(client, url, n, stack)
        if response.status_code != 200:
            assert response.status_code == 429, response.read()
            error = response.read()
            assert b'"rate_limit_error"' in error and f"limit of {CAPACITY}".encode() in error, error
            assert response.headers["retry-after"]
            break
        admitted.append(response)
    return admitted


def workers_running(master: int) -> list[psutil.Process]:
    return psutil.Process(master).children()


def settle_workers(master: int, n: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = workers_running(master)
        if len(workers) == n:
            return workers
        time.sleep(0.2)
    raise AssertionError(f"{n} workers expected, got {workers_running(master)}")


def test_whole_capacity_is_admitted_and_a_killed_worker_frees_its_share(llm_server, tmp_path):
    env = {"GATEWAY_MAX_GENERATIONS_PER_WORKER": str(PER_WORKER)}
    with gateway_behind_nginx(llm_server, tmp_path, env, workers=WORKERS) as proxied:
        url = proxied.url
        master = proxied.app.pid
        settle_workers(master, WORKERS)
        with httpx.Client(timeout=30) as client:
            # Warm nginx's keep-alive cache with connections to both workers, as a busy server's is.
            for _ in range(20):
                assert client.get(f"{url}/v1/models").status_code == 200
            with ExitStack() as held:
                admitted = fill(client, url, held, 0)
                assert len(admitted) == CAPACITY
                # More requests, one at a time, on whatever connection nginx picks: all refused while full.
                for n in range(10):
                    assert open_stream(client, url, 100 + n, held).status_code == 429

                # One stream ends: exactly one more is admitted.
                admitted.pop().close()
                deadline = time.monotonic() + 10
                while (response := open_stream(client, url, 200, held)).status_code == 429:
                    assert time.monotonic() < deadline, "a freed slot was not reused"
                    time.sleep(0.2)
                assert response.status_code == 200
                assert open_stream(client, url, 201, held).status_code == 429

                # A worker killed with its streams: the master frees its share, and its replacement
                # joins. Every stream still open (the survivors') is closed next.
                victim = workers_running(master)[0]
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(10)
                settle_workers(master, WORKERS)

            # Nothing held now: the whole capacity is there again (the dead worker's share would be
            # lost without the master's release).
            assert settle(proxied.app.url, "gateway_active_generations", 0) == 0
            time.sleep(0.5)  # the gauge falls when the job ends; the slot, when its response is closed
            with ExitStack() as held:
                assert len(fill(client, url, held, 300)) == CAPACITY
