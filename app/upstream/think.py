"""`<think>...</think>` at the start of a reply's content: how reasoning models served by Ollama or
llama.cpp (Qwen3, DeepSeek-R1 distills) send their thinking. Split off as reasoning, in order, so that
it never reaches MetaGPT's parsing nor a file.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"
_UNDECIDED, _THINKING, _AFTER, _DONE = range(4)


class ThinkSplitter:
    """Fed a reply's content piece by piece, returns (reasoning, content) for each piece. Decided at
    the first content that is not whitespace: a reply that does not open with `<think>` is content
    from there on, and `done` turns true (the caller then stops feeding it). A tag split across
    pieces is held back until it is whole."""

    __slots__ = ("_held", "_state")

    def __init__(self) -> None:
        self._held = ""
        self._state = _UNDECIDED

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, text: str) -> tuple[str, str]:
        held, self._held = self._held + text, ""
        if self._state == _UNDECIDED:
            stripped = held.lstrip()
            if not stripped or (OPEN.startswith(stripped) and stripped != OPEN):
                self._held = held  # whitespace, or the start of the tag: wait for more
                return "", ""
            if not stripped.startswith(OPEN):
                self._state = _DONE
                return "", held
            self._state, held = _THINKING, stripped[len(OPEN) :]
        if self._state == _THINKING:
            end = held.find(CLOSE)
            if end < 0:
                keep = next(
                    (n for n in range(min(len(CLOSE) - 1, len(held)), 0, -1) if CLOSE.startswith(held[-n:])),
                    0,
                )
                self._held = held[len(held) - keep :]
                return held[: len(held) - keep], ""
            thought, held = held[:end], held[end + len(CLOSE) :]
            self._state = _AFTER
            answer = held.lstrip()  # the blank lines between the thinking and the answer
            if answer:
                self._state = _DONE
            return thought, answer
        if self._state == _AFTER:
            held = held.lstrip()
            if held:
                self._state = _DONE
            return "", held
        return "", held

    def flush(self) -> tuple[str, str]:
        """At the end of the reply: what was held back (an unclosed thought is reasoning)."""
        held, self._held = self._held, ""
        state, self._state = self._state, _DONE
        return (held, "") if state == _THINKING else ("", held)
