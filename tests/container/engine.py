"""A private Docker engine for the compose end-to-end test: Debian's dockerd with all its state (data root,
exec root, socket, pidfile) in one folder of the test's, never the system's. Stopping it removes what it
made: containers, volumes and networks first, then its bridge, its iptables rules and chains, and its
folder (see ../../../shared/notes/containers.md for the facts this relies on)."""

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


def _iptables_rules() -> dict[str, list[str]]:
    return {
        table: subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()
        for table in ("filter", "nat")
    }


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


@dataclass(frozen=True)
class HostNetwork:
    """What an engine changes on the host's network: iptables rules and chains, and links (bridges, veths)."""

    rules: dict[str, list[str]]
    links: frozenset[str]

    @classmethod
    def now(cls) -> HostNetwork:
        return cls(_iptables_rules(), frozenset(_links()))

    def added_since(self, before: HostNetwork) -> list[str]:
        found = [f"link {name}" for name in sorted(self.links - before.links)]
        for table, rules in self.rules.items():
            found += [f"iptables -t {table} {rule}" for rule in rules if rule not in set(before.rules[table])]
        return found


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
    if shutil.which("dockerd") is None:
        raise RuntimeError(
            "dockerd is not installed: run `make install` (scripts/install_os_deps.sh) as root"
        )
    if "docker0" in _links() or engine_processes():
        raise RuntimeError("another Docker engine runs on this machine; the test starts its own")
    addresses = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    taken = [net for net in (BRIDGE_IP, ADDRESS_POOL) if f"inet {_prefix(net)}" in addresses]
    if taken:
        raise RuntimeError(f"this machine already uses addresses in {taken}: change them in {__file__}")
    state.mkdir(parents=True, exist_ok=True)
    network_before = HostNetwork.now()
    forward_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
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
        _restore_network(network_before, forward_before)
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


def _restore_network(before: HostNetwork, forward: str) -> None:
    """Delete the rules and chains dockerd added (it leaves them behind when it stops), and its bridges."""
    now = HostNetwork.now()
    for table, rules in now.rules.items():
        old = set(before.rules[table])
        for rule in rules:
            if rule.startswith("-A ") and rule not in old:
                subprocess.run(["iptables", "-t", table, "-D", *rule[3:].split()], check=False)
        for rule in rules:
            if rule.startswith("-N ") and rule not in old:
                subprocess.run(["iptables", "-t", table, "-F", rule[3:]], check=False)
                subprocess.run(["iptables", "-t", table, "-X", rule[3:]], check=False)
    for link in now.links - before.links:
        subprocess.run(["ip", "link", "delete", link], check=False, capture_output=True)
    Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
