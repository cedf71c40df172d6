"""Upstream parsing (SSE, chunks) and the batch poller's interval, with real sockets under gevent."""

from __future__ import annotations

import pytest

from app.errors import UpstreamError
from app.upstream import EventDecoder, parse_chunk
from app.upstream.poller import adapt
from app.upstream.think import ThinkSplitter


@pytest.mark.parametrize(
    ("chunks", "events"),
    [
        ([b"data: a\n\n"], [b"a"]),
        ([b"data: a\n", b"\ndata: b\n\n"], [b"a", b"b"]),
        ([b"da", b'ta: {"x":1}\r\n\r\n'], [b'{"x":1}']),
        ([b": comment\n\nevent: message\ndata: one\ndata: two\nid: 3\n\n"], [b"one\ntwo"]),
        ([b"data:nospace\n\n", b"data: [DONE]\n\n"], [b"nospace", b"[DONE]"]),
        ([b"data: partial"], []),
        ([b"\n\n\n"], []),
    ],
)
def test_event_decoder(chunks, events):
    decoder = EventDecoder()
    out = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    assert out == events


def test_event_decoder_byte_by_byte():
    stream = b'data: {"choices":[{"delta":{"content":"caf\xc3\xa9"}}]}\n\ndata: [DONE]\n\n'
    decoder = EventDecoder()
    out = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert out == [b'{"choices":[{"delta":{"content":"caf\xc3\xa9"}}]}', b"[DONE]"]


@pytest.mark.parametrize(
    ("payload", "content", "usage"),
    [
        (b'{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}', "Hi", None),
        (b'{"choices":[{"index":0,"delta":{"role":"assistant"}}]}', "", None),
        (b'{"choices":[{"index":0,"delta":{"content":null}}]}', "", None),
        (
            b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}',
            "",
            {"prompt_tokens": 3, "completion_tokens": 4},
        ),
        (b'{"choices":[{"delta":{}}],"usage":null}', "", None),
    ],
)
def test_parse_chunk(payload, content, usage):
    assert parse_chunk(payload) == (content, "", usage)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_parse_chunk_reads_a_reasoning_models_thinking(field):
    payload = b'{"choices":[{"delta":{"%s":"Let me think","content":null}}]}' % field.encode()
    assert parse_chunk(payload) == ("", "Let me think", None)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "upstream_bad_output"),
        (b"[1,2]", "upstream_bad_output"),
        (b'{"error":{"message":"overloaded"}}', "upstream_status"),
    ],
)
def test_parse_chunk_errors(payload, code):
    with pytest.raises(UpstreamError) as info:
        parse_chunk(payload)
    assert info.value.code == code


class _Ticks:
    """The poller's tick on a fake clock: each tick finds the sockets that became readable since the
    last one and gets the interval `adapt` chose for the next."""

    def __init__(self, shortest: float = 0.02, longest: float = 0.05) -> None:
        self.shortest, self.longest = shortest, longest
        self.rate: float | None = None
        self.current = shortest  # from rest: the shortest interval, until the rate is known
        self.clock = 0.0

    def run(self, streams: int, tokens_per_second: float, seconds: float) -> None:
        """`streams` streams, each sending `tokens_per_second`, for `seconds` of fake time."""
        end = self.clock + seconds
        while self.clock < end:
            ready = min(streams, round(streams * tokens_per_second * self.current))
            self.rate, self.current = adapt(self.rate, ready, self.current, self.shortest, self.longest)
            self.clock += self.current


def test_the_relay_interval_lengthens_while_few_tokens_arrive_and_shortens_at_once_when_many_do():
    ticks = _Ticks()
    ticks.run(streams=0, tokens_per_second=0, seconds=0.3)
    assert ticks.current == 0.05  # nothing arrives: the fewest wake-ups
    ticks.run(streams=40, tokens_per_second=50, seconds=0.5)  # 40 readable each tick
    assert ticks.current == 0.02
    ticks.run(streams=5, tokens_per_second=20, seconds=1.5)  # at most 5 readable a tick
    assert ticks.current == 0.05
    start = ticks.clock
    while ticks.current != 0.02:  # the rate jumps: the shortest interval within a few ticks
        ticks.run(streams=40, tokens_per_second=50, seconds=0.001)
    assert ticks.clock - start <= 0.15


def test_the_interval_finds_about_twenty_readable_sockets_a_tick_between_its_bounds():
    ticks = _Ticks(0.02, 0.2)
    ticks.run(streams=25, tokens_per_second=20, seconds=5)  # 500 tokens/s: 20 in 40 ms
    assert ticks.current == pytest.approx(0.04)


def test_a_poller_whose_longest_interval_is_its_shortest_keeps_it():
    ticks = _Ticks(0.02, 0.02)
    for streams in (0, 5, 40):
        ticks.run(streams=streams, tokens_per_second=20, seconds=1)
        assert ticks.current == 0.02


def _split(pieces: list[str]) -> tuple[str, str]:
    splitter, thought, text = ThinkSplitter(), "", ""
    for piece in pieces:
        r, c = splitter.feed(piece)
        thought, text = thought + r, text + c
    r, c = splitter.flush()
    return thought + r, text + c


@pytest.mark.parametrize(
    ("reply", "thought", "text"),
    [
        ('<think>\nPlan {"a": 1}\n</think>\n\n{"title": "T"}', '\nPlan {"a": 1}\n', '{"title": "T"}'),
        ("  \n<think>x</think>answer", "x", "answer"),
        ("no thinking here, <think> later is text", "", "no thinking here, <think> later is text"),
        ("<thinking is not the tag", "", "<thinking is not the tag"),
        ("<think>never closed", "never closed", ""),
        ("<think></think>", "", ""),
        ("  ", "", "  "),
        ("", "", ""),
    ],
)
def test_a_think_block_at_the_start_of_the_content_is_reasoning_however_it_is_cut(reply, thought, text):
    assert _split([reply]) == (thought, text)
    for size in (1, 2, 3, 7):  # the tags split across pieces
        assert _split([reply[i : i + size] for i in range(0, len(reply), size)]) == (thought, text), size


def test_the_splitter_steps_aside_once_the_content_has_begun():
    splitter = ThinkSplitter()
    assert splitter.feed("Hello") == ("", "Hello") and splitter.done


def test_a_long_line_is_kept_as_its_pieces_until_it_ends_and_refused_past_the_limit():
    decoder = EventDecoder(max_line=1 << 22)
    line = b"data: " + b"x" * (1 << 21)
    pieces = [line[i : i + 4096] for i in range(0, len(line), 4096)]
    for piece in pieces:  # 513 reads of one line: held, never joined nor re-split until it ends
        assert decoder.feed(piece) == []
    assert decoder._pieces == pieces and decoder._pieces[-1] is pieces[-1]
    assert decoder.feed(b"\n\n") == [b"x" * (1 << 21)]
    small = EventDecoder(max_line=1000)
    small.feed(b"data: " + b"y" * 900)
    with pytest.raises(UpstreamError) as info:
        small.feed(b"y" * 200)
    assert info.value.code == "upstream_bad_output" and "1000 bytes" in info.value.message
