"""A gevent primitive: one repeating timer that wakes the greenlets waiting on many sockets in batches."""

from __future__ import annotations

import errno
import logging
import select
import time
from collections.abc import Callable
from typing import Any

from gevent import monkey
from gevent.hub import Waiter, get_hub

log = logging.getLogger(__name__)

_NativeEpoll = monkey.get_original("select", "epoll")
_DEADLINE_SECONDS = 0.1  # how often the tick looks at the waiters' deadlines
# Readable sockets a tick should find before the interval may lengthen: each tick costs a process
# wake-up whatever it relays, about what relaying one to three tokens costs (bench/PERFORMANCE.md);
# over 20 tokens its share of each stays small.
_TARGET_READY = 20
_STEP = 0.005  # the interval moves in steps of 5 ms: the timer is not restarted for noise


def adapt(
    rate: float | None, ready: int, elapsed: float, shortest: float, longest: float
) -> tuple[float, float]:
    """After a tick that found `ready` readable sockets `elapsed` seconds after the one before: the
    smoothed rate of readable sockets a second (`rate` before it; None from rest), and the interval
    that would find `_TARGET_READY` at that rate, within [shortest, longest], in steps of `_STEP`."""
    seen = ready / elapsed if elapsed > 0 else 0.0
    if rate is None:
        rate = seen
    else:  # NOTE: a faster rate counts at once (half weight), a slower one over ~10 ticks: from
        # the longest interval, a burst of streams is relayed at the shortest within ~0.15 s
        rate += (0.5 if seen > rate else 0.1) * (seen - rate)
    wanted = longest if rate <= 0 else _TARGET_READY / rate
    return rate, min(max(round(wanted / _STEP) * _STEP, shortest), longest)


class ReadinessPoller:
    """Wakes the greenlets waiting on upstream sockets in batches, every `interval` seconds or so.

    Waiting on a socket the usual gevent way costs, per token, a watcher started and stopped, a timer,
    and usually a whole `epoll_wait` and process wake-up of its own: at 20 tokens/s per stream the
    worker wakes once per token. Here one repeating timer polls a native epoll of every relayed
    socket and switches to each ready reader in turn: a worker under load wakes `1/interval` times a
    second, whatever the streams, and a token waits at most `interval` (20 ms by default). With few
    tokens arriving, the interval lengthens, up to `longest`, until a tick finds about
    `_TARGET_READY` readable sockets (adaptive moderation, as network cards do with interrupts); it
    shortens again as soon as they arrive faster. A reader may instead leave its reads to the tick
    (`wait(..., pump)`): then it is switched to only when `pump` has something for it. Deadlines
    (heartbeats, read timeouts) are checked every `_DEADLINE_SECONDS` or so.
    """

    def __init__(self, interval: float, longest: float | None = None) -> None:
        self.interval = interval  # the shortest
        self.longest = max(interval, longest or interval)
        self.current = interval  # what the timer repeats at now
        self._rate: float | None = None  # readable sockets a second, smoothed over ~10 ticks
        self._epoll: Any = None
        self._registered: set[int] = set()
        self._waiting: dict[int, tuple[Waiter, float, Callable[[], Any] | None]] = {}
        self._timer: Any = None
        self._deadlines_at = 0.0  # when the tick looks at the deadlines next
        self._ticked = 0.0  # when the timer last ticked (or started)

    def wait(self, fd: int, timeout: float, pump: Callable[[], Any] | None = None) -> Any:
        """Until `fd` is readable (True) or `timeout` passed (False); OSError if `forget` is called.

        With `pump`, the tick calls `pump()` itself, in the hub, each time `fd` is readable, and the
        caller wakes only with its first result that is not None (or with what it raised). The hub
        must not block: `pump` reads and writes without waiting.
        """
        if self._epoll is None:
            self._epoll = _NativeEpoll()
        if fd not in self._registered:
            self._epoll.register(fd, select.EPOLLIN)
            self._registered.add(fd)
        waiter = Waiter()
        self._waiting[fd] = (waiter, time.monotonic() + timeout, pump)
        if self._timer is None:  # from rest: the shortest interval, until the rate is known
            self._rate = None
            self._start(self.interval)
        try:
            return waiter.get()
        finally:
            entry = self._waiting.get(fd)
            if entry is not None and entry[0] is waiter:
                del self._waiting[fd]

    def _adapt(self, ready: int, now: float) -> None:
        """After a tick that found `ready` readable sockets: restart the timer if `adapt` wants
        another interval."""
        elapsed, self._ticked = now - self._ticked, now
        self._rate, wanted = adapt(self._rate, ready, elapsed, self.interval, self.longest)
        if abs(wanted - self.current) >= _STEP / 2:
            self._timer.stop()
            self._start(wanted)

    def forget(self, fd: int) -> None:
        """Before `fd` is closed (or pooled): unregister it; its waiter, if any, gets an OSError."""
        if fd in self._registered:
            self._registered.discard(fd)
            self._epoll.unregister(fd)
        entry = self._waiting.pop(fd, None)
        if entry is not None:
            closed = OSError(errno.EBADF, "the upstream connection was closed")
            get_hub().loop.run_callback(entry[0].throw, closed)

    def _start(self, interval: float) -> None:
        self.current = interval
        self._ticked = time.monotonic()
        self._timer = get_hub().loop.timer(interval, interval)
        self._timer.start(self._tick)

    def _tick(self) -> None:  # runs in the hub
        try:
            waiting = self._waiting
            ready = self._epoll.poll(0)
            for fd, _ in ready:
                entry = waiting.pop(fd, None)
                if entry is None:
                    continue
                waiter, _, pump = entry
                if pump is None:
                    waiter.switch(True)
                    continue
                try:
                    result = pump()
                except BaseException as exc:  # the waiter raises it, as if it had read itself
                    waiter.throw(exc)
                    continue
                if result is None:
                    waiting[fd] = entry
                else:
                    waiter.switch(result)
            now = time.monotonic()
            if now >= self._deadlines_at and waiting:
                self._deadlines_at = now + _DEADLINE_SECONDS
                expired = [fd for fd, (_, deadline, _) in waiting.items() if deadline <= now]
                for fd in expired:
                    entry = waiting.get(fd)  # an earlier switch may have changed the table
                    if entry is not None and entry[1] <= now:
                        del waiting[fd]
                        entry[0].switch(False)
            if not self._registered and not waiting:
                self._timer.stop()
                self._timer = None
            elif self.longest > self.interval:
                self._adapt(len(ready), now)
        except Exception:  # never let the tick die: every stream of the worker depends on it
            log.exception("upstream poller tick failed")
