"""Prometheus, for real: config and rules checked and unit-tested by promtool, then a real Prometheus
scrapes a running stack (two gunicorn workers, nginx, the nginx exporter) and every alert rule and every
dashboard query is evaluated against what it collected."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.dashboard_queries import dashboard_queries
from tests.integration.conftest import Stack, gateway_env, nginx_in_front
from tests.integration.helpers import body, stream_raw
from tests.procs import ROOT, free_port, gunicorn_args, nginx_exporter_args, prometheus_args, server

pytestmark = pytest.mark.integration
PROM = ROOT / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_promtool_check_config_and_rules():
    result = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "rules", str(PROM / "rules" / "gateway.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 rules found" in result.stdout


def test_promtool_rule_unit_tests():
    result = promtool("test", "rules", str(PROM / "tests" / "gateway_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def rule_alerts() -> list[str]:
    rules = yaml.safe_load((PROM / "rules" / "gateway.yml").read_text())
    return [r["alert"] for g in rules["groups"] for r in g["rules"]]


def test_every_alert_has_a_unit_test():
    tests = yaml.safe_load((PROM / "tests" / "gateway_test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    assert set(rule_alerts()) <= tested


@dataclass
class Observed:
    prometheus: str
    gateway: str  # through nginx
    started: float


def render_prometheus_config(folder: Path, app: str, exporter: str) -> Path:
    """prometheus.yml as committed, with loopback targets, 1 s intervals and absolute rule paths."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM / "rules" / "*.yml")]
    targets = {"gateway": app, "nginx": exporter}
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)  # compose's service names, found by Docker's DNS
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def observed(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    folder = tmp_path_factory.mktemp("observed")
    app_port, exporter_port, prom_port = free_port(), free_port(), free_port()
    app_url = f"http://127.0.0.1:{app_port}"
    env = gateway_env(llm_server, folder, GATEWAY_MAX_GENERATIONS_PER_WORKER="2")
    with ExitStack() as stack:
        stack.enter_context(
            server(
                gunicorn_args(app_port, workers=2, unix_socket=folder / "gunicorn.sock"),
                health_url=f"{app_url}/readyz",
                log=folder / "gunicorn.log",
                env=env,
            )
        )
        app = Stack(
            url=app_url,
            llm_url=llm_server,
            tutorials=folder / "tutorials",
            log=folder / "gunicorn.log",
            unix_socket=folder / "gunicorn.sock",
        )
        proxied = stack.enter_context(
            nginx_in_front(app, folder / "nginx", streams=100, rate=1000, burst=1000)
        )
        stack.enter_context(
            server(
                nginx_exporter_args(proxied.status_url, exporter_port),
                health_url=f"http://127.0.0.1:{exporter_port}/metrics",
                log=folder / "exporter.log",
                startup_timeout=20,
            )
        )
        config = render_prometheus_config(folder, f"127.0.0.1:{app_port}", f"127.0.0.1:{exporter_port}")
        prom = f"http://127.0.0.1:{prom_port}"
        stack.enter_context(
            server(
                prometheus_args(config, folder / "tsdb", prom_port),
                health_url=f"{prom}/-/ready",
                log=folder / "prometheus.log",
                startup_timeout=60,
            )
        )
        yield Observed(prometheus=prom, gateway=proxied.url, started=time.time())


def make_traffic(gateway: str) -> None:
    """Completions, a failure, a stall with heartbeats, disconnects and rejections, through nginx."""
    for n in range(3):
        assert stream_raw(gateway, body(f"Observed {n}", stream=True)).status == 200
    r = httpx.post(f"{gateway}/v1/chat/completions", json=body("Observed whole"), timeout=60)
    assert r.status_code == 200
    s = stream_raw(
        gateway, body("Observed failure [[fault:cut]][[fault_at:section]][[after:2]]", stream=True)
    )
    assert s.data()[-2]["error"]["code"] == "upstream_unavailable"
    s = stream_raw(gateway, body("Observed stall [[fault:stall]][[stall:2.5]][[after:2]]", stream=True))
    assert b": keep-alive\n\n" in s.events
    # capacity is 2 per worker: of 6 held streams at least 2 are refused with 429; the others are left
    statuses: list[int] = []
    done = threading.Event()

    def hold(n: int) -> None:
        with httpx.stream(
            "POST",
            f"{gateway}/v1/chat/completions",
            timeout=60,
            json=body(f"Observed hold {n} [[pace:5]]", stream=True),
        ) as resp:
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                chunks = resp.iter_raw()
                next(chunks)
                done.wait(10)

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    time.sleep(3)
    done.set()
    for t in threads:
        t.join(30)
    assert statuses.count(429) >= 2 and statuses.count(200) >= 1, statuses


def query_range(prom: str, expr: str, start: float) -> dict:
    r = httpx.get(
        f"{prom}/api/v1/query_range",
        timeout=30,
        params={"query": expr, "start": start, "end": time.time(), "step": "1s"},
    )
    return r.json()


def test_dashboard_and_alerts_on_a_real_prometheus(observed):
    make_traffic(observed.gateway)
    time.sleep(4)  # a few scrapes and rule evaluations after the traffic
    failures = []
    for title, expr in dashboard_queries(ROOT / "grafana" / "dashboards" / "gateway.json"):
        result = query_range(observed.prometheus, expr, observed.started)
        if result.get("status") != "success":
            failures.append(f"{title}: {expr}: {result.get('error')}")
        elif not any(series["values"] for series in result["data"]["result"]):
            failures.append(f"{title}: {expr}: no data")
    assert not failures, "\n".join(failures)

    rules = httpx.get(f"{observed.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    evaluated = {r["name"]: r for g in rules for r in g["rules"]}
    assert set(evaluated) == set(rule_alerts())
    for name, rule in evaluated.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        result = query_range(observed.prometheus, rule["query"], observed.started)
        assert result["status"] == "success", (name, result)

    targets = httpx.get(f"{observed.prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {"gateway": "up", "nginx": "up"}
