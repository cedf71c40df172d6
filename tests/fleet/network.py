"""Simulated hosts on one machine (root only): a private /24 on a bridge in the root namespace, one network
namespace per host joined to it by a veth pair, and one cgroup v1 `cpu` group per host.

Only the bridge's own address (the root namespace: the scripted LLM, S3, Redis) and the hosts' addresses
are reachable from a host; there is no default route. Every name carries the test process's pid
(`fleet-<pid>-h<n>` for namespaces and cgroups, `flt<pid>...` for links, 15 characters at most), so a
run's leftovers are found by prefix, and those of a run whose process is gone are removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NETNS_PREFIX = "fleet-"  # namespaces and cgroups: fleet-<pid>-h<n>
LINK_PREFIX = "flt"  # links: flt<pid>b (bridge), flt<pid>h<n> (root end of host n's veth)
CPU_CGROUPS = Path("/sys/fs/cgroup/cpu")
_OWNED = re.compile(rf"^(?:{NETNS_PREFIX}|{LINK_PREFIX})(\d+)")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


def available() -> str | None:
    """Why the hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces, veth pairs and cgroups need root"
    if not (CPU_CGROUPS / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CPU_CGROUPS}"
    try:
        ip("netns", "list")
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"`ip netns` does not work: {exc}"
    return None


@dataclass(frozen=True)
class Host:
    index: int
    netns: str
    ip: str
    cgroup: Path

    def command(self, args: list[str]) -> list[str]:
        """`args` run in this host: its namespace and its cpu group (children inherit both)."""
        join_cgroup = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        return ["sh", "-c", join_cgroup, str(self.cgroup), "ip", "netns", "exec", self.netns, *args]

    def set_cpus(self, cpus: float | None) -> None:
        """Cap the host at `cpus` cores (cfs quota over the group's period); None lifts the cap."""
        period = int((self.cgroup / "cpu.cfs_period_us").read_text())
        quota = -1 if cpus is None else int(cpus * period)
        (self.cgroup / "cpu.cfs_quota_us").write_text(str(quota))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_processes(netns: str) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        for pid in ip("netns", "pids", netns).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _remove_cgroup(path: Path) -> None:
    deadline = time.monotonic() + 10
    while path.exists():
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            path.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _remove(pid_tag: str) -> None:
    """Remove everything named for `pid_tag`: namespaces (and their processes), links, cpu groups."""
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{NETNS_PREFIX}{pid_tag}-"):
            _kill_netns_processes(name)
            ip("netns", "delete", name)
    for line in ip("-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(f"{LINK_PREFIX}{pid_tag}") and name[len(LINK_PREFIX) + len(pid_tag)] in "bh":
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("link", "delete", name)
    for path in CPU_CGROUPS.glob(f"{NETNS_PREFIX}{pid_tag}-*"):
        _remove_cgroup(path)


def remove_leftovers() -> None:
    """What a run that crashed left: names whose pid is no longer a live process."""
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.split()]
    names += [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show").splitlines()]
    names += [path.name for path in CPU_CGROUPS.glob(f"{NETNS_PREFIX}*")]
    for tag in {m.group(1) for name in names if (m := _OWNED.match(name))}:
        if not _pid_alive(int(tag)):
            _remove(tag)


NETNS_DIR = "/run/netns"


def _mounted(path: str) -> bool:
    return any(line.split()[1] == path for line in Path("/proc/mounts").read_text().splitlines())


def _free_subnet(first: int) -> str:
    """A 10.77.N.0/24 that no route or address of this machine touches yet."""
    used = ip("-4", "route", "show", "table", "all") + ip("-4", "addr", "show")
    for offset in range(200):
        n = 20 + (first + offset) % 230
        if f"10.77.{n}." not in used:
            return f"10.77.{n}"
    raise RuntimeError("no free 10.77.N.0/24 subnet")


class Network:
    """The bridge and `count` hosts; `create` then `destroy` (which always removes everything named)."""

    def __init__(self, count: int) -> None:
        self.tag = str(os.getpid())
        self.base = _free_subnet(os.getpid())
        self.bridge = f"{LINK_PREFIX}{self.tag}b"
        self.bridge_ip = f"{self.base}.1"
        # `ip netns add` mounts /run/netns on itself the first time (to share the namespaces' mounts) and
        # leaves it: `destroy` takes it away again when it was not there before and no namespace is left.
        self.netns_dir_mounted = _mounted(NETNS_DIR)
        self.hosts = [
            Host(
                index=n,
                netns=f"{NETNS_PREFIX}{self.tag}-h{n}",
                ip=f"{self.base}.{10 + n}",
                cgroup=CPU_CGROUPS / f"{NETNS_PREFIX}{self.tag}-h{n}",
            )
            for n in range(1, count + 1)
        ]

    def create(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            outer, inner = f"{LINK_PREFIX}{self.tag}h{host.index}", "eth0"
            ip("netns", "add", host.netns)
            ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", host.netns)
            ip("link", "set", outer, "master", self.bridge, "up")
            ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", inner)
            ip("-n", host.netns, "link", "set", inner, "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
            host.cgroup.mkdir()

    def destroy(self) -> None:
        _remove(self.tag)
        if not self.netns_dir_mounted and _mounted(NETNS_DIR) and not ip("netns", "list").strip():
            subprocess.run(["umount", NETNS_DIR], check=False)
