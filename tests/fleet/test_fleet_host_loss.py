"""Losing a host: SIGKILLed, it loses only its own streams and new requests from a second later all
succeed elsewhere; SIGTERMed, it drains: nothing is lost, while new requests keep arriving."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.fleet.clients import QUICK, Generation, generate
from tests.fleet.gateways import Fleet

OPEN = 9  # three a host (least_conn)
# A generation that runs for about STALL seconds: its section's LLM call pauses after two tokens.
STALL = 4
LONG = f"[[sections:1]][[pace:0]][[fault:stall]][[fault_at:section]][[after:2]][[stall:{STALL}]]"

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(main_fleet: Fleet):
    yield main_fleet
    main_fleet.restart_stopped()


def open_streams(fleet: Fleet, pool: ThreadPoolExecutor, name: str) -> list[Future[Generation]]:
    """OPEN long generations through the edge, returned once every one of them is running."""
    futures = [pool.submit(generate, fleet.url, f"{name} {n} {LONG}") for n in range(OPEN)]
    deadline = time.monotonic() + 20
    while fleet.sum_metric("gateway_active_generations") < OPEN:
        assert time.monotonic() < deadline, [f.result() for f in futures if f.done()]
        time.sleep(0.1)
    return futures


def keep_sending(url: str, name: str, clients: int, until: threading.Event) -> list[Generation]:
    """`clients` clients each sending quick generations one after another until `until` is set."""

    def client(c: int) -> list[Generation]:
        out = []
        while not until.is_set():
            out.append(generate(url, f"{name} {c}-{len(out)} {QUICK}"))
        return out

    with ThreadPoolExecutor(clients) as pool:
        return [g for gens in pool.map(client, range(clients)) for g in gens]


def test_a_killed_host_loses_only_its_own_streams_and_new_requests_a_second_later_succeed(fleet):
    victim = fleet.gateways[1]
    with ThreadPoolExecutor(OPEN) as pool:
        streams = open_streams(fleet, pool, "Killed")
        on_victim = int(victim.metric("gateway_active_generations"))
        victim.daemon.kill()
        killed = time.monotonic()
        time.sleep(1)
        stop = threading.Event()
        threading.Timer(STALL, stop.set).start()
        after = keep_sending(fleet.url, "After the kill", 4, stop)
        results = [f.result() for f in streams]
    lost = [g for g in results if not g.done]
    assert on_victim >= 1, "the killed host had no stream"
    assert len(lost) == on_victim, f"{len(lost)} streams lost, the killed host had {on_victim}"
    assert all(not g.has_link() for g in lost)
    failed = [(g.status, g.error, g.raw[-200:]) for g in after if not g.done]
    assert not failed and len(after) >= 8, f"{len(failed)} of {len(after)} new requests failed: {failed[:3]}"
    print(
        f"killed a host with {on_victim} of {OPEN} streams; {len(after)} new requests from 1 s to "
        f"{time.monotonic() - killed:.1f} s after, all complete"
    )


def test_a_drained_host_loses_nothing_while_new_requests_keep_arriving(fleet):
    with ThreadPoolExecutor(OPEN) as pool:
        streams = open_streams(fleet, pool, "Drained")
        # The busiest host (a host killed just before may still be out of nginx's rotation).
        running = {g.metric("gateway_active_generations"): g for g in fleet.gateways}
        on_drained, drained = int(max(running)), running[max(running)]
        stop = threading.Event()
        sender = ThreadPoolExecutor(1).submit(keep_sending, fleet.url, "During the drain", 4, stop)
        time.sleep(0.5)
        started = time.monotonic()
        drained.daemon.signal(signal.SIGTERM)
        assert drained.daemon.proc is not None
        drained.daemon.proc.wait(30)
        took = time.monotonic() - started
        time.sleep(0.5)
        stop.set()
        during = sender.result()
        results = [f.result() for f in streams]
    lost = [(g.status, g.error, g.raw[-200:]) for g in results if not g.done]
    assert not lost, f"{len(lost)} of {OPEN} streams lost in the drain: {lost[:3]}"
    assert all(g.has_link() for g in results)
    failed = [(g.status, g.error, g.raw[-200:]) for g in during if not g.done]
    assert not failed, f"{len(failed)} of {len(during)} requests during the drain failed: {failed[:3]}"
    assert on_drained >= 1 and len(during) >= 8
    print(f"drained a host with {on_drained} streams in {took:.1f} s; {len(during)} new requests meanwhile")
