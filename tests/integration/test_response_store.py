"""Stored responses (app.response_store), both backends: the folder one and a real Redis. Objects and
events round-trip exactly, readers in other processes follow a writer live, expiry counts from the last
write, cancel flags cross instances, and no id but a response's own names a file or key.

`python -m tests.integration.test_response_store` prints the CPU cost per appended event of both."""

from __future__ import annotations

import multiprocessing
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import orjson
import pytest
import redis

from app.response_store import (
    Event,
    LocalResponseStore,
    RedisResponseStore,
    ResponseStore,
    StoreUnavailable,
)
from tests.fleet.daemons import free_port_on
from tests.fleet.services import Redis

pytestmark = pytest.mark.integration

TTL = 3600.0
DONE = "response.completed"

Factory = Callable[..., ResponseStore]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis("127.0.0.1", tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def open_store(kind: str, where: str, ttl: float = TTL) -> ResponseStore:
    """A store as a worker builds it (`where`: the folder, or Redis's URL); picklable arguments, so a
    process of its own can open the same store."""
    if kind == "local":
        store = LocalResponseStore(Path(where), ttl)
        store.ensure()
        return store
    return RedisResponseStore(where, ttl)


@pytest.fixture(params=["local", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def where(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "local":
        return str(tmp_path / "responses")
    return str(request.getfixturevalue("redis_server").url)


@pytest.fixture
def make(kind: str, where: str) -> Factory:
    """Another store on the same place: another worker's (or host's)."""
    return lambda ttl=TTL: open_store(kind, where, ttl)


def new_id() -> str:
    return "resp_" + secrets.token_hex(24)


def response(rid: str, status: str = "in_progress", **extra: Any) -> dict[str, Any]:
    return {"id": rid, "object": "response", "status": status, "output": [], **extra}


def delta(seq: int, text: str = "tok") -> Event:
    body = {"type": "response.output_text.delta", "sequence_number": seq, "delta": f"{text}{seq} \n"}
    return seq, "response.output_text.delta", orjson.dumps(body)


def test_an_object_is_created_read_and_updated_from_another_instance(make):
    writer, reader = make(), make()
    rid = new_id()
    assert reader.get(rid) is None
    writer.create(response(rid, metadata={"k": "v é"}))
    assert reader.get(rid) == response(rid, metadata={"k": "v é"})
    done = response(rid, "completed", output=[{"type": "message", "content": [{"text": "hi"}]}])
    writer.update(rid, done)
    assert reader.get(rid) == done
    assert reader.events(rid, -1, 0) == []


def test_events_after_any_sequence_number_come_without_gaps_or_duplicates(make):
    writer, reader = make(), make()
    rid = new_id()
    writer.create(response(rid))
    sent: list[Event] = []
    for size in (1, 3, 25, 1, 7, 40):
        batch = [delta(len(sent) + i) for i in range(size)]
        writer.append(rid, batch)
        sent += batch
        # Read at every step, from every position: the remembered read position never skips or repeats.
        for after in (-1, len(sent) - size - 1, len(sent) - 2, len(sent) - 1):
            assert reader.events(rid, after, 0) == sent[after + 1 :]
    for after in range(-1, len(sent) + 2):
        assert reader.events(rid, after, 0) == sent[after + 1 :]
    assert reader.events(rid, -5, 0) == sent


def follow(kind: str, where: str, rid: str, results: Any) -> None:
    """Another process's reader: follow `rid` from the start until its last event."""
    store = open_store(kind, where)
    seen: list[Event] = []
    calls = 0
    while not seen or seen[-1][1] != DONE:
        got = store.events(rid, seen[-1][0] if seen else -1, 2.0)
        assert got is not None
        seen += got
        calls += 1
    results.put((seen, calls, time.process_time()))


def test_a_reader_in_another_process_follows_the_writer_live(kind, where, make):
    writer = make()
    rid = new_id()
    writer.create(response(rid))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    reader = context.Process(target=follow, args=(kind, where, rid, results))
    reader.start()
    try:
        time.sleep(1.0)  # the reader starts (and waits) before the first event
        sent: list[Event] = []
        for tick in range(30):
            batch = [delta(len(sent) + i) for i in range(tick % 4)]
            writer.append(rid, batch)
            sent += batch
            time.sleep(0.02)
        sent.append((len(sent), DONE, b'{"type":"response.completed"}'))
        writer.append(rid, sent[-1:])
        seen, calls, cpu = results.get(timeout=15)
    finally:
        reader.join(timeout=5)
        if reader.is_alive():
            reader.kill()
    assert seen == sent
    assert calls < len(sent), "the reader got events one call each, or polled without waiting"
    assert cpu < 3.0  # imports included; a busy wait would spin for the whole run


def test_a_wait_ends_when_an_event_arrives_and_costs_no_cpu_while_idle(make):
    writer, reader = make(), make()
    rid = new_id()
    writer.create(response(rid))
    # The waiting thread's own CPU: the suite's other threads (its servers' log readers) count elsewhere.
    cpu, started = time.thread_time(), time.monotonic()
    assert reader.events(rid, -1, 0.6) == []
    assert 0.55 < time.monotonic() - started < 1.5
    assert time.thread_time() - cpu < 0.1
    # The writer in a thread: Redis's XREAD blocks this (unpatched) test thread, not a gevent hub.
    timer = threading.Timer(0.3, writer.append, (rid, [delta(0)]))
    timer.start()
    started = time.monotonic()
    assert reader.events(rid, -1, 8.0) == [delta(0)]
    assert time.monotonic() - started < 1.5
    timer.join()


def test_a_response_expires_ttl_after_its_last_write(make, kind, where):
    writer, reader = make(1.0), make(1.0)
    kept, left = new_id(), new_id()
    for rid in (kept, left):
        writer.create(response(rid))
        writer.append(rid, [delta(0)])
    for _ in range(3):  # each write restarts the expiry: 1.5 s after the create, still there
        time.sleep(0.5)
        writer.append(kept, [delta(_ + 1)])
    assert reader.get(kept) is not None and reader.events(kept, 0, 0) == [delta(1), delta(2), delta(3)]
    assert reader.get(left) is None
    assert reader.events(left, -1, 0) is None
    assert not reader.request_cancel(left)
    time.sleep(1.1)
    assert reader.get(kept) is None
    if kind == "local":
        assert sorted(os.listdir(where)) == [".swept"]  # lazily removed by the reads
    else:
        with redis.Redis.from_url(where) as client:
            assert client.keys(f"gateway:response:{kept}*") == []


def test_the_local_sweep_removes_expired_responses_only(tmp_path):
    folder = tmp_path / "responses"
    store = open_store("local", str(folder), 60.0)
    assert isinstance(store, LocalResponseStore)
    # A sweep just ran (as far as the store knows): the creates below start none, which would hold the
    # folder's lock while this test's own sweep runs (that one would then return 0, as documented).
    (folder / ".swept").touch()
    old, new = new_id(), new_id()
    for rid in (old, new):
        store.create(response(rid))
        store.append(rid, [delta(0)])
    store.request_cancel(old)
    crashed = folder / f".{secrets.token_hex(16)}.tmp"
    crashed.write_bytes(b"{")
    hour_ago = time.time() - 3601
    for path in [*folder.glob(f"{old}.*"), crashed]:
        os.utime(path, (hour_ago, hour_ago))
    assert store.sweep() == 1
    assert sorted(os.listdir(folder)) == [".swept", f"{new}.events", f"{new}.json"]
    # A create starts a sweep (in gevent's thread pool) when none ran for a minute, and never fails for it.
    store.create(response(old))
    os.utime(folder / ".swept", (hour_ago, hour_ago))
    for path in folder.glob(f"{old}.*"):
        os.utime(path, (hour_ago, hour_ago))
    store.create(response(new_id()))
    deadline = time.monotonic() + 5
    while (folder / f"{old}.json").exists():
        assert time.monotonic() < deadline, "no sweep on create"
        gevent.sleep(0.05)


def test_a_deleted_response_is_gone_and_stays_gone(make):
    writer, reader = make(), make()
    rid = new_id()
    writer.create(response(rid))
    writer.append(rid, [delta(0), delta(1)])
    assert not writer.cancel_requested(rid)
    assert reader.delete(rid)
    assert reader.get(rid) is None and reader.events(rid, -1, 0) is None
    assert not reader.delete(rid)
    # The writer's generation is told to stop, and what it still writes brings nothing back.
    assert writer.cancel_requested(rid)
    writer.append(rid, [delta(2)])
    writer.update(rid, response(rid, "completed"))
    assert reader.get(rid) is None and reader.events(rid, -1, 0) is None


def test_a_cancel_request_is_seen_by_another_instance(make):
    api, driver = make(), make()
    rid, other = new_id(), new_id()
    for r in (rid, other):
        driver.create(response(r))
    assert not driver.cancel_requested(rid)
    assert api.request_cancel(rid)
    assert driver.cancel_requested(rid)
    assert not driver.cancel_requested(other)
    assert not api.request_cancel(new_id())


def test_every_redis_key_expires(redis_server):
    store = open_store("redis", redis_server.url)
    kept, deleted = new_id(), new_id()
    for rid in (kept, deleted):
        store.create(response(rid))
        store.append(rid, [delta(0)])
        store.append(rid, [delta(1), delta(2)])
        store.request_cancel(rid)
    store.delete(deleted)
    store.append(deleted, [delta(3)])  # the writer has not heard yet
    store.append(deleted, [delta(4), delta(5)])
    with redis.Redis.from_url(redis_server.url) as client:
        keys = sorted(key.decode() for key in client.keys(f"gateway:response:{kept}*"))
        assert keys == [f"gateway:response:{kept}{suffix}" for suffix in ("", ":cancel", ":events")]
        assert client.keys(f"gateway:response:{deleted}*") == []
        assert all(0 < client.pttl(key) <= TTL * 1000 for key in keys)


BAD_IDS = [
    "",
    "resp_",
    "resp_" + "0" * 47,
    "resp_" + "0" * 49,
    "resp_" + "A" * 48,
    "resp_" + "0" * 48 + "\n",
    "resp_" + "0" * 48 + "/../x",
    "../resp_" + "0" * 48,
    "resp_../../../../etc/passwd",
    "/etc/passwd",
    ".swept",
    "resp_" + "0" * 47 + "\x00",
    "msg_" + "0" * 48,
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=range(len(BAD_IDS)))
def test_no_id_but_a_responses_own_names_a_file_or_key(make, kind, where, tmp_path, bad):
    store = make()
    before = sorted(p for p in tmp_path.rglob("*"))
    assert store.get(bad) is None
    assert store.events(bad, -1, 0) is None
    assert store.request_cancel(bad) is False
    assert store.cancel_requested(bad) is False
    assert store.delete(bad) is False
    store.append(bad, [delta(0)])
    store.update(bad, response(bad))
    with pytest.raises(ValueError):
        store.create(response(bad))
    assert sorted(p for p in tmp_path.rglob("*")) == before
    if kind == "redis":
        with redis.Redis.from_url(where) as client:
            keys = [key.decode() for key in client.keys("*")]
            assert all(re.fullmatch(r"gateway:response:resp_[0-9a-f]{48}(:events|:cancel)?", k) for k in keys)


def test_an_event_must_fit_on_one_line(make):
    store = make()
    rid = new_id()
    store.create(response(rid))
    with pytest.raises(ValueError):
        store.append(rid, [(0, "response.output_text.delta", b'{"delta":"a\nb"}')])
    with pytest.raises(ValueError):
        store.append(rid, [(0, "two words", b"{}")])
    assert store.events(rid, -1, 0) == []


def test_a_line_still_being_written_is_not_read(tmp_path):
    store = open_store("local", str(tmp_path))
    rid = new_id()
    store.create(response(rid))
    store.append(rid, [delta(0)])
    line = b"%d %s %s\n" % (1, b"response.output_text.delta", delta(1)[2])
    with open(tmp_path / f"{rid}.events", "ab") as events:
        events.write(line[:10])
        events.flush()
        assert store.events(rid, -1, 0) == [delta(0)]
        assert store.events(rid, 0, 0) == []
        events.write(line[10:])
    assert store.events(rid, 0, 0) == [delta(1)]


def test_large_batches_round_trip(make):
    writer, reader = make(), make()
    rid = new_id()
    writer.create(response(rid))
    sent = [delta(i, "x" * 1000) for i in range(5000)]
    for start in range(0, len(sent), 2500):
        writer.append(rid, sent[start : start + 2500])
    assert reader.events(rid, -1, 0) == sent
    assert reader.events(rid, 4990, 0) == sent[4991:]


def test_an_unreachable_redis_is_a_typed_error_within_seconds():
    store = RedisResponseStore(f"redis://127.0.0.1:{free_port_on('127.0.0.1')}/0", TTL)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as error:
        store.get(new_id())
    assert error.value.status == 503
    assert time.monotonic() - started < 3


def measure(store: ResponseStore, batch: int, events: int = 20_000) -> float:
    """CPU µs per appended event, in batches of `batch` (a relay tick's)."""
    rid = new_id()
    store.create(response(rid))
    body = orjson.dumps({"type": "response.output_text.delta", "sequence_number": 0, "delta": " token"})
    payload = [(i, "response.output_text.delta", body) for i in range(events)]
    started = time.process_time()
    for start in range(0, events, batch):
        store.append(rid, payload[start : start + batch])
    cost = (time.process_time() - started) / events * 1e6
    store.delete(rid)
    return cost


def measure_bare_xadd(url: str, events: int = 20_000) -> float:
    """The same for redis-py's XADD alone, one call per event: the baseline of the issue's figures."""
    client = redis.Redis.from_url(url, socket_timeout=0.5)
    body = orjson.dumps({"type": "response.output_text.delta", "sequence_number": 0, "delta": " token"})
    started = time.process_time()
    for _ in range(events):
        client.xadd("bench:bare", {"type": "response.output_text.delta", "data": body})
    cost = (time.process_time() - started) / events * 1e6
    client.delete("bench:bare")
    return cost


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as temp:
        server = Redis("127.0.0.1", Path(temp) / "redis")
        server.start()
        try:
            stores = {
                "local": open_store("local", f"{temp}/responses"),
                "redis": open_store("redis", server.url),
            }
            for store in stores.values():
                measure(store, 25, 2000)  # warm up
            for _ in range(3):
                costs = [
                    f"{name} {measure(s, batch):5.1f}" for name, s in stores.items() for batch in (1, 25)
                ]
                bare = measure_bare_xadd(server.url)
                print(
                    f"CPU µs per appended event, batches of 1 / 25: {', '.join(costs)}; bare XADD {bare:.1f}"
                )
        finally:
            server.stop()
