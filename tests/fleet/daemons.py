"""The fleet's servers as processes that can be started, stopped, killed and started again: each in its own
session (killed with its whole group), sent SIGTERM if pytest dies, and stopped in bounded time."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.procs import ROOT, _die_with_parent, stop

Ready = Callable[[], bool]


def free_port_on(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def reserved_port_on(address: str) -> int:
    """A free port below the kernel's ephemeral range (ip_local_port_range starts at 32768 by default),
    for a server that binds several ports one after another: an ephemeral port found free can be taken
    meanwhile as the local port of an outgoing connection (SeaweedFS's own components connect to each
    other while it starts), and the later bind fails. Below the range only another server can take it."""
    first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(20000, min(first, 32768))
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind((address, port))
            return port
    raise RuntimeError(f"no free port on {address} below {first}")


def http_ok(url: str) -> Ready:
    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=1).status_code == 200
        return False

    return ready


class Daemon:
    def __init__(
        self,
        name: str,
        args: list[str],
        log: Path,
        ready: Ready,
        env: dict[str, str] | None = None,
        startup_timeout: float = 90,
        stop_grace: float = 15,
    ) -> None:
        self.name, self.args, self.log, self.ready = name, args, log, ready
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout, self.stop_grace = startup_timeout, stop_grace
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def launch(self) -> None:
        """Start without waiting; `wait_ready` then.
        NOTE: from the main thread only: the kernel sends the parent-death signal when the thread that
        started the process ends, so one started from a pool's thread would be SIGTERMed with it."""
        assert threading.current_thread() is threading.main_thread()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {self.startup_timeout} s:\n{self.tail()}")
            time.sleep(0.1)

    def start(self) -> None:
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, self.stop_grace)

    def kill(self) -> None:
        """SIGKILL to the whole group (a gunicorn master and its workers: a host dies at once)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
