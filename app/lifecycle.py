"""Admission and shutdown for one worker: how many generations run, and draining on SIGTERM.

NOTE: all of this runs on the worker's one thread (WSGI greenlets and the drain greenlet), so the set
needs no lock.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent

from app.errors import RateLimited, ShuttingDown, Unavailable

if TYPE_CHECKING:
    from app.generation.job import Generation

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, max_generations: int) -> None:
        self.max_generations = max_generations
        self.active: set[Generation] = set()
        self.draining = False
        self.refusing = False  # while draining, whether new work is refused (see drain)

    def admit(self) -> None:
        """Raise unless a new generation may start now (before any work or byte is sent)."""
        if self.refusing:
            raise ShuttingDown("The server is shutting down; retry shortly.", headers={"Retry-After": "1"})
        if len(self.active) >= self.max_generations:
            raise RateLimited(
                f"The server is at its limit of {self.max_generations} concurrent generations per worker; "
                "retry shortly.",
                headers={"Retry-After": "2"},
            )

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
