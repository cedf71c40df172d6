"""Every Prometheus metric the gateway exports, declared in one place, units in the names.

Across gunicorn workers prometheus-client runs in multiprocess mode: PROMETHEUS_MULTIPROC_DIR is set by
whatever starts gunicorn and emptied by `gunicorn.conf.py` at start; a dead worker's files are marked
in `child_exit`; gauges are `livesum` so a dead worker's share drops out; each scrape builds a fresh
registry over the directory. Without the variable (one process, tests in-process) the metrics live
in a private registry.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Seconds: generations take from seconds to many minutes.
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1200)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60)
LLM_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

OTHER_MODEL = "other"  # label for model ids that are not registered: users can't mint label values


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode values go to files whatever the registry; a scrape reads the files.
        self.registry = None if self.multiprocess else CollectorRegistry()
        r = self.registry
        self.active_generations = Gauge(
            "gateway_active_generations",
            "Generations running now.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.streamed_bytes = Counter(
            "gateway_streamed_bytes",
            "Response body bytes written to clients (completions).",
            ["model"],
            registry=r,
        )
        self.requests = Counter(
            "gateway_requests", "Finished requests by HTTP status.", ["model", "stream", "status"], registry=r
        )
        self.generation_duration = Histogram(
            "gateway_generation_duration_seconds",
            "Generation time by outcome.",
            ["model", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gateway_time_to_first_token_seconds",
            "From request arrival to the first token sent.",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.streamed_tokens = Counter(
            "gateway_streamed_tokens",
            "Tokens sent to clients by kind (content, reasoning).",
            ["model", "kind"],
            registry=r,
        )
        self.llm_requests = Counter(
            "gateway_llm_requests", "Upstream LLM calls by outcome.", ["outcome"], registry=r
        )
        self.llm_request_duration = Histogram(
            "gateway_llm_request_duration_seconds",
            "Upstream LLM call duration.",
            buckets=LLM_BUCKETS,
            registry=r,
        )
        # Files of every agent (the names predate the second agent; dashboards keep working).
        self.tutorials_written = Counter(
            "gateway_tutorials_written", "Files written by agents.", ["model"], registry=r
        )
        self.tutorial_bytes = Counter(
            "gateway_tutorial_bytes", "Bytes of files written by agents.", ["model"], registry=r
        )
        self.client_disconnects = Counter(
            "gateway_client_disconnects",
            "Streams whose client went away before the end.",
            ["model"],
            registry=r,
        )
        self.heartbeats = Counter(
            "gateway_heartbeats", "SSE keep-alive comments sent during LLM silence.", ["model"], registry=r
        )

        self.asyncio_tasks = Gauge(
            "gateway_asyncio_tasks",
            "asyncio tasks left on the loops after the last generation ended.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.max_generations = Gauge(
            "gateway_max_generations",
            "Configured generation capacity (per worker, summed).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected_requests = Counter(
            "gateway_rejected_requests",
            "Requests refused before any work, by reason.",
            ["reason"],
            registry=r,
        )

        # The files folder's free space, taken at each scrape (and the margin below which work stops).
        self.files_free_bytes = Gauge(
            "gateway_files_free_bytes",
            "Free space in the files folder's filesystem, at the last scrape.",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.files_min_free_bytes = Gauge(
            "gateway_files_min_free_bytes",
            "GATEWAY_MIN_FREE_BYTES: below it, readiness is false and completions are refused.",
            registry=r,
            multiprocess_mode="livemax",
        )
        # Retention (app.retention): set by the one worker that enforces it, so `livemax` shows its values.
        self.files_kept = Gauge(
            "gateway_files_kept",
            "Files in the files folder after the last retention sweep.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.files_kept_bytes = Gauge(
            "gateway_files_kept_bytes",
            "Bytes of those files.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.files_removed = Counter(
            "gateway_files_removed",
            "Files removed by retention: age, size (the folder's cap), temp (a crashed write's leftover).",
            ["reason"],
            registry=r,
        )
        self.files_removed_bytes = Counter(
            "gateway_files_removed_bytes", "Bytes removed by retention.", ["reason"], registry=r
        )
        self.retention_last_sweep = Gauge(
            "gateway_retention_last_sweep_timestamp_seconds",
            "When retention last swept the folder (Unix time).",
            registry=r,
            multiprocess_mode="livemax",
        )

        # Storage (either backend) and the fleet's limit (app.fleet_limit).
        self.storage_failures = Counter(
            "gateway_storage_failures",
            "Files that could not be saved: full (no space) or error (the disk or the S3 service failed).",
            ["reason"],
            registry=r,
        )
        self.global_limit = Gauge(
            "gateway_global_limit",
            "GATEWAY_GLOBAL_MAX_GENERATIONS, the limit across hosts kept in Redis (0: off).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.global_limit_up = Gauge(
            "gateway_global_limit_up",
            "1 while Redis answers the fleet's limit (always 1 when it is off), 0 after a failed call.",
            registry=r,
            multiprocess_mode="livemin",
        )
        # Multiprocess mode has no process collector: each worker adds its CPU time (app.transport.worker).
        self.worker_cpu = Counter(
            "gateway_worker_cpu_seconds",
            "CPU time of the workers (user and system, every thread), added every few seconds.",
            registry=r,
        )
        # The Responses API's background generations and the clients attached to stored responses.
        self.responses_background = Gauge(
            "gateway_responses_background",
            "Background responses running (their generations run whatever becomes of any connection).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.responses_attached = Gauge(
            "gateway_responses_attached",
            "Clients reading a stored response's events (a background response's stream, or a re-attach).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.responses_resumed = Counter(
            "gateway_responses_resumed",
            "Attaches to a stored response from a sequence number (`starting_after`): resumed streams.",
            registry=r,
        )
        self.global_limit_fallbacks = Counter(
            "gateway_global_limit_fallbacks",
            "Admissions decided without Redis, by GATEWAY_GLOBAL_LIMIT_ON_REDIS_DOWN (local or refuse).",
            ["mode"],
            registry=r,
        )

    def start_at_zero(self, models: list[str]) -> None:
        """Create every model's series now, at 0, so that rates and alerts work before the first request
        (a labelled series a process has not touched does not exist)."""
        for model in models:
            self.active_generations.labels(model)
            self.streamed_bytes.labels(model)
            self.time_to_first_token.labels(model)
            self.client_disconnects.labels(model)
            self.heartbeats.labels(model)
            self.tutorials_written.labels(model)
            self.tutorial_bytes.labels(model)
            for outcome in ("completed", "cancelled", "failed", "rejected"):
                self.generation_duration.labels(model, outcome)
            for kind in ("content", "reasoning"):
                self.streamed_tokens.labels(model, kind)
            for stream in ("true", "false"):
                self.requests.labels(model, stream, "200")
        for outcome in ("completed", "cancelled", "failed"):
            self.llm_requests.labels(outcome)
        for reason in ("age", "size", "temp"):
            self.files_removed.labels(reason)
            self.files_removed_bytes.labels(reason)
        for reason in ("full", "error"):
            self.storage_failures.labels(reason)
        for mode in ("local", "refuse"):
            self.global_limit_fallbacks.labels(mode)
        self.global_limit_up.set(1)

    def count_cpu(self, interval: float = 5.0) -> None:
        """Add this process's CPU time to `worker_cpu` every `interval` seconds, from a greenlet."""
        import gevent

        def run() -> None:
            last = time.process_time()
            while True:
                gevent.sleep(interval)
                now = time.process_time()
                self.worker_cpu.inc(now - last)
                last = now

        gevent.spawn(run)

    def render(self) -> tuple[bytes, str]:
        if self.registry is not None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class Batched:
    """A counter child incremented in batches: one locked write to its multiprocess file per
    `every` additions instead of one per event. `flush()` at the end makes the total exact."""

    __slots__ = ("_adds", "_child", "_every", "_value")

    def __init__(self, child: Any, every: int = 32) -> None:
        self._child = child
        self._every = every
        self._value = 0.0
        self._adds = 0

    def add(self, amount: float) -> None:
        self._value += amount
        self._adds += 1
        if self._adds >= self._every:
            self.flush()

    def flush(self) -> None:
        if self._value:
            self._child.inc(self._value)
        self._value = 0.0
        self._adds = 0
