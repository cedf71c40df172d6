"""`ReadinessPoller` on real sockets and real timers: readers woken, or relayed for, in batches, and
the interval following the rate of readable sockets (`adapt`, on a fake clock, is in the unit tests)."""

from __future__ import annotations

import socket
import time

import gevent
import pytest

from app.upstream import ReadinessPoller

pytestmark = pytest.mark.integration


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
