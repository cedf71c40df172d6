"""The benchmark's CPU-per-request fit: it recovers a known split and says how sure it is."""

from __future__ import annotations

import pytest

from bench.analyze import fit_per_request
from bench.report import fmt_fit


def test_an_exact_line_is_recovered_with_no_error() -> None:
    runs = [(100, 28_000 * k, 100 * 0.004 + 28_000 * k * 9e-6) for k in (1, 4, 1, 4)]
    fitted = fit_per_request(runs)
    assert fitted["cpu_per_request"] == pytest.approx(0.004)
    assert fitted["cpu_per_token"] == pytest.approx(9e-6)
    assert fitted["cpu_per_request_se"] == pytest.approx(0, abs=1e-9)


def test_noise_shows_as_a_standard_error() -> None:
    noise = [0.05, -0.05, -0.05, 0.05, 0.05, -0.05]
    runs = [
        (300, 28_000 * k, 300 * 0.004 + 28_000 * k * 9e-6 + e) for k, e in zip((1, 4) * 3, noise, strict=True)
    ]
    fitted = fit_per_request(runs)
    assert fitted["cpu_per_request"] == pytest.approx(0.004, abs=0.0005)
    assert 1e-5 < fitted["cpu_per_request_se"] < 1e-3
    text = fmt_fit({**fitted, "concurrency": 20, "requests_per_run": 300, "runs": runs})
    assert text.startswith(
        f"{fitted['cpu_per_request'] * 1000:.1f} ± {fitted['cpu_per_request_se'] * 1000:.1f} ms"
    )


def test_two_runs_give_no_error_estimate() -> None:
    fitted = fit_per_request([(100, 28_000, 0.65), (100, 112_000, 1.4)])
    assert fitted["cpu_per_request"] is not None and fitted["cpu_per_request_se"] is None
