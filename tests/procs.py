"""Starting the real servers for integration tests: on 127.0.0.1, bounded in time, never orphaned."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # If pytest dies without tearing down, the kernel sends SIGTERM to the server too.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not up after {timeout} s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def server(
    args: list[str],
    *,
    health_url: str,
    log: Path,
    env: dict[str, str] | None = None,
    startup_timeout: float = 90,
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `args` in `cwd` until the block ends; its output goes to `log`."""
    proc = spawn(args, log=log, env=env, cwd=cwd)
    try:
        wait_http(health_url, proc, startup_timeout, log)
        yield proc
    finally:
        stop(proc)


def spawn(
    args: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start `args` in `cwd` in a session of its own that dies with this process; output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def scripted_llm_args(port: int, pace: float, max_lifetime: int = 1800) -> list[str]:
    return [
        PYTHON,
        "-m",
        "scripted_llm",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--pace",
        str(pace),
        "--max-lifetime",
        str(max_lifetime),
    ]


def gunicorn_args(port: int, workers: int = 1, unix_socket: Path | None = None) -> list[str]:
    """gunicorn as deployed; `unix_socket` adds the socket nginx uses (a command-line --bind replaces
    gunicorn.conf.py's, so both are given here)."""
    binds = ["--bind", f"127.0.0.1:{port}"]
    if unix_socket is not None:
        binds += ["--bind", f"unix:{unix_socket}"]
    return [
        PYTHON,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        *binds,
        "--workers",
        str(workers),
        "app.wsgi:application",
    ]


def nginx_binary() -> str:
    import shutil

    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if path is None:
        raise RuntimeError("nginx is not installed: run `make install` (scripts/install_os_deps.sh) as root")
    return path


def nginx_args(prefix: Path, conf: Path) -> list[str]:
    return [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]


def prometheus_args(config: Path, data: Path, port: int) -> list[str]:
    return [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]


def nginx_exporter_args(status_url: str, port: int) -> list[str]:
    # Debian's exporter (0.11) takes single-dash flags.
    return [
        "prometheus-nginx-exporter",
        f"-nginx.scrape-uri={status_url}/stub_status",
        f"-web.listen-address=127.0.0.1:{port}",
    ]


# The pinned tools venv first, so a different version elsewhere on PATH does not decide the result.
TOOL_DIRS = (ROOT / ".venv-tools" / "bin", ROOT / ".venv" / "bin")
SYSTEM_DIRS = (Path("/usr/sbin"), Path("/usr/bin"))
OS_PACKAGED = {"docker-compose", "promtool", "nginx", "redis-server"}  # the rest: scripts/install_tools.sh


def tool(name: str) -> str:
    """The path of a command-line tool the tests run; a missing one fails the test, naming its installer."""
    import shutil

    for folder in TOOL_DIRS:
        if os.access(folder / name, os.X_OK):
            return str(folder / name)
    found = shutil.which(name) or next(
        (str(d / name) for d in SYSTEM_DIRS if os.access(d / name, os.X_OK)), None
    )
    if found is None:
        import pytest

        step = "scripts/install_os_deps.sh (as root)" if name in OS_PACKAGED else "scripts/install_tools.sh"
        pytest.fail(f"{name} is not installed: run `{step}` (make install runs it)", pytrace=False)
    return found
