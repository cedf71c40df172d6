"""One LLM call, handed from MetaGPT's side (the asyncio loop) to the greenlet that relays its reply."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.agents.base import Kind

if TYPE_CHECKING:
    from app.upstream.reply import ReplyStream


@dataclass(eq=False)
class Call:
    """One LLM call MetaGPT awaits on the loop. The request's greenlet streams it (`app.generation`)
    and settles `future` with (reply, usage) or an `UpstreamError`; `cancel()` comes from the loop."""

    payload: dict[str, Any]
    kind: Kind
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[tuple[str, dict[str, Any] | None]]
    stream: ReplyStream | None = None
    cancelled: bool = False
    parts: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None

    def settle(self, exc: BaseException | None = None) -> None:
        if not self.cancelled:
            result = ("".join(self.parts), self.usage)
            self.loop.call_soon_threadsafe(_settle, self.future, result, exc)

    def cancel(self) -> None:
        """Nobody waits any more: a reader blocked on the upstream wakes and drops it."""
        self.cancelled = True
        if self.stream is not None and not self.stream.finished:
            self.stream.close()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
