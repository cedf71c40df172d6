"""The one bridge per worker between gevent (the WSGI side) and asyncio (where MetaGPT runs).

NOTE: the loop runs `run_forever` inside a greenlet on the worker's only OS thread: asyncio and the
WSGI greenlets take turns on one hub, so asyncio code may hand values to gevent primitives (see
`app.generation`) without locks. A per-request thread with `asyncio.run` (the original example) fails
under gevent, and an OS thread with the stdlib selector hangs: both measured.

The loop's selector is a native epoll whose own file descriptor is what gevent waits on. gevent's
`GeventSelector` (what monkey-patching makes the default) starts and stops a watcher for every
registered socket on every loop iteration, a cost that grows with the number of streams
(bench/PERFORMANCE.md). Waiting on the one epoll descriptor costs the same whatever the number of
sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import selectors
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import gevent
from gevent import monkey
from gevent.hub import get_hub
from gevent.socket import wait_read

log = logging.getLogger(__name__)
T = TypeVar("T")


# The stdlib's epoll selector class as it was before monkey-patching (it holds the native select.epoll).
_NativeEpollSelector: type[selectors.BaseSelector] = monkey.get_original("selectors", "EpollSelector")


class CooperativeEpollSelector(_NativeEpollSelector):  # type: ignore[misc,valid-type]
    """A native epoll selector that blocks cooperatively: gevent waits on the epoll descriptor itself."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout > 0:
            with contextlib.suppress(socket.timeout):
                wait_read(self.fileno(), timeout=timeout, timeout_exc=socket.timeout)
        return super().select(0)


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on one of gevent's native threads, awaited on the loop: for blocking calls such as
    a file's `fsync`, which on the worker's one OS thread would stop every stream of the worker and
    the loop itself for as long as the disk takes (under disk load, milliseconds to seconds)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any) -> None:  # in the hub, on the worker's thread
        if future.done():  # cancelled meanwhile
            return
        if result.successful():
            future.set_result(result.value)
        else:
            future.set_exception(result.exception)

    # NOTE: the callback runs in the hub greenlet, on the loop's thread: call_soon_threadsafe wakes the
    # loop through its self-pipe in case it is waiting for I/O.
    get_hub().threadpool.spawn(fn, *args).rawlink(lambda result: loop.call_soon_threadsafe(settle, result))
    return await future


class AsyncioBridge:
    """Owns one asyncio loop; `submit` runs a coroutine there and returns a cancellable future."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._greenlet: gevent.Greenlet | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._start()
        assert self._loop is not None
        return self._loop

    def _start(self) -> None:
        # Started on first use, never at import: a module import must not start loops.
        loop = asyncio.SelectorEventLoop(CooperativeEpollSelector())
        self._loop = loop
        self._greenlet = gevent.spawn(self._run, loop)
        log.debug("asyncio bridge started with %s", type(loop._selector).__name__)  # type: ignore[attr-defined]

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` as a task; cancelling the returned future cancels the task."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def tasks(self) -> int:
        """Tasks alive on the loop (for tests and metrics): 0 when no job is left behind."""
        if self._loop is None:
            return 0
        return sum(1 for task in asyncio.all_tasks(self._loop) if not task.done())

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._greenlet is not None:
            self._greenlet.join(timeout=5)
