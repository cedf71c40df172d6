"""Prometheus discovers every host (file_sd), and the fleet's active generations add up: the sum over
hosts equals the streams open at the edge."""

from __future__ import annotations

import time
from contextlib import ExitStack

import httpx
import pytest

from tests.integration.helpers import hold_stream

OPEN = 6
HELD = "Observed {n} [[fault:stall]][[fault_at:outline]][[after:1]][[stall:30]]"

pytestmark = pytest.mark.integration


def wait_for(prometheus, expr: str, expected: float, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.query(expr)
        values = [float(r["value"][1]) for r in result]
        if values == [expected] or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_prometheus_sees_every_host_and_the_sum_of_active_generations_is_the_open_streams(root, main_fleet):
    prometheus = root.prometheus
    up = wait_for(prometheus, 'count(up{job="gateway"} == 1)', len(main_fleet.gateways))
    assert up and float(up[0]["value"][1]) == len(main_fleet.gateways), prometheus.query("up")

    with httpx.Client(timeout=30) as client, ExitStack() as held:
        streams = [hold_stream(client, main_fleet.url, HELD.format(n=n), held) for n in range(OPEN)]
        assert [s.status_code for s in streams] == [200] * OPEN
        by_host = {g.address: g.metric("gateway_active_generations") for g in main_fleet.gateways}
        assert sum(by_host.values()) == OPEN, by_host
        total = wait_for(prometheus, "sum(gateway_active_generations)", OPEN)
        assert float(total[0]["value"][1]) == OPEN, total
        seen = {
            r["metric"]["instance"]: float(r["value"][1])
            for r in prometheus.query("sum by (instance) (gateway_active_generations)")
        }
        assert seen == by_host, f"Prometheus {seen}, the hosts themselves {by_host}"
        assert all(by_host.values()), f"least_conn left a host idle: {by_host}"

    total = wait_for(prometheus, "sum(gateway_active_generations)", 0)
    assert float(total[0]["value"][1]) == 0, total
