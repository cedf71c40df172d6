"""`make bench-smoke` as a test: the benchmark runs end to end and reports figures that make sense.

It starts its own stack (scripted LLM, gunicorn, two nginx) on free ports and stops it; about 40 s.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT

pytestmark = pytest.mark.integration
TIMEOUT = 240


def run_smoke(out: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)]
    with subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the runner stops everything it started
            output, _ = proc.communicate(timeout=60)
            pytest.fail(f"bench.run --smoke took over {TIMEOUT} s:\n{output[-4000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, output)


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = run_smoke(out)
    assert done.returncode == 0, done.stdout[-4000:]

    results = json.loads((out / "results.json").read_text())
    levels = results["levels"]
    assert [level["n"] for level in levels] == [5, 10]
    for level in levels:
        gateway, floor = level["gateway_detail"], level["floor_detail"]
        assert gateway["tokens_window"] > 0 and level["tokens_per_s"] > 0
        assert level["errors"] == 0 and floor["errors"] == 0, (
            gateway["error_examples"],
            floor["error_examples"],
        )
        assert level["cpu_per_token"] > 0
        assert gateway["added_ttft_unmatched"] == 0  # every stream's first LLM request is in the journal
        assert level["added_ttft_s"]["p99"] is not None and level["added_ttft_total_s"]["p99"] is not None
        assert level["gap_s"]["p99"] is not None
        # The floor ran too, and every gateway figure has its floor counterpart.
        assert floor["tokens_window"] > 0 and level["floor"]["tokens_per_s"] > 0
        assert level["floor"]["cpu_per_token"] is not None
        assert (
            level["floor"]["gap_s"]["p99"] is not None
            and level["floor"]["added_ttft_total_s"]["p99"] is not None
        )
        assert level["vs_floor"]["gap_p99"] is not None
    assert results["cpu_fit"]["cpu_per_request"] is not None
    assert set(results["machine"]) >= {"nproc", "cpu_model", "ram_gib", "python", "nginx", "date", "wake_s"}
    assert 0 < results["machine"]["wake_s"] < 0.01  # a wake-up costs CPU, and far less than the sleep

    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(levels)  # header and one row per level
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
