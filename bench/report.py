"""results.json, results.md (one row per level, plus the machine) and results.png."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.analyze import SLO_ADDED_GAP_P99_S, SLO_ADDED_TTFT_P99_S, Phase

_WAKE_PROBE = """
import time
def runtime():
    with open("/proc/self/schedstat") as f:
        return int(f.read().split()[0])
before = runtime()
for _ in range(100):
    time.sleep(0.02)
print((runtime() - before) / 100 / 1e9)
"""


def wake_cost() -> float | None:
    """CPU seconds one wake-up costs a process that sleeps 20 ms (the shortest relay interval), from the
    scheduler's own runtime: what each tick of a worker's poller costs before doing anything. On a
    virtual machine it can be far more than on bare metal."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _WAKE_PROBE], capture_output=True, text=True, timeout=30, check=True
        )
        return float(probe.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from tests.procs import nginx_binary

        probe = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, timeout=10)
        nginx = (probe.stderr or probe.stdout).strip().removeprefix("nginx version: ")
    except (OSError, RuntimeError, subprocess.SubprocessError):
        nginx = "unknown"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "nginx": nginx,
        "kernel": platform.release(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wake_s": wake_cost(),
    }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.0f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def fmt_fit(fit: dict[str, Any]) -> str:
    per_request, se = fit["cpu_per_request"], fit.get("cpu_per_request_se")
    error = "" if se is None else f" ± {se * 1000:.1f}"
    return (
        f"{'-' if per_request is None else f'{per_request * 1000:.1f}'}{error} ms per request + "
        f"{_us(fit['cpu_per_token'])} µs per upstream token (pace 0, concurrency {fit['concurrency']}, "
        f"{fit['requests_per_run']} requests of 1 and of 4 sections, {len(fit['runs'])} runs)"
    )


def fmt_level(lv: dict[str, Any]) -> str:
    ttft, gap = lv["added_ttft_total_s"], lv["gap_s"]
    limits = "; limited by " + ", ".join(lv["limited_by"]) if lv["limited_by"] else ""
    return (
        f"N={lv['n']}: {lv['tokens_per_s']:.0f} tokens/s, {_us(lv['cpu_per_token'])} µs gateway CPU/token "
        f"(per token alone {_us(lv.get('cpu_per_token_marginal'))} µs; "
        f"{_x(lv['vs_floor']['cpu_per_token'])} floor), added TTFT p99 {_ms(ttft['p99'])} ms "
        f"(after the LLM's first token {_ms(lv['added_ttft_s']['p99'])} ms), "
        f"gap p99 {_ms(gap['p99'])} ms (floor {_ms(lv['floor']['gap_s']['p99'])} ms), "
        f"errors {lv['errors']}/{lv['floor']['errors']}, SLO {'met' if lv['meets_slo'] else 'missed'}{limits}"
    )


_HEADER = (
    "| N | streams | tokens/s | gateway CPU/token µs (app / +nginx) | of which per token alone µs "
    "| floor nginx CPU/token µs | CPU x floor "
    "| added TTFT p50 / p95 / p99 ms | floor added TTFT p99 ms "
    "| of which after the LLM's first token p50 / p99 ms | gap p50 / p99 / p99.9 / max ms | floor gap p99 ms "
    "| added gap p99 ms | errors (gw / floor) | events / upstream token | RSS/stream KiB "
    "| worker RSS at rest MiB | LLM / loadgen / machine CPU | SLO | limited by |"
)


def _row(lv: dict[str, Any]) -> str:
    t, r, g, f = lv["added_ttft_total_s"], lv["added_ttft_s"], lv["gap_s"], lv["floor"]
    rss = lv["rss_per_stream_bytes"]
    limits = "; ".join(lv["limited_by"] + [f"saturated: {s}" for s in lv["saturated"]]) or "-"
    cells = [
        str(lv["n"]),
        str(lv["streams"]),
        f"{lv['tokens_per_s']:.0f}",
        f"{_us(lv['cpu_per_token'])} / {_us(lv['cpu_per_token_with_nginx'])}",
        _us(lv.get("cpu_per_token_marginal")),
        _us(f["cpu_per_token"]),
        _x(lv["vs_floor"]["cpu_per_token"]),
        f"{_ms(t['p50'])} / {_ms(t['p95'])} / {_ms(t['p99'])}",
        _ms(f["added_ttft_total_s"]["p99"]),
        f"{_ms(r['p50'])} / {_ms(r['p99'])}",
        f"{_ms(g['p50'])} / {_ms(g['p99'])} / {_ms(g['p99.9'])} / {_ms(g['max'])}",
        _ms(f["gap_s"]["p99"]),
        _ms(lv["added_gap_p99_s"]),
        f"{lv['errors']} / {f['errors']}",
        "-" if lv["events_per_upstream_token"] is None else f"{lv['events_per_upstream_token']:.2f}",
        "-" if rss is None else f"{rss / 1024:.0f}",
        f"{lv['rss_rest_bytes'] / 2**20:.0f}",
        f"{_pct(lv['llm_core_share'])} / {_pct(lv['loadgen_core_share'])} / {_pct(lv['machine_cpu_busy'])}",
        "met" if lv["meets_slo"] else "missed",
        limits,
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(results: dict[str, Any]) -> str:
    m, c, fit, slo = results["machine"], results["config"], results["cpu_fit"], results["slo"]
    best = slo["max_n"]
    lines = [
        "# Gateway benchmark",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Python {m['python']}, "
        f"nginx {m['nginx']}, Linux {m['kernel']}, {m['date']}. A process waking from a 20 ms sleep costs "
        f"{_us(m.get('wake_s'))} µs of CPU here (scheduler runtime, 100 sleeps): each worker's poller "
        "ticks every relay interval (20 ms under load, up to 50 ms while few tokens arrive) while streams "
        "are open, so at low concurrency that cost is shared by few tokens.",
        f"Stack: nginx → gunicorn ({c['gunicorn_workers']} gevent workers) → MetaGPT → scripted LLM at "
        f"{c['pace']:g} tokens/s per stream, all on this machine. Each gateway stream asks for "
        f"`{c['gateway_request']}`; the floor is a second nginx relaying the scripted LLM's stream of one "
        "section (MetaGPT's section prompt) with no app in between.",
        f"Each level keeps N streams open for {c['duration_s']:g} s after a ramp of min(5, N/100) s (streams "
        "that end are replaced); every stream runs to its end.",
        "",
        f"Service objective: added TTFT p99 ≤ {SLO_ADDED_TTFT_P99_S * 1000:.0f} ms, added inter-token p99 ≤ "
        f"{SLO_ADDED_GAP_P99_S * 1000:.0f} ms, no errors. **Largest N meeting it: "
        f"{best if best is not None else 'none'}.**",
        "Gateway CPU (fit at pace 0, least squares cpu = a·requests + b·upstream tokens; a ± one standard "
        f"error): {fmt_fit(fit)}.",
        "Idle, with no stream at all: "
        + ", ".join(f"{name} {share:.1%} of a core" for name, share in results["idle_core_share"].items())
        + ".",
        "",
        _HEADER,
        "|" + "---|" * len(_HEADER.strip("| ").split(" | ")),
        *(_row(lv) for lv in results["levels"]),
        "",
        "- *added TTFT*: the client's time to first token (the first `reasoning_content` delta) minus the "
        "LLM's own (from receiving the stream's outline request to writing its first token; the scripted "
        "LLM's journal): all the gateway adds, before the upstream request and after its first token. "
        "*after the LLM's first token*: the client's first token minus the LLM's first token, the relay "
        "part alone. For the floor, the same against its single request: what nginx alone adds. TTFT is "
        "taken over every stream of the level, most of them opened during the ramp (N/ramp = 100 "
        "streams/s up to N = 500), so it shows the gateway taking on new streams at that rate.",
        "- *gap*: time between consecutive token events at the client, over events that arrived in the "
        "measured window; *added gap p99* = gateway p99 - floor p99 at the same N. The gateway's gaps "
        "include the pauses between MetaGPT's upstream calls (outline, then each section). p99.9 and max "
        "show rare stalls of a whole worker (every stream on it waits at once) that p99 can hide.",
        "- *CPU/token*: CPU seconds (user + system, from the OS) during the window over token events "
        "delivered in it. *app* is gunicorn's master and workers; *+nginx* adds the gateway's nginx. "
        "*CPU x floor* = (app + nginx) / floor nginx. *per token alone*: the app's CPU minus the fit's "
        "CPU per request for each request started in the window, over the window's token events: the "
        "per-token cost the target is about, with the per-request cost (also a target) taken out.",
        "- *events / upstream token*: token events the clients received over tokens the LLM sent for the "
        "gateway streams; below 1 when the gateway packs several upstream tokens into one event.",
        "- *RSS/stream*: (gunicorn workers' mean RSS during the window - at rest before the level) / N.",
        "- *LLM / loadgen / machine CPU*: share of one core used by the scripted LLM and by the load "
        "generators during the gateway window, and share of all cores busy. *limited by* names a tool that "
        "used more than 85 % of a core: past that the level measures the tool, not the gateway.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    levels = results["levels"]
    ns = [lv["n"] for lv in levels]

    def series(get: Any) -> list[float]:
        values = []
        for lv in levels:
            value = get(lv)
            values.append(float("nan") if value is None else value * 1000)
        return values

    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(12, 4.5))
    lat.plot(ns, series(lambda lv: lv["added_ttft_total_s"]["p50"]), "o-", label="added TTFT p50")
    lat.plot(ns, series(lambda lv: lv["added_ttft_total_s"]["p99"]), "o-", label="added TTFT p99")
    lat.plot(ns, series(lambda lv: lv["added_ttft_s"]["p99"]), "^:", label="added TTFT p99, relay only")
    lat.plot(ns, series(lambda lv: lv["gap_s"]["p99"]), "s-", label="inter-token gap p99, gateway")
    lat.plot(ns, series(lambda lv: lv["floor"]["gap_s"]["p99"]), "s--", label="inter-token gap p99, floor")
    lat.axhline(SLO_ADDED_TTFT_P99_S * 1000, color="grey", linestyle=":", label="TTFT objective")
    lat.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="ms", title="Latency")
    cpu.plot(ns, [v * 1000 for v in series(lambda lv: lv["cpu_per_token"])], "o-", label="gateway app")
    cpu.plot(
        ns,
        [v * 1000 for v in series(lambda lv: lv["cpu_per_token_with_nginx"])],
        "o-",
        label="gateway + nginx",
    )
    cpu.plot(
        ns, [v * 1000 for v in series(lambda lv: lv["floor"]["cpu_per_token"])], "s--", label="floor nginx"
    )
    cpu.set(xscale="log", xlabel="concurrent streams", ylabel="µs CPU per token event", title="CPU per token")
    cpu.set_ylim(bottom=0)
    for ax in (lat, cpu):
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"MetaGPT gateway vs nginx-only floor ({results['machine']['nproc']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def dump_streams(folder: Path, phase: Phase) -> None:
    """Every stream of a phase, for digging deeper: raw/<mode>-<N>.npz (numpy arrays).

    `arrivals` holds every stream's token event offsets (s after its start) one after another;
    stream i's are arrivals[offsets[i]:offsets[i + 1]].
    """
    folder.mkdir(parents=True, exist_ok=True)
    streams = phase.streams
    counts = [len(s.arrivals) for s in streams]
    np.savez_compressed(
        folder / f"{phase.mode}-{phase.n}.npz",
        window=np.array(phase.window),
        start=np.array([s.start for s in streams]),
        ttft=np.array([np.nan if s.ttft is None else s.ttft for s in streams]),
        total=np.array([np.nan if s.total is None else s.total for s in streams]),
        tokens=np.array([s.tokens for s in streams]),
        error=np.array([s.error or "" for s in streams]),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        arrivals=np.concatenate([np.frombuffer(s.arrivals, dtype=np.float32) for s in streams])
        if streams
        else np.empty(0, dtype=np.float32),
    )


def write(out: Path, results: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "results.png")
