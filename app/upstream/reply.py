"""The seam between the relay (`app.generation`) and the upstream reader: what one read of a reply is,
and what the relay needs of a reply and of the client that starts it.

`UpstreamClient` (this package) implements it over raw sockets; a stock client (httpx, the openai SDK)
could be swapped in by implementing `ReplyClient` with `steady` always False: the relay then only
calls `read`, from the request's greenlet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class Read:
    """What one read of the reply brought: its content text (maybe empty), how many chunks had
    content, the usage (on the last), whether the upstream was merely silent, and the model's
    thinking text (a reasoning model's, never part of the reply MetaGPT gets)."""

    text: str = ""
    tokens: int = 0
    usage: dict[str, Any] | None = None
    silent: bool = False
    reasoning: str = ""


SILENT = Read(silent=True)


class ReplyStream(Protocol):
    """One streamed chat completion, read piece by piece by the greenlet that relays it.

    Every failure of the upstream is raised as `app.errors.UpstreamError`; after `close()` (from any
    greenlet) a blocked reader raises `OSError` at once.
    """

    finished: bool  # the reply is complete: its last `Read` was returned

    @property
    def steady(self) -> bool:
        """Whether `pump` may be used now (the reply is under way and its reads never wait)."""
        ...

    def read(self, wait: float | None) -> Read:
        """What arrived within `wait` seconds (None: no limit); `SILENT` when nothing did."""
        ...

    def pump(self, idle_since: Callable[[], float], wait: float, take: Callable[[Read], Any]) -> Any:
        """Like `read`, but each read is handed to `take` in the hub; returns the first result of
        `take` that is not None, or `SILENT` once `wait` seconds passed since `idle_since()` (when the
        client was last sent something)."""
        ...

    def close(self) -> None:
        """Stop: the upstream sees the request end; a blocked reader wakes with `OSError`."""
        ...


class ReplyClient(Protocol):
    """Starts streamed chat completions (one client per worker)."""

    def stream(self, payload: dict[str, Any]) -> ReplyStream:
        """A reply to `payload` (OpenAI's chat completion request body), not started yet."""
        ...
