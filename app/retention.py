"""Retention of the files folder, enforced by one worker of the server.

Every `interval` seconds each worker tries to take a lock on the folder itself without waiting
(`flock` on its own descriptor of the directory: released by the kernel when the process dies, and
nothing is added to the folder); the one that holds it sweeps, the others do nothing. A killed
leader's lock frees itself and another worker takes over at its next try. Servers sharing one folder
(on one machine) elect one sweeper between them the same way.

A sweep removes, among the files the gateway names (`app.storage.NAME_RE`):
- those older than `max_age` seconds (`age`);
- then the oldest while the folder holds more than `max_bytes` (`size`);
but never one younger than `grace` seconds: it was just linked to a client, who may not have
downloaded it yet. Leftovers of writes that crashed (`.<hex>.tmp`) go after an hour (`temp`).

A download already under way is not cut: nginx sends from the file it has open, and Linux frees a
removed file's space only once the last reader has closed it. A request for it after removal is 404.
The filesystem work runs in gevent's thread pool (a large folder must not stall the worker's
streams); metrics and logs are written back on the worker's hub.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import gevent

from app.metrics import Metrics
from app.storage import is_temp_name, is_valid_name

log = logging.getLogger(__name__)

TEMP_MAX_AGE = 3600  # seconds: a write takes milliseconds, so an hour-old temp file is a crash's


@dataclass
class Sweep:
    kept_files: int = 0
    kept_bytes: int = 0
    removed: dict[str, list[int]] = field(default_factory=lambda: {"age": [], "size": [], "temp": []})


def sweep(folder: Path, *, max_age: float, max_bytes: int, grace: float, now: float) -> Sweep:
    """Remove what retention says must go from `folder`; what was kept and removed (sizes by reason)."""
    result = Sweep()
    files: list[tuple[float, int, str]] = []  # (mtime, size, name)
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            if is_valid_name(entry.name):
                files.append((stat.st_mtime, stat.st_size, entry.name))
            elif _is_old_temp(entry.name, now - stat.st_mtime) and _remove(folder / entry.name):
                result.removed["temp"].append(stat.st_size)
    files.sort()  # oldest first
    kept: list[tuple[float, int, str]] = []
    for mtime, size, name in files:
        age = now - mtime
        if max_age and age > max_age and age > grace and _remove(folder / name):
            result.removed["age"].append(size)
        else:
            kept.append((mtime, size, name))
    total = sum(size for _, size, _ in kept)
    if max_bytes and total > max_bytes:
        remaining = []
        for mtime, size, name in kept:
            if total > max_bytes and now - mtime > grace and _remove(folder / name):
                result.removed["size"].append(size)
                total -= size
            else:
                remaining.append((mtime, size, name))
        kept = remaining
    result.kept_files = len(kept)
    result.kept_bytes = total
    return result


def _is_old_temp(name: str, age: float) -> bool:
    return is_temp_name(name) and age > TEMP_MAX_AGE


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class Retention:
    def __init__(
        self,
        folder: Path,
        metrics: Metrics,
        *,
        max_age: float,
        max_bytes: int,
        grace: float,
        interval: float,
    ) -> None:
        self.folder = folder
        self.metrics = metrics
        self.max_age, self.max_bytes, self.grace, self.interval = max_age, max_bytes, grace, interval
        self._lock_fd: int | None = None
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Begin trying to lead, and sweeping while leading (gunicorn's worker calls this)."""
        if self._greenlet is None and (self.max_age or self.max_bytes):
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            if self._lead():
                try:
                    self.sweep_now()
                except Exception:  # a sweep that fails is retried at the next interval
                    log.exception("retention sweep of %s failed", self.folder)
            gevent.sleep(self.interval)

    def _lead(self) -> bool:
        """Whether this process holds the folder's retention lock (taking it if it is free)."""
        if self._lock_fd is not None:
            return True
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            log.warning("retention: cannot open %s: %s", self.folder, exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # another process sweeps
        self._lock_fd = fd
        log.info("retention: this worker (pid %d) enforces it on %s", os.getpid(), self.folder)
        return True

    def sweep_now(self) -> Sweep:
        now = time.time()
        result: Sweep = gevent.get_hub().threadpool.apply(
            sweep,
            (self.folder,),
            {"max_age": self.max_age, "max_bytes": self.max_bytes, "grace": self.grace, "now": now},
        )
        m = self.metrics
        for reason, sizes in result.removed.items():
            if sizes:
                m.files_removed.labels(reason).inc(len(sizes))
                m.files_removed_bytes.labels(reason).inc(sum(sizes))
                log.info("retention removed %d files (%d bytes): %s", len(sizes), sum(sizes), reason)
        m.files_kept.set(result.kept_files)
        m.files_kept_bytes.set(result.kept_bytes)
        m.retention_last_sweep.set(now)
        return result
