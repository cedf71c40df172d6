"""Upstream parsing (SSE, chunks) and the batch poller's interval, with real sockets under gevent."""

from __future__ import annotations

import socket
import time

import gevent
import pytest

from app.errors import UpstreamError
from app.upstream import EventDecoder, ReadinessPoller, parse_chunk


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
    assert parse_chunk(payload) == (content, usage)


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


class _Peers:
    """Socket pairs read by greenlets through one poller (each read taken in its tick), written from
    here at a given rate: `got` counts the bytes each reader got."""

    def __init__(self, poller: ReadinessPoller, count: int) -> None:
        self.pairs = [socket.socketpair() for _ in range(count)]
        self.got = [0] * count
        self.readers = [gevent.spawn(self._read, poller, i) for i in range(count)]

    def _read(self, poller: ReadinessPoller, i: int) -> None:
        sock = self.pairs[i][0]
        sock.setblocking(False)

        def pump() -> str | None:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                return None
            self.got[i] += len(data)
            return None if data else "closed"

        while poller.wait(sock.fileno(), 30.0, pump) != "closed":
            pass
        poller.forget(sock.fileno())

    def write(self, count: int, rate: float, seconds: float) -> int:
        """One byte to each of the first `count` peers, `rate` times a second, for `seconds`."""
        sent = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _, peer in self.pairs[:count]:
                peer.send(b"x")
                sent += 1
            gevent.sleep(1 / rate)
        return sent

    def close(self) -> None:
        for _, peer in self.pairs:
            peer.close()
        gevent.joinall(self.readers, timeout=5, raise_error=True)
        for sock, _ in self.pairs:
            sock.close()


def test_the_poller_relays_less_often_while_few_tokens_arrive_and_at_once_when_many_do():
    poller = ReadinessPoller(0.02, 0.05)
    peers = _Peers(poller, 40)
    try:
        gevent.sleep(0)
        assert poller.current == 0.02  # from rest: the shortest interval, until the rate is known
        gevent.sleep(0.3)
        assert poller.current == 0.05  # nothing arrives: the fewest wake-ups
        sent = peers.write(40, 50, 0.5)  # 2,000 tokens/s from 40 streams: all 40 readable each tick
        assert poller.current == 0.02
        sent += peers.write(5, 20, 1.5)  # 100 tokens/s from 5 streams: at most 5 readable a tick
        assert poller.current == 0.05
        gevent.sleep(0.1)
        assert sum(peers.got) == sent  # every byte read, in the tick
        sent += peers.write(40, 50, 0.5)  # the rate jumps: the shortest interval within a few ticks
        assert poller.current == 0.02
        gevent.sleep(0.1)
        assert sum(peers.got) == sent
    finally:
        peers.close()
    assert poller._timer is None  # nothing left to wait on: the timer stopped


def test_a_poller_whose_longest_interval_is_its_shortest_keeps_it():
    poller = ReadinessPoller(0.02, 0.01)
    peers = _Peers(poller, 5)
    try:
        sent = peers.write(5, 20, 1.0)
        assert (poller.current, poller.longest) == (0.02, 0.02)
        gevent.sleep(0.1)
        assert sum(peers.got) == sent
    finally:
        peers.close()
