"""`python -m bench.run`: the gateway under steady streaming load, next to its floor (nginx + the LLM).

    python -m bench.run --levels 50,100,200,500,1000 --duration 30 --pace 20 --out bench/out/<timestamp>
    python -m bench.run --smoke        # levels 5,10 for 4 s at pace 200: keeps the benchmark working (CI)

Per level N, two phases on the same stack: N gateway streams through nginx -> gunicorn -> MetaGPT ->
scripted LLM, then N streams through a second nginx straight to the scripted LLM (the floor). Before the
levels, a short CPU-fit phase (pace 0) separates the gateway's CPU per request from its CPU per token.
Writes results.json, results.md and results.png to the output folder and prints where.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import analyze, loadgen, report
from bench.loadgen import BodyMaker, LoadGenerators, Mode, Spec, StreamResult
from bench.measure import CpuWindow, Group, Journal, wait_workers, worker_rss
from bench.stack import GUNICORN_WORKERS, HOST, Stack, running_stack

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_DIRECTIVES = "[[sections:2]]"
# The smoke run only proves the benchmark works. A faster pace keeps each stream (which always runs to
# its end: ~550 tokens for the gateway) to a few seconds, so the whole run stays well under a minute.
SMOKE = {"levels": [5, 10], "duration": 4.0, "pace": 200.0, "fit_requests": 10, "fit_repeats": 1, "idle": 1.0}
POLL_SECONDS = 2.0  # the journal keeps 2000 entries; at 1000 streams that is ~20 s of requests
TWO_LOADGENS_FROM = 200
LEAD_SECONDS = 0.5  # between starting the load generator processes and their first stream
FIT_CONCURRENCY = 20


def section_prompt() -> str:
    """MetaGPT's own section prompt (as WriteContent sends it) with `{topic}` left to fill per stream."""
    from metagpt.prompts.tutorial_assistant import CONTENT_PROMPT  # the installed MetaGPT's template

    from scripted_llm import script

    outline = json.loads(script.outline_text("{topic}", {"sections": "2"}))
    directory = outline["directory"][0]  # one section, as long as each of the gateway's sections
    return CONTENT_PROMPT.replace("{directory}", str(directory)).replace("{language}", "English")


def raise_open_files_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ramp_for(n: int) -> float:
    return min(5.0, n / 100)


@dataclass
class Batch:
    """A closed-loop batch of gateway requests (warm-up, CPU fit)."""

    streams: list[StreamResult]
    upstream_tokens: int
    cpu: CpuWindow

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.streams if s.error]


class Runner:
    """Runs phases against one stack and keeps their observations."""

    def __init__(self, stack: Stack, tail_timeout: float) -> None:
        self.stack = stack
        self.journal = Journal(stack)
        self.tail_timeout = tail_timeout
        self.prompt = section_prompt()

    def groups(self, loadgen_pids: list[int]) -> list[Group]:
        s = self.stack
        return [
            Group("gateway", (s.gunicorn_pid,)),
            Group("gateway_nginx", (s.gateway_nginx_pid,)),
            Group("floor_nginx", (s.floor_nginx_pid,)),
            Group("scripted_llm", (s.llm_pid,)),
            Group("loadgen", tuple(loadgen_pids), children=False),
            Group("runner", (os.getpid(),), children=False),
        ]

    def _specs(self, mode: Mode, n: int, bodies: BodyMaker, t0: float, ramp: float, end: float) -> list[Spec]:
        port = self.stack.gateway_port if mode == "gateway" else self.stack.floor_port
        parts = loadgen.split(n, 2 if n >= TWO_LOADGENS_FROM else 1)
        return [
            Spec(
                host=HOST,
                port=port,
                mode=mode,
                bodies=bodies,
                slots=slots,
                slot_offset=i,
                slot_stride=len(parts),
                total_slots=n,
                ramp_start=t0,
                ramp=ramp,
                window_end=end,
                deadline=end + self.tail_timeout,
            )
            for i, slots in enumerate(parts)
        ]

    def _wait(
        self, until: float, generators: LoadGenerators | None = None, rss: list[int] | None = None
    ) -> None:
        """Sleep until `until` (or the generators are done), polling the journal and sampling memory."""
        next_rss = 0.0
        while time.time() < until and not (generators is not None and generators.done()):
            now = time.monotonic()
            if now - self.journal.last_poll >= POLL_SECONDS:
                self.journal.poll()
            if rss is not None and now >= next_rss:
                rss.append(worker_rss(self.stack.gunicorn_pid))
                next_rss = now + 1.0
            time.sleep(min(0.2, max(until - time.time(), 0)))

    def idle(self, seconds: float) -> dict[str, float]:
        """Share of a core each group uses with no load at all (timers, heartbeats)."""
        time.sleep(1.0)  # let the warm-up's last streams finish their bookkeeping
        cpu = CpuWindow(self.groups([]))
        cpu.start()
        time.sleep(seconds)
        cpu.stop()
        return {name: cpu.total(name) / cpu.seconds for name in cpu.used}

    def phase(self, mode: Mode, n: int, duration: float) -> analyze.Phase:
        """N streams kept open for `duration` seconds after the ramp; each runs to its end."""
        self.journal.clear()
        rss_rest = worker_rss(self.stack.gunicorn_pid)
        ramp = ramp_for(n)
        t0 = time.time() + LEAD_SECONDS
        window = (t0 + ramp, t0 + ramp + duration)
        bodies = BodyMaker(
            label=f"{mode[0]}{n}-{int(t0)}", directives=GATEWAY_DIRECTIVES, section_prompt=self.prompt
        )
        generators = LoadGenerators(self._specs(mode, n, bodies, t0, ramp, window[1]))
        try:
            cpu = CpuWindow(self.groups(generators.pids))
            self._wait(window[0])
            cpu.start()
            rss: list[int] = []
            self._wait(window[1], rss=rss)
            cpu.stop()
            self._wait(window[1] + self.tail_timeout + 10, generators)
            streams = generators.collect(timeout=30)
            self.journal.poll()
        finally:
            generators.stop()
        return analyze.Phase(
            mode=mode,
            n=n,
            window=window,
            streams=streams,
            cpu=cpu,
            upstream=self.journal.upstream_starts("outline" if mode == "gateway" else "section"),
            rss_rest=rss_rest,
            rss_samples=rss,
            loadgens=len(generators.processes),
            upstream_tokens=self.journal.upstream_tokens(bodies.prefix),
        )

    def batch(self, count: int, concurrency: int, directives: str) -> Batch:
        """`count` gateway requests, `concurrency` at a time, each started when another ends."""
        self.journal.clear()
        now = time.time()
        bodies = BodyMaker(label=f"b{int(now * 1000) % 10**9}", directives=directives)
        spec = Spec(
            host=HOST,
            port=self.stack.gateway_port,
            mode="gateway",
            bodies=bodies,
            slots=concurrency,
            slot_offset=0,
            slot_stride=1,
            total_slots=concurrency,
            ramp_start=now,
            ramp=0.0,
            window_end=now + self.tail_timeout,
            deadline=now + self.tail_timeout,
            max_streams=count,
        )
        cpu = CpuWindow(self.groups([]))
        cpu.start()
        generators = LoadGenerators([spec])
        try:
            self._wait(spec.deadline + 10, generators)
            streams = generators.collect(timeout=30)
        finally:
            generators.stop()
        cpu.stop()
        self.journal.poll()
        return Batch(streams, self.journal.upstream_tokens(bodies.prefix), cpu)


def fit(runner: Runner, count: int, repeats: int) -> dict[str, Any]:
    """Gateway CPU per request and per upstream token, from K short and K long tutorials at pace 0.

    At pace 0 the gateway sends many upstream tokens per event, so tokens here are the LLM's (journal).
    Short and long runs alternate `repeats` times; the least squares fit is over all of them.
    """
    runs: list[dict[str, float]] = []
    for sections in (1, 4) * repeats:
        batch = runner.batch(count, FIT_CONCURRENCY, f"[[pace:0]][[sections:{sections}]]")
        runs.append(
            {
                "sections": sections,
                "requests": len(batch.streams),
                "upstream_tokens": batch.upstream_tokens,
                "token_events": sum(s.tokens for s in batch.streams),
                "cpu_s": batch.cpu.total("gateway"),
                "nginx_cpu_s": batch.cpu.total("gateway_nginx"),
                "errors": len(batch.errors),
            }
        )
    fitted = analyze.fit_per_request([(r["requests"], r["upstream_tokens"], r["cpu_s"]) for r in runs])
    return {**fitted, "concurrency": FIT_CONCURRENCY, "requests_per_run": count, "runs": runs}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds every `with`: all processes are stopped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="50,100,200,500,1000", help="concurrent streams, comma-separated")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per level and phase")
    parser.add_argument("--pace", type=float, default=20.0, help="the scripted LLM's tokens/s per stream")
    parser.add_argument("--fit-requests", type=int, default=300, help="K of the CPU-per-request fit")
    parser.add_argument("--fit-repeats", type=int, default=3, help="runs of K short + K long requests")
    parser.add_argument("--tail-timeout", type=float, default=240.0, help="max seconds a stream may outlive")
    parser.add_argument("--out", type=Path, default=None, help="default bench/out/<timestamp>")
    parser.add_argument("--smoke", action="store_true", help="levels 5,10 for 4 s at pace 200: a quick check")
    args = parser.parse_args(argv)
    args.levels = [int(v) for v in str(args.levels).split(",") if v.strip()]
    args.idle = 3.0
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if (
        not args.levels
        or min(args.levels) < 1
        or args.duration <= 0
        or min(args.fit_requests, args.fit_repeats) < 1
        or args.pace < 0
    ):
        parser.error("levels must be >= 1, duration > 0, fit-requests and fit-repeats >= 1, pace >= 0")
    if args.out is None:
        args.out = ROOT / "bench" / "out" / datetime.now().strftime("%Y%m%d-%H%M%S")
    return args


def _log(started: float, message: str) -> None:
    print(f"bench [{time.time() - started:6.1f} s] {message}", flush=True)


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    started = time.time()
    _log(started, f"levels {args.levels}, {args.duration:g} s each, pace {args.pace:g} tokens/s -> {out}")
    with (
        tempfile.TemporaryDirectory(prefix="gateway-bench-") as work,
        running_stack(Path(work), out / "logs", args.pace) as stack,
    ):
        wait_workers(stack.gunicorn_pid, GUNICORN_WORKERS)
        runner = Runner(stack, args.tail_timeout)
        warm = runner.batch(10, 10, "[[pace:0]][[sections:1]]")  # both workers import and warm up
        if warm.errors:
            raise RuntimeError(f"warm-up failed ({warm.errors[0]}); see {out / 'logs'}")
        _log(started, "stack up and warm")
        idle = runner.idle(args.idle)
        fitted = fit(runner, args.fit_requests, args.fit_repeats)
        _log(started, f"CPU fit: {report.fmt_fit(fitted)}")
        levels = []
        for n in args.levels:
            summaries = []
            for mode in ("gateway", "floor"):
                phase = runner.phase(mode, n, args.duration)
                report.dump_streams(out / "raw", phase)
                summaries.append(analyze.summarize(phase))
            gateway, floor = summaries
            levels.append(analyze.level(n, gateway, floor, cpu_per_request=fitted["cpu_per_request"]))
            _log(started, report.fmt_level(levels[-1]))
    return {
        "machine": report.machine(),
        "config": {
            "levels": args.levels,
            "duration_s": args.duration,
            "pace": args.pace,
            "gunicorn_workers": GUNICORN_WORKERS,
            "gateway_request": f"<unique topic> {GATEWAY_DIRECTIVES}",
            "smoke": args.smoke,
            "elapsed_s": round(time.time() - started, 1),
        },
        "slo": {
            "added_ttft_p99_s": analyze.SLO_ADDED_TTFT_P99_S,
            "added_gap_p99_s": analyze.SLO_ADDED_GAP_P99_S,
            "errors": 0,
            "max_n": analyze.best_n(levels),
        },
        "idle_core_share": idle,
        "cpu_fit": fitted,
        "levels": levels,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files_limit()  # before anything starts: every child inherits it
    signal.signal(signal.SIGTERM, _on_sigterm)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = run(args, out)
    report.write(out, results)
    print(f"bench: results in {out} (results.json, results.md, results.png)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        sys.exit(130)
