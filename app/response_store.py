"""Where Responses API objects and their event streams live, readable from any worker (and, with Redis,
any host): the `ResponseStore` interface and its two backends, a folder shared by one host's workers and
Redis for a fleet.

Exactly one writer per response (the worker running it) calls `create`, then `append` once per relay tick
and `update`; readers anywhere call `get` and `events`. Every write restarts the response's expiry:
it expires `ttl_seconds` after its last write (Redis: give or take a tenth of that, at most a minute), so
a long generation never loses its start.

Settings (the lead adds them to app/settings.py):
    GATEWAY_RESPONSES_TTL_SECONDS  (86400)  how long a response is kept after its last write
    GATEWAY_REDIS_URL              (unset)  when set, RedisResponseStore on it; else LocalResponseStore on
                                            <data_dir>/responses/

Local (`LocalResponseStore`), for each id: `<rid>.json` (the object, replaced atomically), `<rid>.events`
(one line `<seq> <type> <json>\\n` per event, each `append` one `write` on an O_APPEND descriptor: a reader
uses complete lines only) and `<rid>.cancel` (the flag). Expiry is lazy: a read of an expired response
removes it, and a sweep, at most once a minute per folder, runs (in gevent's thread pool) on `create`.

Redis (`RedisResponseStore`): `gateway:response:<rid>` (the object, JSON), `gateway:response:<rid>:events`
(a stream; an event's id is `<seq>-1`, so `events(after)` is XRANGE from `<after+1>-0`, and XREAD BLOCK
from the same id waits for the next one without a gap), `gateway:response:<rid>:cancel`. `create` and
`update` renew the expiry of all three keys; `append` does at its first call for a response, then at most
every min(ttl / 10, 60 s): three PEXPIREs would cost more than the one to three events of a usual tick.

Writes to a response that was deleted (or expired) are dropped, and `cancel_requested` is then true:
no one can read what its generation would write.

CPU per appended event in the writer (`time.process_time`, 20,000 events of ~80 bytes, loopback Redis 7,
two noisy cores), in batches of 1 / 25 events per `append`: local 15 / 1.3 µs; Redis 72-115 / 13-15 µs,
where a bare redis-py XADD measured in the same runs costs 55-99 µs. Reproduce:
`.venv/bin/python -m tests.integration.test_response_store`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import gevent
import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.errors import Unavailable

log = logging.getLogger(__name__)

RID_RE = re.compile(r"^resp_[0-9a-f]{48}$")

Event = tuple[int, str, bytes]  # (sequence_number, type, data: the event as JSON, without a newline)

POLL_SECONDS = 0.05  # how often a local reader looks for new events while it waits
SWEEP_SECONDS = 60.0  # a folder is swept at most this often
TEMP_MAX_AGE = 3600.0  # a temporary file this old is a crashed write's
MAX_WAIT_SECONDS = 10.0  # one `events` call waits at most this long (the caller loops)
CACHE_SIZE = 4096  # responses whose read position a process remembers


def is_valid_id(rid: str) -> bool:
    return isinstance(rid, str) and RID_RE.fullmatch(rid) is not None


class StoreUnavailable(Unavailable):
    code = "response_store_unavailable"


class ResponseStore(Protocol):
    """Stored Responses API objects and their events. Raises StoreUnavailable when its backend fails."""

    backend: str  # "local" or "redis": a metrics label

    def create(self, response: dict[str, Any]) -> None:
        """A new response object (its "id" inside); starts its expiry."""

    def append(self, rid: str, events: list[Event]) -> None:
        """Events in order of sequence number, in one write (one per relay tick)."""

    def append_many(self, batches: dict[str, list[Event]]) -> None:
        """`append` for several responses at once: a worker's relay tick, in one round trip to Redis."""

    def update(self, rid: str, response: dict[str, Any]) -> None:
        """The response object as it now is (status, output)."""

    def get(self, rid: str) -> dict[str, Any] | None:
        """The last response object; None when unknown, expired or deleted."""

    def events(self, rid: str, after: int, wait: float) -> list[Event] | None:
        """Stored events with sequence_number > after; when there are none yet, waits up to `wait`
        seconds (at most MAX_WAIT_SECONDS) for some, without blocking the worker. None: unknown id."""

    def request_cancel(self, rid: str) -> bool:
        """Raise a flag any worker or host sees; False for an unknown id."""

    def cancel_requested(self, rid: str) -> bool:
        """Whether the response's generation should stop: cancel requested, or the response is gone."""

    def delete(self, rid: str) -> bool:
        """Remove the object and its events; False for an unknown id."""


def _dumps(response: dict[str, Any]) -> bytes:
    return orjson.dumps(response)


def _check_events(events: list[Event]) -> None:
    for _, kind, data in events:
        if b"\n" in data or not kind or " " in kind or "\n" in kind:
            raise ValueError(f"an event of type {kind!r} cannot be stored on one line")


@contextlib.contextmanager
def _unavailable_on(*errors: type[BaseException]) -> Iterator[None]:
    try:
        yield
    except errors as exc:
        raise StoreUnavailable("Stored responses cannot be reached right now; retry shortly.") from exc


class LocalResponseStore:
    """Files in one folder, shared by every worker of one host (see the module's docstring)."""

    backend = "local"

    def __init__(self, folder: Path, ttl_seconds: float) -> None:
        self.folder = folder
        self.ttl = ttl_seconds
        # rid -> (inode, offset, seq): the events file up to `offset` ends with the event `seq`.
        self._read_at: OrderedDict[str, tuple[int, int, int]] = OrderedDict()

    def ensure(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, rid: str, suffix: str) -> Path:
        return self.folder / f"{rid}{suffix}"

    # -- writer

    def create(self, response: dict[str, Any]) -> None:
        rid = response["id"]
        if not is_valid_id(rid):
            raise ValueError(f"invalid response id {rid!r}")
        self._maybe_sweep()
        with _unavailable_on(OSError):
            # The events file first: a reader that sees the object finds its events file.
            os.close(os.open(self._path(rid, ".events"), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
            self._write_object(rid, _dumps(response))

    def append(self, rid: str, events: list[Event]) -> None:
        if not events or not is_valid_id(rid):
            return
        _check_events(events)
        data = b"".join(b"%d %s %s\n" % (seq, kind.encode(), body) for seq, kind, body in events)
        try:
            # No O_CREAT: the events of a deleted response are not brought back.
            fd = os.open(self._path(rid, ".events"), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreUnavailable("Stored responses cannot be written right now.") from exc
        try:
            with _unavailable_on(OSError):
                written = os.write(fd, data)
                if written != len(data):  # a full disk: the rest would be a torn line
                    raise OSError(errno.ENOSPC, "short write to the events file")
        finally:
            os.close(fd)

    def append_many(self, batches: dict[str, list[Event]]) -> None:
        for rid, events in batches.items():
            self.append(rid, events)

    def update(self, rid: str, response: dict[str, Any]) -> None:
        if not is_valid_id(rid) or not self._path(rid, ".json").exists():
            return
        with _unavailable_on(OSError):
            self._write_object(rid, _dumps(response))

    def _write_object(self, rid: str, data: bytes) -> None:
        # A dot-name never matches an id, so readers never see a half-written object.
        temp = self.folder / f".{uuid.uuid4().hex}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(temp, self._path(rid, ".json"))
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    # -- readers

    def _alive(self, rid: str) -> bool:
        """Whether `rid` is stored and unexpired; an expired one is removed."""
        if not is_valid_id(rid):
            return False
        now = time.time()
        try:
            last = os.stat(self._path(rid, ".json")).st_mtime
            if last + self.ttl <= now:
                last = max(last, os.stat(self._path(rid, ".events")).st_mtime)
        except FileNotFoundError:
            return False
        if last + self.ttl > now:
            return True
        self._remove(rid)
        return False

    def get(self, rid: str) -> dict[str, Any] | None:
        if not self._alive(rid):
            return None
        try:
            data = self._path(rid, ".json").read_bytes()
        except FileNotFoundError:
            return None
        result: dict[str, Any] = orjson.loads(data)
        return result

    def events(self, rid: str, after: int, wait: float) -> list[Event] | None:
        if not self._alive(rid):
            return None
        deadline = time.monotonic() + min(wait, MAX_WAIT_SECONDS)
        while True:
            found = self._read_events(rid, after)
            if found is None or found:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            gevent.sleep(min(POLL_SECONDS, left))

    def _read_events(self, rid: str, after: int) -> list[Event] | None:
        try:
            fd = os.open(self._path(rid, ".events"), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None  # deleted or expired meanwhile
        try:
            stat = os.fstat(fd)
            inode, offset, seq = self._read_at.get(rid, (stat.st_ino, 0, -1))
            if inode != stat.st_ino or offset > stat.st_size or seq > after:
                offset, seq = 0, -1  # the remembered position is of another file, or past `after`
            if offset == stat.st_size:
                return []
            data = os.pread(fd, stat.st_size - offset, offset)
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        found: list[Event] = []
        for line in data[:end].splitlines():
            number, kind, body = line.split(b" ", 2)
            seq = int(number)
            if seq > after:
                found.append((seq, kind.decode(), body))
        if end:
            self._remember(rid, (stat.st_ino, offset + end, seq))
        return found

    def _remember(self, rid: str, position: tuple[int, int, int]) -> None:
        self._read_at[rid] = position
        self._read_at.move_to_end(rid)
        if len(self._read_at) > CACHE_SIZE:
            self._read_at.popitem(last=False)

    # -- cancel and delete

    def request_cancel(self, rid: str) -> bool:
        if not self._alive(rid):
            return False
        with _unavailable_on(OSError):
            os.close(os.open(self._path(rid, ".cancel"), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
        return True

    def cancel_requested(self, rid: str) -> bool:
        if not is_valid_id(rid):
            return False
        return self._path(rid, ".cancel").exists() or not self._path(rid, ".json").exists()

    def delete(self, rid: str) -> bool:
        return self._alive(rid) and self._remove(rid)

    def _remove(self, rid: str) -> bool:
        self._read_at.pop(rid, None)
        return self._remove_files(rid)

    def _remove_files(self, rid: str) -> bool:
        """(Also called by the sweep, in a thread: it touches no state of the store's.)"""
        removed = False
        for suffix in (".json", ".events", ".cancel"):  # the object first: readers then say None
            with contextlib.suppress(FileNotFoundError):
                self._path(rid, suffix).unlink()
                removed = removed or suffix == ".json"
        return removed

    # -- expiry

    def _maybe_sweep(self) -> None:
        """Start a sweep if no process swept the folder in the last minute; never fails the caller."""
        marker = self.folder / ".swept"
        try:
            if time.time() - marker.stat().st_mtime < SWEEP_SECONDS:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            marker.touch()
        except OSError:
            return
        gevent.get_hub().threadpool.spawn(self._sweep_quietly)

    def _sweep_quietly(self) -> None:
        try:
            self.sweep()
        except Exception:
            log.exception("sweep of stored responses in %s failed", self.folder)

    def sweep(self, now: float | None = None) -> int:
        """Remove expired responses and crashed writes' leftovers; how many responses were removed. One
        process at a time (an flock on the folder); another's sweep under way makes this one return 0."""
        now = time.time() if now is None else now
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0
            last: dict[str, float] = {}
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    name = entry.name
                    try:
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                    except OSError:
                        continue
                    rid, _, suffix = name.partition(".")
                    if is_valid_id(rid) and suffix in ("json", "events", "cancel"):
                        if suffix != "cancel":
                            last[rid] = max(last.get(rid, 0.0), mtime)
                        else:
                            last.setdefault(rid, 0.0)
                    elif name.startswith(".") and name.endswith(".tmp") and now - mtime > TEMP_MAX_AGE:
                        with contextlib.suppress(FileNotFoundError):
                            (self.folder / name).unlink()
            removed = 0
            for rid, mtime in last.items():
                if mtime + self.ttl <= now:
                    self._remove_files(rid)
                    removed += 1
            return removed
        finally:
            os.close(fd)


class RedisResponseStore:
    """Keys in Redis, shared by every host (see the module's docstring)."""

    backend = "redis"

    def __init__(self, url: str, ttl_seconds: float) -> None:
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        # The expiry is renewed by the first append of a response and then at most this often: the
        # three PEXPIREs would cost more than the events themselves at a relay tick's usual 1-3.
        self.renew_every = min(ttl_seconds / 10, 60.0)
        self._renewed: OrderedDict[str, float] = OrderedDict()  # rid -> when this writer last renewed
        # Short timeouts: an unreachable Redis must cost a request about a second, not a minute. One
        # retry on a fresh connection: after Redis restarts, each pooled connection fails once.
        options: dict[str, Any] = {
            "socket_connect_timeout": 0.5,
            "retry": Retry(NoBackoff(), 1),
            "retry_on_error": [redis.ConnectionError],
        }
        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, **options)
        # NOTE: a waiting reader holds a connection of its own pool for up to MAX_WAIT_SECONDS: its
        # socket timeout must outlast the XREAD's BLOCK.
        self._blocking = redis.Redis.from_url(url, socket_timeout=MAX_WAIT_SECONDS + 2, **options)

    @staticmethod
    def _keys(rid: str) -> tuple[str, str, str]:
        key = f"gateway:response:{rid}"
        return key, f"{key}:events", f"{key}:cancel"

    # -- writer

    def create(self, response: dict[str, Any]) -> None:
        rid = response["id"]
        if not is_valid_id(rid):
            raise ValueError(f"invalid response id {rid!r}")
        with _unavailable_on(redis.RedisError):
            self._redis.set(self._keys(rid)[0], _dumps(response), px=self.ttl_ms)

    def append(self, rid: str, events: list[Event]) -> None:
        if not events or not is_valid_id(rid):
            return
        _check_events(events)
        stream = self._keys(rid)[1]
        now = time.monotonic()
        renew = now - self._renewed.get(rid, -self.renew_every) >= self.renew_every
        # NOTE: if a reply is lost and the retry sends the events again, XADD refuses the ids it already
        # has (ResponseError): explicit ids never store an event twice.
        # NOMKSTREAM once this writer made the stream: a deleted one is not brought back (without expiry).
        xadd = ("XADD", stream, "NOMKSTREAM") if rid in self._renewed else ("XADD", stream)
        with _unavailable_on(redis.RedisError):
            if len(events) == 1 and not renew:  # a pipeline costs twice a lone command
                seq, kind, data = events[0]
                self._redis.execute_command(*xadd, f"{seq}-1", "type", kind, "data", data)
                return
            pipe = self._redis.pipeline(transaction=False)
            self._queue(pipe, rid, events, renew)
            pipe.execute()
        if renew:
            self._renewed_now(rid, now)

    def _queue(self, pipe: Any, rid: str, events: list[Event], renew: bool) -> None:
        key, stream, cancel = self._keys(rid)
        xadd = ("XADD", stream, "NOMKSTREAM") if rid in self._renewed else ("XADD", stream)
        for seq, kind, data in events:
            pipe.execute_command(*xadd, f"{seq}-1", "type", kind, "data", data)
        if renew:
            for name in (stream, key, cancel):
                pipe.pexpire(name, self.ttl_ms)

    def _renewed_now(self, rid: str, now: float) -> None:
        self._renewed[rid] = now
        self._renewed.move_to_end(rid)
        if len(self._renewed) > CACHE_SIZE:
            self._renewed.popitem(last=False)

    def append_many(self, batches: dict[str, list[Event]]) -> None:
        batches = {rid: events for rid, events in batches.items() if events and is_valid_id(rid)}
        if len(batches) <= 1:
            for rid, events in batches.items():
                self.append(rid, events)
            return
        now = time.monotonic()
        renewing = []
        with _unavailable_on(redis.RedisError):
            pipe = self._redis.pipeline(transaction=False)
            for rid, events in batches.items():
                _check_events(events)
                renew = now - self._renewed.get(rid, -self.renew_every) >= self.renew_every
                self._queue(pipe, rid, events, renew)
                if renew:
                    renewing.append(rid)
            pipe.execute()
        for rid in renewing:
            self._renewed_now(rid, now)

    def update(self, rid: str, response: dict[str, Any]) -> None:
        if not is_valid_id(rid):
            return
        key, stream, cancel = self._keys(rid)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(key, _dumps(response), px=self.ttl_ms, xx=True)  # XX: a deleted one stays deleted
        pipe.pexpire(stream, self.ttl_ms)
        pipe.pexpire(cancel, self.ttl_ms)
        with _unavailable_on(redis.RedisError):
            pipe.execute()

    # -- readers

    def get(self, rid: str) -> dict[str, Any] | None:
        if not is_valid_id(rid):
            return None
        with _unavailable_on(redis.RedisError):
            data: bytes | None = self._redis.get(self._keys(rid)[0])  # type: ignore[assignment]
        if data is None:
            return None
        result: dict[str, Any] = orjson.loads(data)
        return result

    def events(self, rid: str, after: int, wait: float) -> list[Event] | None:
        if not is_valid_id(rid):
            return None
        key, stream, _ = self._keys(rid)
        start = f"{max(after, -1) + 1}-0"  # ids are `<seq>-1`: from here on, seq > after
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(key)
        pipe.xrange(stream, start, "+")
        with _unavailable_on(redis.RedisError):
            exists, entries = pipe.execute()
        if not exists:
            return None
        block_ms = int(min(wait, MAX_WAIT_SECONDS) * 1000)
        if not entries and block_ms > 0:
            with _unavailable_on(redis.RedisError):
                # An XREAD from the same id: an event added after the XRANGE is returned at once.
                replies: Any = self._blocking.xread({stream: start}, block=block_ms)
            entries = replies[0][1] if replies else []
        return [
            (int(eid[: eid.index(b"-")]), fields[b"type"].decode(), fields[b"data"])
            for eid, fields in entries
        ]

    # -- cancel and delete

    def request_cancel(self, rid: str) -> bool:
        if not is_valid_id(rid):
            return False
        key, _, cancel = self._keys(rid)
        with _unavailable_on(redis.RedisError):
            if not self._redis.exists(key):
                return False
            self._redis.set(cancel, b"1", px=self.ttl_ms)
        return True

    def cancel_requested(self, rid: str) -> bool:
        if not is_valid_id(rid):
            return False
        key, _, cancel = self._keys(rid)
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(cancel)
        pipe.exists(key)
        with _unavailable_on(redis.RedisError):
            flagged, exists = pipe.execute()
        return bool(flagged) or not exists

    def delete(self, rid: str) -> bool:
        if not is_valid_id(rid):
            return False
        key, stream, cancel = self._keys(rid)
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(key)
        pipe.delete(stream, cancel)
        with _unavailable_on(redis.RedisError):
            existed, _ = pipe.execute()
        return bool(existed)
