"""`bench.ab`, the side-by-side comparison bench/PERFORMANCE.md's ratios come from: each side runs its own
tree, and a short run of the same tree against itself reports sane figures for both."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.ab import check_tree
from tests.procs import ROOT

pytestmark = pytest.mark.integration


def test_a_copied_tree_runs_its_own_code_and_a_tree_without_app_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "app", copy / "app", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(copy)}
    check_tree(copy, env)  # although the editable install puts ROOT on every path
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="not a gateway tree"):
        check_tree(tmp_path / "empty", {**os.environ, "PYTHONPATH": str(tmp_path / "empty")})


def test_same_tree_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    args = [sys.executable, "-m", "bench.ab", str(ROOT), str(ROOT), "--streams", "4", "--window", "3"]
    args += ["--repeats", "1", "--warmup", "0", "--pace", "100", "--directives", "[[sections:1]]"]
    args += ["--env-b", "GATEWAY_RELAY_INTERVAL_MS=40", "--json", str(out)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "B/A CPU per token:" in done.stdout

    report = json.loads(out.read_text())
    assert report["env"] == {"A": {}, "B": {"GATEWAY_RELAY_INTERVAL_MS": "40"}}
    (repeat,) = report["repeats"]
    for side in ("A", "B"):
        figures = repeat[side]
        assert figures["tokens"] > 100 and figures["errors"] == 0
        assert 0 < figures["cpu_per_token_us"] < 10_000
        assert math.isclose(figures["user_us"] + figures["system_us"], figures["cpu_per_token_us"])
        assert figures["gap_p99_ms"] is not None
    assert repeat["ratio"]["cpu_per_token"] == pytest.approx(
        repeat["B"]["cpu_per_token_us"] / repeat["A"]["cpu_per_token_us"]
    )


def test_scale_out_side_by_side(tmp_path: Path) -> None:
    """Issue 20's comparison, short: B keeps its files in S3 (SeaweedFS) and takes a fleet slot in Redis
    for every generation, A does neither; both run clean, and B's files are all in the bucket."""
    from tests.fleet.services import S3, Redis

    s3, redis_server = S3("127.0.0.1", tmp_path / "s3"), Redis("127.0.0.1", tmp_path / "redis")
    s3.start()
    try:
        redis_server.start()
        s3.client().create_bucket(Bucket="bench")
        env_b = {
            **s3.env("bench"),
            "GATEWAY_REDIS_URL": redis_server.url,
            "GATEWAY_GLOBAL_MAX_GENERATIONS": "50",
        }
        out = tmp_path / "ab.json"
        args = [sys.executable, "-m", "bench.ab", str(ROOT), str(ROOT), "--streams", "4", "--window", "3"]
        args += ["--repeats", "1", "--warmup", "0", "--pace", "0", "--directives", "[[sections:1]]"]
        args += [arg for name, value in env_b.items() for arg in ("--env-b", f"{name}={value}")]
        done = subprocess.run(
            [*args, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (repeat,) = json.loads(out.read_text())["repeats"]
        assert repeat["A"]["errors"] == 0 and repeat["B"]["errors"] == 0
        assert repeat["B"]["requests"] > 0 and repeat["B"]["cpu_per_request_ms"] > 0
        keys = s3.keys("bench")
        assert keys and all(key.startswith("tutorials/") for key in keys)  # B's files are in the bucket
        deadline = time.monotonic() + 12  # given back, or expired (10 s) if a stream was cut at the end
        with redis_server.client() as client:
            while client.zcard("gateway:generations") and time.monotonic() < deadline:
                time.sleep(0.5)
            assert client.zcard("gateway:generations") == 0
    finally:
        redis_server.stop()
        s3.stop()
