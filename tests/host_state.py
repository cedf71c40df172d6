"""What a Docker engine changes on the host, taken whole so it can be compared and put back: the firewall
(every table of iptables and ip6tables, policies included, on the nf_tables and the legacy backend, and
the whole nf_tables ruleset), writable kernel settings, network links, mounts and loaded modules.

dockerd leaves its firewall behind when it stops, and on a host where IP forwarding was off it turns it on
and sets the FORWARD policy to DROP: putting back only what it is known to touch left that policy on a new
machine. So the whole state is taken before the engine starts, and `restore` puts back whatever differs.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# save command -> the restore command that reads its output
XTABLES = {
    "iptables-nft-save": "iptables-nft-restore",
    "ip6tables-nft-save": "ip6tables-nft-restore",
    "iptables-legacy-save": "iptables-legacy-restore",
    "ip6tables-legacy-save": "ip6tables-legacy-restore",
}
NFT_RULESET = "nft list ruleset"
# Writable settings the kernel itself changes: the last pid handed out, and the perf sample rate it
# lowers when perf interrupts run long.
VOLATILE = frozenset({"kernel/ns_last_pid", "kernel/perf_event_max_sample_rate"})
# Written first: either one sets `forwarding` on every link as well (IPv4: also all/accept_redirects).
FORWARDING = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def _tables(lines: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """iptables-save's lines by table: "*nat" -> its chains and rules."""
    tables: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith("*"):
            tables[line] = body = []
        elif line != "COMMIT":
            body.append(line)
    return tables


def _flat(tables: dict[str, list[str]]) -> list[str]:
    return [line for table, body in tables.items() for line in (table, *body, "COMMIT")]


def _emptied(body: list[str]) -> list[str]:
    """A table's built-in chains (those with a policy), empty and accepting."""
    return [f"{line.split()[0]} ACCEPT" for line in body if line.startswith(":") and not line.endswith(" -")]


def _xtables(save: str) -> tuple[str, ...]:
    """`save`'s output without comments and counters; on the legacy backend, without pristine tables: a
    legacy table exists once anything has looked it up by name (even `iptables-legacy -t nat -S`), and
    the kernel has no way to remove it."""
    output = _run(save).splitlines()
    lines = [re.sub(r" \[\d+:\d+\]$", "", line) for line in output if not line.startswith("#")]
    if "legacy" in save:
        lines = _flat({table: body for table, body in _tables(lines).items() if body != _emptied(body)})
    return tuple(lines)


def _firewall() -> dict[str, tuple[str, ...]]:
    """Every backend this host has; one its kernel lacks (the save fails) is left out."""
    found = {}
    for command in [*XTABLES, NFT_RULESET]:
        if shutil.which(command.split()[0]):
            with contextlib.suppress(subprocess.CalledProcessError):
                found[command] = _xtables(command) if command in XTABLES else _nft_ruleset()
    return found


def _nft(*args: str) -> tuple[str, ...]:
    return tuple(_run("nft", *args).splitlines())


def _nft_tables(lines: tuple[str, ...]) -> dict[str, list[list[str]]]:
    """`nft list ruleset` by table: "table ip filter" -> its chains (and sets), each a list of lines."""
    tables: dict[str, list[list[str]]] = {}
    for line in lines:
        if not line or line.startswith("#") or line == "}":
            continue
        if line.startswith("table "):
            tables[line.removesuffix(" {")] = blocks = []
        elif line.startswith("\t") and not line.startswith("\t\t") and line != "\t}":
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return tables


def _nft_chains(lines: tuple[str, ...]) -> dict[str, set[str]]:
    return {
        table: {block[0].split()[1] for block in blocks if block[0].startswith("\tchain ")}
        for table, blocks in _nft_tables(lines).items()
    }


def _nft_ruleset() -> tuple[str, ...]:
    """The whole nf_tables ruleset, without counters' values (-s), which change with the traffic; tables
    and their chains in name order, since restoring a table makes them in another order than the one
    they were first made in, and that order means nothing (the order of rules in a chain does)."""
    tables = sorted(_nft_tables(_nft("-s", "list", "ruleset")).items())
    return tuple(
        line for table, blocks in tables for line in [table, *(x for b in sorted(blocks) for x in b)]
    )


def _sysctls() -> dict[str, str]:
    found = {}
    for folder, _, names in os.walk("/proc/sys"):
        for name in names:
            path = Path(folder, name)
            key = str(path.relative_to("/proc/sys"))
            # OSError: write-only, unset (an unset stable_secret reads as EIO), or its link just went
            with contextlib.suppress(OSError):
                if key not in VOLATILE and path.stat().st_mode & 0o200:
                    found[key] = path.read_text().strip()
    return found


def _modules() -> frozenset[str]:
    modules = Path("/proc/modules")  # absent on a kernel built without modules
    return (
        frozenset(line.split()[0] for line in modules.read_text().splitlines())
        if modules.exists()
        else frozenset()
    )


@dataclass(frozen=True)
class HostState:
    firewall: dict[str, tuple[str, ...]]  # command -> its output's lines
    sysctls: dict[str, str]  # path under /proc/sys -> value
    links: frozenset[str]
    mounts: tuple[str, ...]  # /proc/mounts, sorted
    modules: frozenset[str]

    @classmethod
    def now(cls) -> HostState:
        return cls(
            _firewall(),
            _sysctls(),
            frozenset(os.listdir("/sys/class/net")),
            tuple(sorted(Path("/proc/mounts").read_text().splitlines())),
            _modules(),
        )

    def differences(self, before: HostState) -> list[str]:
        """What differs from `before`, one line each ("-" before, "+" now), or nothing."""
        found = []
        for command in sorted(self.firewall.keys() | before.firewall.keys()):
            old, new = before.firewall.get(command, ()), self.firewall.get(command, ())
            found += [f"{command}: {line}" for line in _changed(_in_tables(old), _in_tables(new))]
        # A link's own settings come and go with it: the link's line says it.
        links = self.links ^ before.links
        found += _changed(_settings(before.sysctls, links), _settings(self.sysctls, links))
        found += [f"link {line}" for line in _changed(sorted(before.links), sorted(self.links))]
        found += [f"mount {line}" for line in _changed(before.mounts, self.mounts)]
        found += [f"module {line}" for line in _changed(sorted(before.modules), sorted(self.modules))]
        return found


def _settings(sysctls: dict[str, str], links: frozenset[str]) -> list[str]:
    """`key = value` lines, but those of the given links (net/ipv4/conf/LINK/..., net/ipv6/neigh/LINK/...)."""
    parts = {key: key.split("/") for key in sysctls}
    return [
        f"{key} = {value}"
        for key, value in sorted(sysctls.items())
        if not (len(parts[key]) > 4 and parts[key][2] in ("conf", "neigh") and parts[key][3] in links)
    ]


def _changed(old: list[str] | tuple[str, ...], new: list[str] | tuple[str, ...]) -> list[str]:
    diff = difflib.unified_diff(list(old), list(new), n=0, lineterm="")
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def _in_tables(lines: tuple[str, ...]) -> list[str]:
    """Each iptables line with its table (`*nat :OUTPUT ACCEPT`), so that a difference says where it is."""
    table, out = "", []
    for line in lines:
        table = line if line.startswith("*") else table
        out.append(line if line.startswith("*") or not table else f"{table} {line}")
    return out


def restore(before: HostState, *, state: Path) -> None:
    """Put back what differs from `before`, once no engine runs: mounts under `state` (the engine's own
    folder) unmounted, new links deleted, the firewall restored, modules loaded since unloaded, and
    network settings written back. Anything else that differs is left for the caller to report."""
    now = HostState.now()
    for line in reversed(sorted(set(now.mounts) - set(before.mounts))):
        point = line.split()[1]
        if point == str(state) or point.startswith(f"{state}/"):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    for link in now.links - before.links:
        subprocess.run(["ip", "link", "delete", link], check=False, capture_output=True)
    _restore_firewall(before)
    _unload(now.modules - before.modules)
    _restore_sysctls(before)


def _restore_firewall(before: HostState) -> None:
    now = _firewall()
    old_chains = _nft_chains(before.firewall.get(NFT_RULESET, ()))
    if NFT_RULESET in now:
        # The tables dockerd made through iptables-nft: gone, as before (no iptables command removes one).
        for table in set(_nft("list", "tables")) - old_chains.keys():
            subprocess.run(["nft", "delete", *table.split()], check=False)
    for save in now.keys() & XTABLES.keys():
        lines = before.firewall.get(save, ())
        if _xtables(save) == lines:
            continue
        # The tables in `lines` replaced by their old selves (policies, chains, rules); a table there now
        # and not before emptied (legacy only: on nf_tables it was deleted above).
        old_tables = _tables(lines)
        added = {t: _emptied(body) for t, body in _tables(_xtables(save)).items() if t not in old_tables}
        restored = "\n".join([*lines, *_flat(added), ""])
        subprocess.run([XTABLES[save]], input=restored, text=True, check=False)
    if NFT_RULESET in now:
        # iptables-nft-restore makes every built-in chain of a table, where iptables-nft makes one only
        # when it is first used (`iptables -P FORWARD ACCEPT` makes FORWARD alone): the others go again.
        for table, chains in _nft_chains(_nft_ruleset()).items():
            for chain in chains - old_chains.get(table, chains):
                subprocess.run(["nft", "delete", "chain", *table.split()[1:], chain], check=False)


def _unload(modules: frozenset[str]) -> None:
    """rmmod, not `modprobe -r`, which would also unload dependencies the host had loaded before; a
    module still used by another is tried again once that one is gone."""
    pending = set(modules) if shutil.which("rmmod") else set()
    while pending:
        unloaded = {m for m in pending if subprocess.run(["rmmod", m], capture_output=True).returncode == 0}
        if not unloaded:
            return
        pending -= unloaded


def _restore_sysctls(before: HostState) -> None:
    """Network settings only: the engine changes nothing else (measured); other differences are reported,
    never overwritten. Each is read again before it is written, since writing forwarding changes others."""
    for key in [*FORWARDING, *sorted(before.sysctls)]:
        path = Path("/proc/sys", key)
        old = before.sysctls.get(key)
        if key.startswith("net/") and old is not None and path.exists() and path.read_text().strip() != old:
            path.write_text(old)
