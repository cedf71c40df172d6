"""From raw observations (streams, CPU windows, journal) to the figures the report shows. No I/O."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.loadgen import Mode, StreamResult
from bench.measure import CpuWindow, percentiles

# The service objective: what the gateway may add on top of nginx relaying the LLM directly.
SLO_ADDED_TTFT_P99_S = 0.5
SLO_ADDED_GAP_P99_S = 0.100
# A tool using more than this share of one core may be what limits the level, not the gateway.
SATURATED = 0.85
# Processes outside the benchmark using more than this many cores make a level's figures suspect.
OTHERS_NOTICE = 0.15


@dataclass
class Phase:
    """One mode (gateway or floor) at one level, as observed."""

    mode: Mode
    n: int
    window: tuple[float, float]  # the measured window, time.time()
    streams: list[StreamResult]
    cpu: CpuWindow
    upstream: dict[str, tuple[float, float]]  # topic -> (started, first_token_at) of its first LLM request
    rss_rest: int  # gunicorn workers, before the level
    rss_samples: list[int]  # during the window
    loadgens: int
    upstream_tokens: int  # what the LLM sent for this phase's streams (journal), window or not


def _window_arrays(phase: Phase) -> tuple[int, np.ndarray]:
    """Token events that arrived inside the window, and the gaps that ended inside it."""
    start, end = phase.window
    tokens = 0
    gaps: list[np.ndarray] = []
    for stream in phase.streams:
        if not stream.arrivals:
            continue
        at = stream.start + np.frombuffer(stream.arrivals, dtype=np.float32).astype(np.float64)
        inside = (at >= start) & (at < end)
        tokens += int(inside.sum())
        gaps.append(np.diff(at)[inside[1:]])
    return tokens, np.concatenate(gaps) if gaps else np.empty(0)


def summarize(phase: Phase) -> dict[str, Any]:
    """Every figure of one phase; times in seconds, CPU in CPU-seconds, memory in bytes."""
    tokens, gaps = _window_arrays(phase)
    window_s = phase.window[1] - phase.window[0]
    errors = [s.error for s in phase.streams if s.error]
    # Per stream: client start -> LLM request received -> LLM's first token -> client's first token.
    to_upstream, relay, total = [], [], []
    for s in phase.streams:
        if s.first_token_at is None or s.topic not in phase.upstream:
            continue
        started, first = phase.upstream[s.topic]
        to_upstream.append(started - s.start)
        relay.append(s.first_token_at - first)
        total.append(s.first_token_at - s.start - (first - started))
    with_token = sum(1 for s in phase.streams if s.first_token_at is not None)
    cpu = {name: phase.cpu.total(name) for name in phase.cpu.used}
    seconds = phase.cpu.seconds
    share = {k: v / seconds for k, v in cpu.items()} if seconds else {}
    tokens_total = sum(s.tokens for s in phase.streams)
    start, end = phase.window
    rss_during = float(np.mean(phase.rss_samples)) if phase.rss_samples else None
    return {
        "mode": phase.mode,
        "streams": len(phase.streams),
        "loadgen_processes": phase.loadgens,
        "errors": len(errors),
        "error_kinds": dict(Counter(e.split(":")[0] for e in errors).most_common(5)),
        "error_examples": sorted(set(errors))[:3],
        "window_s": window_s,
        "tokens_window": tokens,
        # Requests started inside the window: in a steady state, those the window paid per-request CPU for.
        "requests_window": sum(1 for s in phase.streams if start <= s.start < end),
        "tokens_per_s": tokens / window_s if window_s > 0 else 0.0,
        "tokens_total": tokens_total,
        "upstream_tokens_total": phase.upstream_tokens,
        # Below 1 when the gateway sends several upstream tokens in one event (it does when it falls behind).
        "events_per_upstream_token": tokens_total / phase.upstream_tokens if phase.upstream_tokens else None,
        "bytes_total": sum(s.bytes for s in phase.streams),
        "ttfb_s": percentiles([s.ttfb for s in phase.streams if s.ttfb is not None], (50, 99)),
        "ttft_s": percentiles([s.ttft for s in phase.streams if s.ttft is not None], (50, 99)),
        # What the proxy adds to TTFT after the LLM's first token (client first token - LLM first token).
        "added_ttft_s": percentiles(relay, (50, 95, 99)),
        # From the client's request to the LLM receiving its (first) request.
        "to_upstream_s": percentiles(to_upstream, (50, 95, 99)),
        # Everything the proxy adds: the client's TTFT minus the LLM's own (request received -> first token).
        "added_ttft_total_s": percentiles(total, (50, 95, 99)),
        "added_ttft_unmatched": with_token - len(relay),
        "gap_s": {**percentiles(gaps, (50, 95, 99, 99.9)), "max": float(gaps.max()) if gaps.size else None},
        "gaps": int(gaps.size),
        "gaps_over_100ms": int((gaps > 0.1).sum()),
        "cpu_s": cpu,
        "cpu_core_share": share,
        "busiest_process_core_share": {k: phase.cpu.busiest(k) for k in phase.cpu.used},
        "machine_cpu_busy": phase.cpu.machine_busy,
        # Cores busy with anything but the benchmark's processes (other work on the machine skews results).
        "other_cpu_cores": max(phase.cpu.machine_busy * (os.cpu_count() or 1) - sum(share.values()), 0.0),
        "rss_rest_bytes": phase.rss_rest,
        "rss_during_bytes": rss_during,
        "rss_max_bytes": max(phase.rss_samples, default=None),
    }


def _per(value: float, tokens: int) -> float | None:
    return value / tokens if tokens else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _limits(gateway: dict[str, Any], floor: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(tools that may have limited the level, parts of the system that were saturated)."""
    limited_by = []
    for summary in (gateway, floor):
        share = summary["busiest_process_core_share"]
        if share.get("scripted_llm", 0.0) > SATURATED:
            limited_by.append(f"scripted LLM ({summary['mode']}: {share['scripted_llm']:.0%} of a core)")
        if share.get("loadgen", 0.0) > SATURATED:
            limited_by.append(f"load generator ({summary['mode']}: {share['loadgen']:.0%} of a core)")
    saturated = []
    worker = gateway["busiest_process_core_share"].get("gateway", 0.0)
    if worker > SATURATED:
        saturated.append(f"a gateway worker ({worker:.0%} of a core)")
    if gateway["machine_cpu_busy"] > SATURATED:
        saturated.append(f"the machine ({gateway['machine_cpu_busy']:.0%} of all cores)")
    others = max(gateway["other_cpu_cores"], floor["other_cpu_cores"])
    if others > OTHERS_NOTICE:
        saturated.append(f"other processes used {others:.2f} cores")
    return limited_by, saturated


def level(
    n: int, gateway: dict[str, Any], floor: dict[str, Any], cpu_per_request: float | None = None
) -> dict[str, Any]:
    """The headline figures of one level, the gateway next to its floor.

    The objective is judged on everything the gateway adds to the time to first token (from the client's
    request to its first token, minus the LLM's own time to first token), not only on the relay delay
    after the LLM's first token: a stream waiting for MetaGPT to send its request waits just the same.
    `cpu_per_request` (the pace-0 fit's) separates the per-token part of the gateway's CPU: the app's
    CPU minus that much per request started in the window, over the window's tokens.
    """
    g_tokens, f_tokens = gateway["tokens_window"], floor["tokens_window"]
    g_cpu, f_cpu = gateway["cpu_s"], floor["cpu_s"]
    app_cpu = g_cpu.get("gateway", 0.0)
    with_nginx = _per(app_cpu + g_cpu.get("gateway_nginx", 0.0), g_tokens)
    floor_per_token = _per(f_cpu.get("floor_nginx", 0.0), f_tokens)
    g_gap99, f_gap99 = gateway["gap_s"]["p99"], floor["gap_s"]["p99"]
    added_gap = _minus(g_gap99, f_gap99)
    ttft_total = gateway["added_ttft_total_s"]["p99"]
    rss_during = gateway["rss_during_bytes"]
    limited_by, saturated = _limits(gateway, floor)
    meets = (
        gateway["errors"] == 0
        and ttft_total is not None
        and ttft_total <= SLO_ADDED_TTFT_P99_S
        and added_gap is not None
        and added_gap <= SLO_ADDED_GAP_P99_S
    )
    return {
        "n": n,
        "streams": gateway["streams"],
        "tokens_per_s": gateway["tokens_per_s"],
        "cpu_per_token": _per(app_cpu, g_tokens),
        "requests_window": gateway["requests_window"],
        "cpu_per_token_marginal": (
            None
            if cpu_per_request is None
            else _per(max(app_cpu - cpu_per_request * gateway["requests_window"], 0.0), g_tokens)
        ),
        "gateway_nginx_cpu_per_token": _per(g_cpu.get("gateway_nginx", 0.0), g_tokens),
        "cpu_per_token_with_nginx": with_nginx,
        "added_ttft_s": gateway["added_ttft_s"],
        "added_ttft_total_s": gateway["added_ttft_total_s"],
        "to_upstream_s": gateway["to_upstream_s"],
        "gap_s": gateway["gap_s"],
        "added_gap_p99_s": added_gap,
        "errors": gateway["errors"],
        "rss_rest_bytes": gateway["rss_rest_bytes"],
        "rss_per_stream_bytes": None if rss_during is None else (rss_during - gateway["rss_rest_bytes"]) / n,
        "llm_core_share": gateway["cpu_core_share"].get("scripted_llm"),
        "loadgen_core_share": gateway["cpu_core_share"].get("loadgen"),
        "machine_cpu_busy": gateway["machine_cpu_busy"],
        "events_per_upstream_token": gateway["events_per_upstream_token"],
        "limited_by": limited_by,
        "saturated": saturated,
        "meets_slo": meets,
        "floor": {
            "tokens_per_s": floor["tokens_per_s"],
            "cpu_per_token": floor_per_token,
            "added_ttft_s": floor["added_ttft_s"],
            "added_ttft_total_s": floor["added_ttft_total_s"],
            "gap_s": floor["gap_s"],
            "errors": floor["errors"],
        },
        "vs_floor": {
            "cpu_per_token": _ratio(with_nginx, floor_per_token),
            "gap_p99": _ratio(g_gap99, f_gap99),
            "added_ttft_p99": _ratio(gateway["added_ttft_s"]["p99"], floor["added_ttft_s"]["p99"]),
            "added_ttft_total_p99": _ratio(ttft_total, floor["added_ttft_total_s"]["p99"]),
        },
        "gateway_detail": gateway,
        "floor_detail": floor,
    }


def fit_per_request(runs: list[tuple[float, float, float]]) -> dict[str, float | None]:
    """Least squares cpu = a*requests + b*tokens over (requests, tokens, cpu) runs, with the standard
    error of `a` from the residuals (None with fewer than three runs: nothing to estimate it from)."""
    if len(runs) < 2:
        return {"cpu_per_request": None, "cpu_per_token": None, "cpu_per_request_se": None}
    x = np.array([[r, t] for r, t, _ in runs], dtype=np.float64)
    y = np.array([c for _, _, c in runs], dtype=np.float64)
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    se = None
    if len(runs) > 2:
        residual = y - x @ np.array([a, b])
        variance = float(residual @ residual) / (len(runs) - 2)
        se = float(np.sqrt(variance * np.linalg.pinv(x.T @ x)[0, 0]))
    return {"cpu_per_request": float(a), "cpu_per_token": float(b), "cpu_per_request_se": se}


def best_n(levels: list[dict[str, Any]]) -> int | None:
    """The largest concurrency that met the service objective."""
    return max((lv["n"] for lv in levels if lv["meets_slo"]), default=None)
