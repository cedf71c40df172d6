"""Admission and shutdown for one worker: how many generations run, and draining on SIGTERM.

Under gunicorn, admission counts every worker's generations (`app.capacity`): with W workers and a limit
of L each, the server admits W x L whichever worker a request reaches. Outside gunicorn (one process),
it counts this process's own.

NOTE: all of this runs on the worker's one thread (WSGI greenlets and the drain greenlet), so the set
needs no lock.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import gevent
import gevent.pool

from app.errors import RateLimited, ShuttingDown, Unavailable

if TYPE_CHECKING:
    from app.capacity import SharedCounts
    from app.fleet_limit import FleetLimit
    from app.generation.job import Generation

log = logging.getLogger(__name__)


class Admission:
    """What admitting one generation took: a place in the server's count and, with Redis, a slot of the
    fleet's. `release` gives both back, once; the generation that holds it calls it when it ends, and
    whoever admitted it calls it if the generation never starts."""

    __slots__ = ("_lifecycle", "_member", "released")

    def __init__(self, lifecycle: Lifecycle, member: str | None) -> None:
        self._lifecycle, self._member, self.released = lifecycle, member, False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._lifecycle._release(self._member)


class Lifecycle:
    def __init__(
        self, max_generations: int, shared: SharedCounts | None = None, fleet: FleetLimit | None = None
    ) -> None:
        self.max_generations = max_generations  # per worker
        self.active: set[Generation] = set()
        self.held = 0  # admissions not yet released: this worker's share of the count
        self.fleet = fleet  # the limit across hosts (Redis), when configured
        self.background = gevent.pool.Group()  # the greenlets driving background responses
        self.draining = False
        self.refusing = False  # while draining, whether new work is refused (see drain)
        self._shared = shared
        self._slot = shared.claim(os.getpid()) if shared is not None and shared.workers > 0 else None
        if shared is not None and self._slot is None:
            log.warning("no free slot in the shared admission table: this worker counts only its own")

    @property
    def capacity(self) -> int:
        """How many generations may run at once: server-wide under gunicorn, else this process's."""
        if self._shared is not None and self._slot is not None:
            return self.max_generations * self._shared.workers
        return self.max_generations

    def admit(self) -> Admission:
        """Raise unless a new generation may start now (before any work or byte is sent). What it returns
        counts until released: on every way out, exceptions included (`app.generation.job.Generation`
        releases it when it is closed)."""
        if self.refusing:
            raise ShuttingDown("The server is shutting down; retry shortly.", headers={"Retry-After": "1"})
        if self._shared is not None and self._slot is not None:
            admitted = self._shared.try_acquire(self._slot, self.capacity)
        else:
            admitted = self.held < self.max_generations
        if not admitted:
            raise RateLimited(
                f"The server is at its limit of {self.capacity} concurrent generations; retry shortly.",
                headers={"Retry-After": "2"},
            )
        self.held += 1
        try:
            member = self.fleet.acquire() if self.fleet is not None else None
        except BaseException:  # the fleet refused (429), or Redis failed: the server's place goes back
            self._release(None)
            raise
        return Admission(self, member)

    def _release(self, member: str | None) -> None:
        self.held -= 1
        if self._shared is not None and self._slot is not None:
            self._shared.release(self._slot)
        if member is not None and self.fleet is not None:
            self.fleet.release(member)

    def started(self, generation: Generation) -> None:
        self.active.add(generation)

    def ended(self, generation: Generation) -> None:
        self.active.discard(generation)

    def drain(self, deadline_seconds: float, *, refuse_new: bool = True) -> None:
        """SIGTERM: readiness turns false, and new work is refused unless `refuse_new` is false, which a
        server whose way in closes with the drain says (app.transport.worker: whatever reaches the app
        then was already on its way, and refusing it would lose it). Streams still running at the
        deadline end with an error event."""
        if self.draining:
            return
        self.draining = True
        self.refusing = refuse_new
        log.info("draining: %d generations running, %.0f s to finish", len(self.active), deadline_seconds)
        gevent.spawn_later(deadline_seconds, self._abort_remaining)

    def _abort_remaining(self) -> None:
        for generation in list(self.active):
            generation.abort(Unavailable("The server shut down before the generation finished."))
