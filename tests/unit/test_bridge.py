"""`off_loop`: a blocking call awaited on the bridge's loop runs on a native thread, and the worker's
hub (every stream, the loop itself) keeps going meanwhile."""

from __future__ import annotations

import threading
import time

import gevent
import pytest

from app.runtime.bridge import AsyncioBridge, off_loop

_block = time.sleep  # unpatched in the unit tests: it blocks the OS thread that calls it


def _wait(future, timeout: float = 10):
    """Wait cooperatively: blocking on the future would stop the hub the loop runs on."""
    deadline = time.monotonic() + timeout
    while not future.done():
        assert time.monotonic() < deadline, "the job did not finish"
        gevent.sleep(0.005)
    return future


def _blocking(seconds: float) -> int:
    _block(seconds)
    return threading.get_ident()


def test_blocking_call_runs_off_the_hub_and_returns_its_value():
    bridge = AsyncioBridge()
    ticks = 0

    def ticker() -> None:
        nonlocal ticks
        while True:
            gevent.sleep(0.01)
            ticks += 1

    async def job() -> int:
        return await off_loop(_blocking, 0.3)

    t = gevent.spawn(ticker)
    try:
        future = _wait(bridge.submit(job()))
    finally:
        t.kill()
        bridge.stop()
    assert future.result() != threading.get_ident()  # another OS thread
    assert ticks >= 15  # ~30 ticks of 10 ms while the call blocked its thread for 0.3 s


def test_exceptions_reach_the_awaiting_coroutine():
    bridge = AsyncioBridge()

    def fail() -> None:
        raise ValueError("disk full")

    async def job() -> None:
        await off_loop(fail)

    try:
        future = _wait(bridge.submit(job()))
    finally:
        bridge.stop()
    with pytest.raises(ValueError, match="disk full"):
        future.result()
