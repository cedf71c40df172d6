"""The stack as deployed, on 127.0.0.1 with free ports, plus the floor: nginx relaying the LLM directly.

Started with the test suite's own helpers (`tests.procs`) and the loopback nginx renderer
(`scripts.nginx_local`), so the benchmark measures exactly what the tests and `make run` start.
Every process is stopped when the `with` block ends, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from scripts.nginx_local import prepare as prepare_nginx
from tests.procs import free_port, gunicorn_args, nginx_args, scripted_llm_args, server

HOST = "127.0.0.1"
GUNICORN_WORKERS = 2
# nginx's per-client limits are for the internet; every benchmark stream comes from one address.
# limit_conn refuses 65536 or more ("connection limit must be less 65536").
UNLIMITED = {
    "NGINX_STREAMS_PER_CLIENT": "65535",
    "NGINX_RATE_PER_CLIENT": "100000",
    "NGINX_RATE_BURST": "100000",
}


@dataclass(frozen=True)
class Stack:
    llm_port: int
    llm_pid: int
    gunicorn_pid: int  # the master; the workers are its children
    gateway_port: int  # nginx in front of gunicorn
    gateway_nginx_pid: int
    floor_port: int  # nginx in front of the scripted LLM
    floor_nginx_pid: int
    logs: Path

    @property
    def llm_url(self) -> str:
        return f"http://{HOST}:{self.llm_port}"

    def journal(self) -> list[dict[str, object]]:
        response = httpx.get(f"{self.llm_url}/_scripted/requests", timeout=30)
        response.raise_for_status()
        entries: list[dict[str, object]] = response.json()["requests"]
        return entries

    def clear_journal(self) -> None:
        httpx.delete(f"{self.llm_url}/_scripted/requests", timeout=30).raise_for_status()


def gateway_env(llm_url: str, data: Path) -> dict[str, str]:
    """The gateway's settings in every benchmark: its data under `data`, no admission limit in the way."""
    return {
        "GATEWAY_LLM_BASE_URL": f"{llm_url}/v1",
        "GATEWAY_DATA_DIR": str(data),
        "PROMETHEUS_MULTIPROC_DIR": str(data / "prom"),
        "GATEWAY_MAX_GENERATIONS_PER_WORKER": "2000",
        "GATEWAY_HEARTBEAT_SECONDS": "10",
    }


@contextlib.contextmanager
def _nginx(prefix: Path, upstream: str, tutorials: Path) -> Iterator[tuple[int, int]]:
    port, status_port = free_port(), free_port()
    conf = prepare_nginx(
        prefix,
        listen=f"{HOST}:{port}",
        status_listen=f"{HOST}:{status_port}",
        upstream=upstream,
        tutorials_dir=tutorials,
        limits=UNLIMITED,
    )
    health = f"http://{HOST}:{port}/healthz"
    with server(
        nginx_args(prefix, conf), health_url=health, log=prefix / "stdout.log", startup_timeout=20
    ) as p:
        yield port, p.pid


@contextlib.contextmanager
def running_stack(workdir: Path, logs: Path, pace: float) -> Iterator[Stack]:
    """Scripted LLM, gunicorn (2 gevent workers) behind nginx, and the floor nginx; all stopped at exit.

    `workdir` holds the gateway's data (tutorials, metrics files); `logs` every log and nginx prefix.
    """
    logs.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    tutorials = data / "tutorials"
    tutorials.mkdir(parents=True, exist_ok=True)
    llm_port, app_port = free_port(), free_port()
    llm_url = f"http://{HOST}:{llm_port}"
    env = gateway_env(llm_url, data)
    with contextlib.ExitStack() as stack:
        llm = stack.enter_context(
            server(
                scripted_llm_args(llm_port, pace, max_lifetime=6 * 3600),
                health_url=f"{llm_url}/healthz",
                log=logs / "scripted_llm.log",
                startup_timeout=30,
            )
        )
        gunicorn = stack.enter_context(
            server(
                gunicorn_args(app_port, workers=GUNICORN_WORKERS, unix_socket=workdir / "gunicorn.sock"),
                health_url=f"http://{HOST}:{app_port}/readyz",
                log=logs / "gunicorn.log",
                env=env,
            )
        )
        gateway_port, gateway_pid = stack.enter_context(
            _nginx(logs / "nginx-gateway", f"unix:{workdir}/gunicorn.sock", tutorials)
        )
        floor_port, floor_pid = stack.enter_context(
            _nginx(logs / "nginx-floor", f"{HOST}:{llm_port}", tutorials)
        )
        yield Stack(
            llm_port=llm_port,
            llm_pid=llm.pid,
            gunicorn_pid=gunicorn.pid,
            gateway_port=gateway_port,
            gateway_nginx_pid=gateway_pid,
            floor_port=floor_port,
            floor_nginx_pid=floor_pid,
            logs=logs,
        )
