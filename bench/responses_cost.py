"""What a Responses API stream adds per token (bench/PERFORMANCE.md), in-process: the framing of an
ordinary stream, and a background stream's events through the store, written per tick for all running
responses at once, as the worker's writer does (`app.api.responses.EventWriter`).

    python -m bench.responses_cost [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from app.api.responses_wire import ResponsesRequest, ResponseStream, frame
from app.response_store import LocalResponseStore, RedisResponseStore, ResponseStore

REQUEST = ResponsesRequest(model="write_tutorial", input="x")


def framing(tokens: int = 20_000) -> float:
    """CPU µs per token of an ordinary stream's events."""
    rs = ResponseStream(REQUEST)
    started = time.process_time()
    for _ in range(tokens):
        b"".join(frame(event) for event in rs.token("content", " word"))
    return (time.process_time() - started) / tokens * 1e6


def stored(store: ResponseStore, streams: int, ticks: int, per_tick: int) -> float:
    """CPU µs per token of background streams: events built, then written once a tick for all."""
    responses = [ResponseStream(REQUEST) for _ in range(streams)]
    for rs in responses:
        store.create(rs.snapshot())
        store.append(rs.id, rs.start())
    started, tokens = time.process_time(), 0
    for _ in range(ticks):
        batch = {}
        for rs in responses:
            events = []
            for _ in range(per_tick):
                events += rs.token("content", " word")
            batch[rs.id] = events
            tokens += per_tick
        store.append_many(batch)
    return (time.process_time() - started) / tokens * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", help="a Redis URL to measure the Redis store too")
    args = parser.parse_args()
    print(f"framing, an ordinary stream: {framing():.1f} µs/token")
    with tempfile.TemporaryDirectory() as folder:
        stores: list[tuple[str, ResponseStore]] = [("folder", LocalResponseStore(Path(folder), 3600))]
        if args.redis:
            stores.append(("Redis", RedisResponseStore(args.redis, 3600)))
        for name, store in stores:
            for per_tick in (1, 3):
                many = stored(store, 50, 200, per_tick)
                one = stored(store, 1, 3000, per_tick)
                print(f"{name}, {per_tick}/tick: 50 streams {many:.1f}, one stream {one:.1f} µs/token")


if __name__ == "__main__":
    main()
