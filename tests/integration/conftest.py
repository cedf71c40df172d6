"""Session-wide real stack: the scripted LLM and gunicorn (gevent worker) running the real app."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from scripts.nginx_local import prepare as prepare_nginx
from tests.procs import free_port, gunicorn_args, nginx_args, scripted_llm_args, server

# Tokens per second of the scripted LLM: fast enough for a quick suite, slow enough to stream for real.
PACE = 400


# Per-client concurrent stream limit of the nginx under test (small, so a test can exceed it).
NGINX_STREAMS = 4


@dataclass
class Stack:
    url: str  # the gateway, e.g. http://127.0.0.1:PORT
    llm_url: str  # the scripted LLM, without /v1
    tutorials: Path
    log: Path
    pid: int = 0  # gunicorn's master
    unix_socket: Path | None = None  # gunicorn's second bind, the one nginx uses (as in compose)

    def journal(self) -> list[dict]:
        return httpx.get(f"{self.llm_url}/_scripted/requests", timeout=5).json()["requests"]


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("llm") / "scripted_llm.log"
    with server(scripted_llm_args(port, PACE), health_url=f"{url}/healthz", log=log, startup_timeout=30):
        yield url


def gateway_env(llm_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_LLM_BASE_URL": f"{llm_url}/v1",
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_HEARTBEAT_SECONDS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "prometheus-multiproc"),
        **extra,
    }


@pytest.fixture(scope="session")
def stack(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("gateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "gunicorn.log"
    sock = data_dir / "gunicorn.sock"
    env = gateway_env(llm_server, data_dir)
    with server(gunicorn_args(port, unix_socket=sock), health_url=f"{url}/readyz", log=log, env=env) as proc:
        yield Stack(
            url=url,
            llm_url=llm_server,
            tutorials=data_dir / "tutorials",
            log=log,
            pid=proc.pid,
            unix_socket=sock,
        )


@dataclass
class Proxied:
    url: str  # nginx's public server
    status_url: str  # nginx's internal stub_status server
    app: Stack  # the gunicorn behind it
    prefix: Path  # nginx's folder: rendered config, logs


@contextmanager
def nginx_in_front(
    stack: Stack,
    prefix: Path,
    streams: int,
    rate: int,
    burst: int,
    max_generation_seconds: int = 900,
    extra: dict[str, str] | None = None,
) -> Iterator[Proxied]:
    """Real nginx with the rendered template, in front of `stack`'s gunicorn; `extra` sets more of the
    template's variables."""
    port, status_port = free_port(), free_port()
    conf = prepare_nginx(
        prefix,
        listen=f"127.0.0.1:{port}",
        status_listen=f"127.0.0.1:{status_port}",
        upstream=f"unix:{stack.unix_socket}" if stack.unix_socket else stack.url.removeprefix("http://"),
        tutorials_dir=stack.tutorials,
        limits={
            "NGINX_STREAMS_PER_CLIENT": str(streams),
            "NGINX_RATE_PER_CLIENT": str(rate),
            "NGINX_RATE_BURST": str(burst),
            "GATEWAY_MAX_GENERATION_SECONDS": str(max_generation_seconds),
            **(extra or {}),
        },
    )
    url = f"http://127.0.0.1:{port}"
    with server(
        nginx_args(prefix, conf), health_url=f"{url}/healthz", log=prefix / "stdout.log", startup_timeout=20
    ):
        yield Proxied(url=url, status_url=f"http://127.0.0.1:{status_port}", app=stack, prefix=prefix)


@contextmanager
def gateway_behind_nginx(
    llm_url: str,
    folder: Path,
    env: dict[str, str],
    max_generation_seconds: int = 900,
    workers: int = 1,
    limits: dict[str, str] | None = None,
) -> Iterator[Proxied]:
    """A gateway of its own (`workers` workers, settings `env` on top of `gateway_env`) behind a real
    nginx with generous per-client limits unless `limits` says otherwise: for tests that need settings
    the session's stack does not have."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "gunicorn.log"
    sock = folder / "gunicorn.sock"
    with server(
        gunicorn_args(port, workers=workers, unix_socket=sock),
        health_url=f"{url}/readyz",
        log=log,
        env=gateway_env(llm_url, folder, **env),
    ) as proc:
        app = Stack(url, llm_url, folder / "tutorials", log, proc.pid, sock)
        with nginx_in_front(
            app,
            folder / "nginx",
            streams=100,
            rate=1000,
            burst=1000,
            max_generation_seconds=max_generation_seconds,
            extra=limits,
        ) as proxied:
            yield proxied


@pytest.fixture(scope="session")
def proxied(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    with nginx_in_front(stack, tmp_path_factory.mktemp("nginx"), NGINX_STREAMS, rate=50, burst=100) as p:
        yield p
