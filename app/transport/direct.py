"""The fast path's last step: a token read in the upstream poller's tick, framed and sent to the client
in the hub, without waking the request's greenlet (`app.generation.Generation.relay_to`)."""

from __future__ import annotations

from collections.abc import Callable

from app.agents.base import Kind
from app.metrics import Batched
from app.transport.socket_body import SocketBody


class DirectRelay:
    """Tokens from the poller's tick to the client (`Generation.relay_to`), framed and counted like
    `app.generation.body` frames and counts the events it sends."""

    __slots__ = ("_body", "_frames", "_left", "_tokens", "_written")

    def __init__(
        self,
        body: SocketBody,
        frames: dict[Kind, Callable[[str], bytes]],
        tokens: dict[Kind, Batched],
        written: Batched,
    ) -> None:
        self._body, self._frames, self._tokens, self._written = body, frames, tokens, written
        self._left = 0  # bytes of the event `now` could not send in full

    def now(self, kind: Kind, text: str, count: int) -> bool:
        """In the hub: frame, count and send the token without waiting; False if part of it (or the
        error of sending it) is left for `wait`."""
        self._tokens[kind].add(count)
        event = self._frames[kind](text)
        if self._body.send_now(event):
            self._written.add(len(event))
            return True
        self._left = len(event)
        return False

    def wait(self) -> None:
        """In the reader's greenlet: send what `now` left, waiting for the client; raises OSError."""
        self._body.flush()
        self._written.add(self._left)
        self._left = 0
