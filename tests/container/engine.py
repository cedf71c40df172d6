"""A private Docker engine for the compose end-to-end test: Debian's dockerd with all its state (data root,
exec root, socket, pidfile) in one folder of the test's, never the system's. Stopping it removes what it
made: containers, volumes and networks first, then it puts the host back as it was before the engine
started (host.py: firewall, kernel settings, links, mounts), and removes its folder (see
../../../shared/notes/containers.md for the facts this relies on)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests import host_state as host
from tests.host_state import HostState

# Addresses the engine's bridges take: the default bridge, then one /24 per compose network. Private
# ranges this machine does not use (checked at start).
BRIDGE_IP = "10.213.0.1/24"
ADDRESS_POOL = "base=10.214.0.0/16,size=24"
# Processes an engine runs; none may be left once it is stopped.
ENGINE_PROCESSES = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-proxy")
HARD_NOFILE = 20000  # this machine's hard limit (`ulimit -Hn`): no container may ask for more


def _prefix(network: str) -> str:
    """The first two octets of a /16-or-narrower network, e.g. "10.213." for "10.213.0.1/24"."""
    return ".".join(network.removeprefix("base=").split(".")[:2]) + "."


def _docker_cli() -> str:
    # Debian's client first: it is the engine's own version (any other client negotiates down to it).
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def engine_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] in ENGINE_PROCESSES]


@dataclass
class Engine:
    state: Path
    env: dict[str, str] = field(default_factory=dict)  # DOCKER_HOST for the docker CLI and docker-compose

    def docker(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [_docker_cli(), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} exited with {done.returncode}:\n{done.stderr[-4000:]}"
            )
        return done


@contextlib.contextmanager
def private_engine(state: Path, *, keep_images: bool = False) -> Iterator[Engine]:
    """Run dockerd with its state under `state` until the block ends. `keep_images` leaves the data root
    (the image cache) for the next run; everything else is removed either way."""
    missing = [tool for tool in ("dockerd", "nft") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"not installed: {', '.join(missing)}; run `make install` (scripts/install_os_deps.sh) as root"
        )
    if "docker0" in _links() or engine_processes():
        raise RuntimeError("another Docker engine runs on this machine; the test starts its own")
    addresses = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    taken = [net for net in (BRIDGE_IP, ADDRESS_POOL) if f"inet {_prefix(net)}" in addresses]
    if taken:
        raise RuntimeError(f"this machine already uses addresses in {taken}: change them in {__file__}")
    state.mkdir(parents=True, exist_ok=True)
    host_before = HostState.now()
    socket = state / "docker.sock"
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket}"}
    env.pop("DOCKER_CONTEXT", None)
    log = (state / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        [
            "dockerd",
            f"--data-root={state / 'data'}",
            f"--exec-root={state / 'exec'}",
            f"--pidfile={state / 'dockerd.pid'}",
            f"--host=unix://{socket}",
            "--storage-driver=overlay2",
            f"--default-ulimit=nofile={HARD_NOFILE}:{HARD_NOFILE}",
            f"--bip={BRIDGE_IP}",
            f"--default-address-pool={ADDRESS_POOL}",
            # --ip-forward and --iptables stay on (the defaults): the builds reach PyPI through the bridge's
            # NAT. Where forwarding was off, dockerd turns it on and sets the FORWARD policy to DROP, and
            # leaves both when it stops: host.restore puts them back.
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    engine = Engine(state, env)
    try:
        deadline = time.monotonic() + 60
        while engine.docker("version", check=False, timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{(state / 'dockerd.log').read_text()[-4000:]}")
            time.sleep(0.5)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            _remove_everything(engine)
        _stop(proc)
        log.close()
        host.restore(host_before, state=state)
        for leftover in state.iterdir():
            if leftover.name == "data" and keep_images:
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink()


def _remove_everything(engine: Engine) -> None:
    """Containers, volumes and networks: whatever a failed test left (`down -v` normally removed them)."""
    containers = engine.docker("ps", "-aq", timeout=30).stdout.split()
    if containers:
        engine.docker("rm", "-f", "-v", *containers, timeout=120)
    engine.docker("volume", "prune", "-f", timeout=60)
    engine.docker("network", "prune", "-f", timeout=60)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # containerd and its shims run in their own sessions; after dockerd stopped, any still here are ours.
    deadline = time.monotonic() + 20
    while (left := engine_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
