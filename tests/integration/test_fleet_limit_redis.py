"""The fleet's generation limit (app.fleet_limit) against a real Redis: exact slots, a release that frees
one, slots of a worker that stopped renewing them expiring within the TTL, and both modes when Redis
is gone. The same limit across three hosts is tests/fleet's."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import pytest

from app.errors import RateLimited
from app.fleet_limit import KEY, FleetFull, FleetLimit, LimitUnavailable
from app.metrics import Metrics
from tests.fleet.services import Redis

pytestmark = pytest.mark.integration

TTL = 1.5


@pytest.fixture
def redis_server(tmp_path) -> Iterator[Redis]:
    server = Redis("127.0.0.1", tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels) if metrics.registry else None
    assert value is not None, name
    return value


def test_slots_are_exact_and_come_back_on_release(redis_server):
    metrics = Metrics()
    a = FleetLimit(redis_server.url, 3, TTL, "local", metrics)
    b = FleetLimit(redis_server.url, 3, TTL, "local", Metrics())  # another worker (or host)
    held = [a.acquire(), b.acquire(), a.acquire()]
    assert all(held)
    with pytest.raises(FleetFull) as refused:
        b.acquire()
    assert isinstance(refused.value, RateLimited) and refused.value.status == 429
    assert refused.value.headers["Retry-After"] and "limit of 3" in refused.value.message
    with redis_server.client() as client:
        assert client.zcard(KEY) == 3
    a.release(held[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        gevent.sleep(0.05)  # the release is a greenlet of its own
        with redis_server.client() as client:
            if client.zcard(KEY) == 2:
                break
    assert b.acquire()
    assert sample(metrics, "gateway_global_limit") == 3
    assert sample(metrics, "gateway_global_limit_up") == 1


def test_renewed_slots_stay_and_a_stopped_workers_expire(redis_server):
    alive = FleetLimit(redis_server.url, 2, TTL, "local", Metrics())
    dead = FleetLimit(redis_server.url, 2, TTL, "local", Metrics())
    assert alive.acquire() and dead.acquire()
    assert dead._renewer is not None
    dead._renewer.kill()  # as a SIGKILLed worker: nothing renews its slot any more
    other = FleetLimit(redis_server.url, 2, TTL, "local", Metrics())
    with pytest.raises(FleetFull):
        other.acquire()
    started = time.monotonic()
    while True:
        gevent.sleep(0.1)  # the live worker's renewer runs meanwhile
        try:
            assert other.acquire()
            break
        except FleetFull:
            assert time.monotonic() - started < TTL + 1, "the stopped worker's slot did not expire"
    freed = time.monotonic() - started
    # Past 2 x TTL, only renewal can have kept the live worker's slot: the set is full with it.
    gevent.sleep(2 * TTL)
    with pytest.raises(FleetFull):
        other.acquire()
    print(f"a stopped worker's slot was free after {freed:.2f} s (TTL {TTL} s)")


@pytest.mark.parametrize("mode", ["local", "refuse"])
def test_without_redis_the_chosen_mode_is_followed_and_counted(redis_server, mode):
    metrics = Metrics()
    limit = FleetLimit(redis_server.url, 5, TTL, mode, metrics)
    assert limit.acquire()
    redis_server.stop()
    for _ in range(3):
        if mode == "local":
            assert limit.acquire() is None  # admitted on the server's own limit
        else:
            with pytest.raises(LimitUnavailable) as refused:
                limit.acquire()
            assert refused.value.status == 503 and refused.value.code == "global_limit_unavailable"
            assert refused.value.headers["Retry-After"]
    assert sample(metrics, "gateway_global_limit_up") == 0
    assert sample(metrics, "gateway_global_limit_fallbacks_total", mode=mode) == 3
    redis_server.start()
    assert limit.acquire()
    assert sample(metrics, "gateway_global_limit_up") == 1
