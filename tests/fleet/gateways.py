"""Gateways on the simulated hosts: gunicorn (the repo's gunicorn.conf.py, gevent workers) inside each
host's namespace and cpu group, reaching the LLM, S3 and Redis at the bridge's address; nginx at the edge
in front of them all (and, for comparisons, one in front of the first host alone)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.fleet.daemons import Daemon, http_ok
from tests.fleet.network import Host
from tests.fleet.services import edge
from tests.integration.conftest import gateway_env
from tests.integration.helpers import metric
from tests.procs import PYTHON, ROOT

# Long enough for a held test stream to end by itself, short enough to bound a stop.
GRACEFUL_TIMEOUT_SECONDS = 20


@dataclass
class Gateway:
    host: Host
    port: int
    daemon: Daemon

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host.ip}:{self.port}"

    def workers(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.daemon.pid).children()]

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.url, name, **labels)


def gateway(host: Host, port: int, llm_url: str, folder: Path, env: dict[str, str], workers: int) -> Gateway:
    folder.mkdir(parents=True, exist_ok=True)
    settings = gateway_env(
        llm_url,
        folder,
        GATEWAY_BIND=f"{host.ip}:{port}",
        GATEWAY_WORKERS=str(workers),
        GATEWAY_GRACEFUL_TIMEOUT=str(GRACEFUL_TIMEOUT_SECONDS),
        **env,
    )
    args = host.command(
        [PYTHON, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "app.wsgi:application"]
    )
    url = f"http://{host.ip}:{port}"
    daemon = Daemon(
        f"gateway on {host.netns}:{port}", args, folder / "gunicorn.log", http_ok(f"{url}/readyz"), settings
    )
    daemon.stop_grace = GRACEFUL_TIMEOUT_SECONDS + 5
    return Gateway(host, port, daemon)


@dataclass
class Fleet:
    gateways: list[Gateway]
    edge: Daemon  # nginx in front of every gateway
    url: str  # the edge
    folder: Path
    bucket: str = ""  # S3 storage's, if the fleet has it

    def restart_stopped(self) -> None:
        """Bring back every gateway a test killed or drained, in parallel."""
        stopped = [g for g in self.gateways if not g.daemon.running()]
        for g in stopped:
            g.daemon.stop()
            g.daemon.launch()
        for g in stopped:
            g.daemon.wait_ready()
        for g in stopped:
            self.wait_in_rotation(g)

    def wait_in_rotation(self, gateway: Gateway, timeout: float = 20) -> None:
        """Until nginx sends requests to `gateway` again: a server that failed is left out for
        fail_timeout (10 s)."""
        deadline = time.monotonic() + timeout
        seen = gateway.daemon.log.stat().st_size  # the log is appended to across restarts
        with httpx.Client(timeout=5) as client:
            while b"GET /openapi.json" not in gateway.daemon.log.read_bytes()[seen:]:
                assert time.monotonic() < deadline, f"nginx sends nothing to {gateway.address}"
                client.get(f"{self.url}/openapi.json")
                time.sleep(0.1)

    def sum_metric(self, name: str, **labels: str) -> float:
        return sum(g.metric(name, **labels) for g in self.gateways if g.daemon.running())

    @contextlib.contextmanager
    def edge_for(self, gateways: list[Gateway], name: str) -> Iterator[str]:
        """Another nginx in front of `gateways` only; its URL."""
        daemon, url = edge(self.folder / name, [g.address for g in gateways])
        daemon.start()
        try:
            yield url
        finally:
            daemon.stop()


@contextlib.contextmanager
def fleet(
    hosts: list[Host],
    port: int,
    llm_url: str,
    folder: Path,
    env: dict[str, str],
    workers: int = 1,
    host_env: dict[int, dict[str, str]] | None = None,
    edge_extra: dict[str, str] | None = None,
    bucket: str = "",
) -> Iterator[Fleet]:
    """One gateway per host (all started at once: they take their time on 2 cores), then nginx; all
    stopped at the end, whatever happened."""
    gateways = [
        gateway(
            h, port, llm_url, folder / f"host{h.index}", {**env, **(host_env or {}).get(h.index, {})}, workers
        )
        for h in hosts
    ]
    proxy, url = edge(folder / "edge", [g.address for g in gateways], edge_extra)
    try:
        started = time.monotonic()
        for g in gateways:
            g.daemon.launch()
        for g in gateways:
            g.daemon.wait_ready()
        print(f"{len(gateways)} gateways ready in {time.monotonic() - started:.1f} s")
        proxy.start()
        yield Fleet(gateways, proxy, url, folder, bucket)
    finally:
        proxy.stop()
        with ThreadPoolExecutor(len(gateways)) as pool:
            list(pool.map(lambda g: g.daemon.stop(), gateways))
