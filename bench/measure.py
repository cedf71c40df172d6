"""What the operating system and the scripted LLM's journal say: CPU, memory, upstream first tokens."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import psutil

from bench.stack import Stack


@dataclass(frozen=True)
class Group:
    """Processes measured together: root pids, each with or without its descendants."""

    name: str
    roots: tuple[int, ...]
    children: bool = True

    def processes(self) -> list[psutil.Process]:
        out: list[psutil.Process] = []
        for pid in self.roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(pid)
                out.extend([root, *root.children(recursive=True)] if self.children else [root])
        return out


def cpu_seconds(processes: Iterable[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds per pid (processes that vanished are left out)."""
    out: dict[int, float] = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            times = process.cpu_times()
            out[process.pid] = times.user + times.system
    return out


@dataclass
class CpuWindow:
    """CPU used by each group between `start()` and `stop()`, from the OS's per-process counters."""

    groups: list[Group]
    started: dict[str, dict[int, float]] = field(default_factory=dict)
    used: dict[str, dict[int, float]] = field(default_factory=dict)
    machine_start: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0
    machine_busy: float = 0.0  # fraction of all cores busy (any process)
    _t0: float = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self.started = {g.name: cpu_seconds(g.processes()) for g in self.groups}
        self.machine_start = _machine_times()

    def stop(self) -> None:
        self.seconds = time.monotonic() - self._t0
        for group in self.groups:
            now = cpu_seconds(group.processes())
            before = self.started.get(group.name, {})
            self.used[group.name] = {pid: value - before.get(pid, 0.0) for pid, value in now.items()}
        busy0, total0 = self.machine_start
        busy1, total1 = _machine_times()
        self.machine_busy = (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0

    def total(self, name: str) -> float:
        return sum(self.used.get(name, {}).values())

    def busiest(self, name: str) -> float:
        """The largest share of one core any single process of the group used."""
        values = self.used.get(name, {}).values()
        return max(values, default=0.0) / self.seconds if self.seconds else 0.0


def _machine_times() -> tuple[float, float]:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(times)
    return total - idle, total


def worker_rss(gunicorn_pid: int) -> int:
    """Resident memory of the gunicorn workers (not the master), in bytes."""
    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(gunicorn_pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
    return total


def wait_workers(gunicorn_pid: int, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(psutil.Process(gunicorn_pid).children()) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"gunicorn did not start {count} workers in {timeout} s")


class Journal:
    """The scripted LLM's journal, polled often enough that no entry is lost (it keeps the last 2000)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.entries: dict[str, dict[str, object]] = {}
        self.last_poll = 0.0

    def clear(self) -> None:
        self.stack.clear_journal()
        self.entries.clear()

    def poll(self) -> None:
        self.last_poll = time.monotonic()
        for entry in self.stack.journal():
            self.entries[str(entry["id"])] = entry

    def upstream_tokens(self, topic_prefix: str) -> int:
        """Tokens the LLM sent for topics starting with `topic_prefix` (every request of a phase)."""
        return sum(
            int(str(e.get("tokens_sent") or 0))
            for e in self.entries.values()
            if str(e.get("topic") or "").startswith(topic_prefix)
        )

    def upstream_starts(self, kind: str) -> dict[str, tuple[float, float]]:
        """Per topic, (started, first_token_at) of the first request of `kind` that streamed a token."""
        out: dict[str, tuple[float, float]] = {}
        for entry in self.entries.values():
            topic, started, first = entry.get("topic"), entry.get("started"), entry.get("first_token_at")
            if entry.get("kind") != kind or not isinstance(topic, str):
                continue
            if not isinstance(started, float | int) or not isinstance(first, float | int):
                continue
            if topic not in out or first < out[topic][1]:
                out[topic] = (float(started), float(first))
        return out


def percentiles(values: Sequence[float] | np.ndarray, qs: Sequence[float]) -> dict[str, float | None]:
    """`{"p50": ..., ...}`; None for an empty sample."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {f"p{q:g}": None for q in qs}
    return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(data, qs), strict=True)}


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
