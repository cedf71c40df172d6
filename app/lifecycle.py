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


class Lifecycle:
    def __init__(
        self, max_generations: int, shared: SharedCounts | None = None, fleet: FleetLimit | None = None
    ) -> None:
        self.max_generations = max_generations  # per worker
        self.active: set[Generation] = set()
        self.fleet = fleet  # the limit across hosts (Redis), when configured
        self._members: dict[Generation, str] = {}  # each generation's slot in the fleet's set
        self._admitted: str | None = None  # the slot `admit` took, until `started` binds it
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

    def admit(self) -> None:
        """Raise unless a new generation may start now (before any work or byte is sent). Once admitted,
        a generation counts until `ended`: the caller must go on to create it (which calls `started`)."""
        if self.refusing:
            raise ShuttingDown("The server is shutting down; retry shortly.", headers={"Retry-After": "1"})
        if self._shared is not None and self._slot is not None:
            if self._shared.try_acquire(self._slot, self.capacity):
                self._admit_fleet()
                return
        elif len(self.active) < self.max_generations:
            self._admit_fleet()
            return
        raise RateLimited(
            f"The server is at its limit of {self.capacity} concurrent generations; retry shortly.",
            headers={"Retry-After": "2"},
        )

    def _admit_fleet(self) -> None:
        """After the server's own check: the fleet's, which may refuse (and gives the server's slot back).
        NOTE: `admit`'s caller creates the generation without yielding, so `started` binds this slot."""
        if self.fleet is None:
            return
        if self._admitted is not None:  # admitted, but its generation never started: give it back
            self.fleet.release(self._admitted)
            self._admitted = None
        try:
            self._admitted = self.fleet.acquire()
        except Exception:
            if self._shared is not None and self._slot is not None:
                self._shared.release(self._slot)
            raise

    def started(self, generation: Generation) -> None:
        self.active.add(generation)
        if self._admitted is not None:
            self._members[generation] = self._admitted
            self._admitted = None

    def ended(self, generation: Generation) -> None:
        if generation in self.active:
            self.active.remove(generation)
            if self._shared is not None and self._slot is not None:
                self._shared.release(self._slot)
            member = self._members.pop(generation, None)
            if member is not None and self.fleet is not None:
                self.fleet.release(member)

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
