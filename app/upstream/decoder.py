"""Server-sent events, decoded by hand: only `data` fields matter to a chat completion stream."""

from __future__ import annotations

from app.errors import UpstreamError

MAX_LINE_BYTES = 1 << 20  # far above any chunk a real model sends (a few hundred bytes)


class EventDecoder:
    """Server-sent events to `data` payloads: fields other than `data` and comments are ignored.

    Linear in its input: a line that has not ended yet is kept as pieces and joined once, when it
    ends, and a line longer than `max_line` bytes is refused (`upstream_bad_output`) instead of
    being buffered without end."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._pieces: list[bytes] = []  # the line not ended yet
        self._held = 0  # its length
        self._max_line = max_line
        self._data: list[bytes] = []

    def _hold(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._held += len(piece)
        if self._held > self._max_line:
            raise UpstreamError(
                f"The upstream LLM sent a line longer than {self._max_line} bytes.",
                code="upstream_bad_output",
            )

    def feed(self, chunk: bytes) -> list[bytes]:
        # The usual read, one whole event of one `data: ` line (a token), without splitting it up.
        end = len(chunk) - 2
        if (
            chunk.find(b"\n") == end
            and chunk.startswith(b"data: ")
            and chunk[end + 1] == 10
            and chunk[end - 1] != 13
            and not self._pieces
            and not self._data
        ):
            return [chunk[6:end]]
        if b"\n" not in chunk:
            self._hold(chunk)
            return []
        if self._pieces:
            chunk = b"".join(self._pieces) + chunk
            self._pieces, self._held = [], 0
        *lines, rest = chunk.split(b"\n")
        if rest:
            self._hold(rest)
        events = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events
