"""Server-wide admission: the generations all of gunicorn's workers run, counted in shared memory.

Admission used to be per worker. nginx reuses its most recently freed upstream connection first, and
each connection belongs to one worker, so a full worker's instant 429 put its connection back on top of
nginx's cache and it got the next request too: one worker full, the other at 4 of 10, and every
further request refused (issue 19). Here a worker admits while the server as a whole has room, so with
W workers and a limit of L each, W x L streams are admitted whatever connection they arrive on.

The master creates the table before it forks (gunicorn.conf.py's `on_starting`); workers inherit it.
Each worker writes only its own slot; `fcntl.lockf` (a POSIX record lock: held per process, dropped by
the kernel when the process dies) makes one worker's check-and-increment atomic against the others'.
The master zeroes a dead worker's slot (`child_exit`), so a killed worker's generations stop counting.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import tempfile
from collections.abc import Iterator

# Slots for workers alive at once: a reload runs the old workers (draining) beside the new ones.
SLOTS = 256
_WORKERS = 0  # ints[0]: the number of workers the master runs; slot i: ints[1 + 2i] pid, ints[2 + 2i] count


class SharedCounts:
    """A table of (pid, running generations) per worker, in memory shared by the master's children."""

    def __init__(self, slots: int = SLOTS) -> None:
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="gateway-capacity-", dir=folder)
        os.unlink(path)  # nothing to clean up: the table lives as long as a process holds it
        size = 8 * (1 + 2 * slots)
        os.ftruncate(fd, size)
        self._fd = fd
        self._map = mmap.mmap(fd, size)  # MAP_SHARED: children see one table
        self._ints = memoryview(self._map).cast("q")
        self.slots = slots

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    @property
    def workers(self) -> int:
        return self._ints[_WORKERS]

    def set_workers(self, n: int) -> None:
        """Master: how many workers it runs (capacity is that many times the per-worker limit)."""
        self._ints[_WORKERS] = n

    def claim(self, pid: int) -> int | None:
        """Worker, at start: a slot of its own (None when every slot is taken)."""
        ints = self._ints
        with self._locked():
            for slot in range(self.slots):
                if ints[1 + 2 * slot] in (0, pid):
                    ints[1 + 2 * slot] = pid
                    ints[2 + 2 * slot] = 0
                    return slot
        return None

    def release_process(self, pid: int) -> None:
        """Master, when a worker has exited: its slot and its generations are free."""
        ints = self._ints
        with self._locked():
            for slot in range(self.slots):
                if ints[1 + 2 * slot] == pid:
                    ints[2 + 2 * slot] = 0
                    ints[1 + 2 * slot] = 0

    def total(self) -> int:
        return sum(self._ints[2::2])

    def try_acquire(self, slot: int, limit: int) -> bool:
        """Count one more generation in `slot` unless all workers together already run `limit`."""
        with self._locked():
            if self.total() >= limit:
                return False
            self._ints[2 + 2 * slot] += 1
            return True

    def release(self, slot: int) -> None:
        # Only this worker writes its slot (the master only once it is dead): no lock needed.
        index = 2 + 2 * slot
        self._ints[index] = max(self._ints[index] - 1, 0)


_shared: SharedCounts | None = None


def create() -> SharedCounts:
    """Master, before forking: the table its workers will share."""
    global _shared
    _shared = SharedCounts()
    return _shared


def shared() -> SharedCounts | None:
    """The table inherited from gunicorn's master; None outside gunicorn (one process, local counts)."""
    return _shared
