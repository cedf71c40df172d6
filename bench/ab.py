"""Side by side: two gateway source trees (or one tree under two settings), one gunicorn worker each
behind its own nginx, under the same load at the same time from the same scripted LLM.

    python -m bench.ab TREE_A TREE_B [--streams 25] [--window 30] [--repeats 2]
                       [--env-a NAME=VALUE ...] [--env-b NAME=VALUE ...] [--directives ...] [--json FILE]

`--streams` is per side. For each repeat it prints each worker's CPU per token event delivered in the
window (user and system), its nginx's, the gap p99, the requests started in the window and the worker
CPU per such request (meaningful with `--directives "[[pace:0]]"`), and B/A. This machine is noisy
(the same tree against itself: 0.87-1.22 at 25 streams per side): run several repeats and quote all.

Each side runs its own tree's code: gunicorn starts in that tree with it first on PYTHONPATH, and
before anything is measured the same interpreter, environment and directory are asked where `app`
comes from (the editable install puts the main checkout on every path: a side quietly running the
other side's code measures only noise).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

from bench.loadgen import BodyMaker, LoadGenerators, Spec, StreamResult, split
from bench.measure import Group, wait_workers
from bench.stack import HOST, _nginx, gateway_env
from tests.procs import PYTHON, free_port, scripted_llm_args, server

SIDES = ("A", "B")
WARMUP_STREAMS = 10


@dataclass(frozen=True)
class Side:
    name: str
    port: int  # its nginx
    worker: psutil.Process
    nginx: psutil.Process


@dataclass(frozen=True)
class Figures:
    tokens: int
    cpu_per_token_us: float
    user_us: float
    system_us: float
    nginx_per_token_us: float
    gap_p99_ms: float | None
    requests: int  # started in the window
    cpu_per_request_ms: float | None
    errors: int


def _env_pair(value: str) -> tuple[str, str]:
    name, equals, setting = value.partition("=")
    if not name or not equals:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=VALUE")
    return name, setting


def check_tree(tree: Path, env: dict[str, str]) -> None:
    """Refuse a tree whose gunicorn would import `app` from somewhere else."""
    probe = [PYTHON, "-c", "import app; print(app.__file__)"]
    done = subprocess.run(probe, cwd=tree, env=env, capture_output=True, text=True, timeout=120)
    where = Path(done.stdout.strip()).resolve() if done.returncode == 0 else None
    if where is None or not where.is_relative_to(tree):
        raise SystemExit(f"bench.ab: {tree} is not a gateway tree its own gunicorn would run ({where})")


def _cpu(process: psutil.Process) -> tuple[float, float]:
    """User and system CPU seconds of `process` and its descendants."""
    user = system = 0.0
    for p in Group("", (process.pid,)).processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            user, system = user + times.user, system + times.system
    return user, system


@contextlib.contextmanager
def _side(name: str, tree: Path, work: Path, llm_url: str, extra: dict[str, str]) -> Iterator[Side]:
    data = work / name / "data"
    (data / "tutorials").mkdir(parents=True)
    sock = work / name / "gunicorn.sock"
    env = {"PYTHONPATH": str(tree), **gateway_env(llm_url, data), **extra}
    check_tree(tree, {**os.environ, **env})
    port = free_port()
    args = [PYTHON, "-m", "gunicorn", "-c", str(tree / "gunicorn.conf.py"), "--bind", f"{HOST}:{port}"]
    args += ["--bind", f"unix:{sock}", "--workers", "1", "app.wsgi:application"]
    with (
        server(
            args,
            health_url=f"http://{HOST}:{port}/readyz",
            log=work / name / "gunicorn.log",
            env=env,
            cwd=tree,
        ) as gunicorn,
        _nginx(work / name / "nginx", f"unix:{sock}", data / "tutorials") as (nginx_port, nginx_pid),
    ):
        wait_workers(gunicorn.pid, 1)
        worker = psutil.Process(gunicorn.pid).children()[0]
        yield Side(name, nginx_port, worker, psutil.Process(nginx_pid))


def _figures(
    results: list[StreamResult],
    cpu: tuple[float, float],
    nginx: float,
    window: tuple[float, float],
) -> Figures:
    w0, w1 = window
    tokens = sum(1 for r in results for a in r.arrivals if w0 <= r.start + a <= w1)
    gaps = [np.diff(np.asarray(r.arrivals, dtype=np.float64)) for r in results if len(r.arrivals) > 2]
    requests = sum(1 for r in results if w0 <= r.start <= w1)
    user, system = cpu
    per = 1e6 / tokens if tokens else math.nan
    return Figures(
        tokens=tokens,
        cpu_per_token_us=(user + system) * per,
        user_us=user * per,
        system_us=system * per,
        nginx_per_token_us=nginx * per,
        gap_p99_ms=float(np.percentile(np.concatenate(gaps), 99) * 1000) if gaps else None,
        requests=requests,
        cpu_per_request_ms=(user + system) / requests * 1000 if requests else None,
        errors=sum(1 for r in results if r.error),
    )


def measure(
    sides: list[Side], label: str, streams: int, ramp: float, window: float, directives: str
) -> dict[str, Figures]:
    """Both sides at once: `streams` each, ramped up over `ramp` s, measured for `window` s after it."""
    start = time.time() + 0.5
    end = start + ramp + 1 + window
    specs = []
    for side in sides:
        bodies = BodyMaker(label=f"{label}{side.name}", directives=directives)
        for i, slots in enumerate(split(streams, 2)):
            specs.append(
                Spec(
                    host=HOST,
                    port=side.port,
                    mode="gateway",
                    bodies=bodies,
                    slots=slots,
                    slot_offset=i,
                    slot_stride=2,
                    total_slots=streams,
                    ramp_start=start,
                    ramp=ramp,
                    window_end=end,
                    deadline=end + 120,
                )
            )
    generators = LoadGenerators(specs)
    try:
        time.sleep(max(start + ramp + 1 - time.time(), 0))
        before = {s.name: (_cpu(s.worker), sum(_cpu(s.nginx))) for s in sides}
        w0 = time.time()
        time.sleep(max(end - time.time(), 0))
        after = {s.name: (_cpu(s.worker), sum(_cpu(s.nginx))) for s in sides}
        w1 = time.time()
        results = generators.collect(timeout=300)
    finally:
        generators.stop()
    out = {}
    for side in sides:
        (u0, s0), n0 = before[side.name]
        (u1, s1), n1 = after[side.name]
        mine = [r for r in results if r.topic.startswith(f"bench-{label}{side.name}-")]
        out[side.name] = _figures(mine, (u1 - u0, s1 - s0), n1 - n0, (w0, w1))
    return out


def _line(f: Figures) -> str:
    gap = "-" if f.gap_p99_ms is None else f"{f.gap_p99_ms:.0f}"
    per_request = "-" if f.cpu_per_request_ms is None else f"{f.cpu_per_request_ms:.2f} ms"
    return (
        f"{f.cpu_per_token_us:.1f} µs/token (user {f.user_us:.1f}, system {f.system_us:.1f}; nginx "
        f"{f.nginx_per_token_us:.1f}; gap p99 {gap} ms; {f.tokens} tokens; {f.requests} requests, "
        f"{per_request} each; {f.errors} errors)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("tree_a", type=Path)
    parser.add_argument("tree_b", type=Path)
    parser.add_argument("--streams", type=int, default=25, help="concurrent streams per side")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of a short warm-up run (0: none)")
    parser.add_argument("--pace", type=float, default=20.0, help="the scripted LLM's tokens/s per stream")
    parser.add_argument("--directives", default="[[sections:2]]", help="appended to every topic")
    parser.add_argument("--env-a", action="append", default=[], type=_env_pair, metavar="NAME=VALUE")
    parser.add_argument("--env-b", action="append", default=[], type=_env_pair, metavar="NAME=VALUE")
    parser.add_argument("--json", type=Path, help="write every repeat's figures here")
    parser.add_argument("--keep", type=Path, help="work in this new directory and keep it (logs, data)")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.window <= 0 or args.repeats < 1:
        parser.error("streams and repeats must be >= 1, window > 0")
    trees = {"A": args.tree_a.resolve(), "B": args.tree_b.resolve()}
    extra = {"A": dict(args.env_a), "B": dict(args.env_b)}
    repeats: list[dict[str, dict[str, object]]] = []
    ratios: list[float] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True)
            work = args.keep.resolve()
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ab-")))
        llm_port = free_port()
        llm_url = f"http://{HOST}:{llm_port}"
        stack.enter_context(
            server(
                scripted_llm_args(llm_port, args.pace, max_lifetime=6 * 3600),
                health_url=f"{llm_url}/healthz",
                log=work / "scripted_llm.log",
                startup_timeout=30,
            )
        )
        sides = [stack.enter_context(_side(name, trees[name], work, llm_url, extra[name])) for name in SIDES]
        print(f"A: {trees['A']} {extra['A'] or ''}\nB: {trees['B']} {extra['B'] or ''}", flush=True)
        if args.warmup > 0:
            measure(sides, "w", min(WARMUP_STREAMS, args.streams), 1.0, args.warmup, args.directives)
        for number in range(args.repeats):
            figures = measure(sides, f"r{number}", args.streams, 3.0, args.window, args.directives)
            a, b = figures["A"], figures["B"]
            ratio = b.cpu_per_token_us / a.cpu_per_token_us
            print(f"repeat {number + 1}: B/A {ratio:.3f}\n  A {_line(a)}\n  B {_line(b)}", flush=True)
            repeats.append({"A": asdict(a), "B": asdict(b), "ratio": {"cpu_per_token": ratio}})
            ratios.append(ratio)
    print("B/A CPU per token: " + ", ".join(f"{r:.3f}" for r in ratios))
    if args.json:
        payload = {
            "trees": {k: str(v) for k, v in trees.items()},
            "env": extra,
            "streams": args.streams,
            "window": args.window,
            "pace": args.pace,
            "directives": args.directives,
            "repeats": repeats,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
