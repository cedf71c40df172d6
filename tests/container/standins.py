"""Stand-ins for the base images the Dockerfile and docker-compose.yml name, built from Debian packages
(no container registry is reachable here) and tagged with the names those files use, so both files run
unchanged. standins/README.md says how each differs from the real image.

Two root filesystems are made by mmdebstrap, in parallel: one with Python (under the app's image), one
with nginx, Prometheus and the nginx exporter (one rootfs for the three: one download, one import). Each
stand-in is then a few lines of Dockerfile on top of its rootfs, in standins/."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from tests.container.engine import Engine

HERE = Path(__file__).resolve().parent / "standins"

MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]
# The host reaches package registries through a TLS-intercepting proxy: its CA must be trusted inside
# builds too (pip and uv in the Dockerfile). On a host without extra CAs this copies nothing.
_TRUST_HOST_CAS = (
    'mkdir -p "$1/usr/local/share/ca-certificates"'
    ' && find /usr/local/share/ca-certificates -name "*.crt"'
    ' -exec cp {} "$1/usr/local/share/ca-certificates/" ";"'
    ' && chroot "$1" update-ca-certificates >/dev/null'
)
ROOTFS = {
    # The official image's Python is /usr/local/bin/python3.11 (the Dockerfile's UV_PYTHON), and its pip
    # installs as root: Debian's needs a symlink and no EXTERNALLY-MANAGED marker for that.
    "gateway-standin/python-rootfs": (
        ["python3.11", "python3-pip", "ca-certificates", "passwd"],
        [
            _TRUST_HOST_CAS,
            "for name in python3.11 python3 python;"
            ' do ln -sf /usr/bin/python3.11 "$1/usr/local/bin/$name"; done',
            'rm -f "$1/usr/lib/python3.11/EXTERNALLY-MANAGED"',
        ],
    ),
    "gateway-standin/services-rootfs": (
        ["nginx", "gettext-base", "wget", "prometheus", "prometheus-nginx-exporter", "passwd"],
        [],
    ),
}
# tag the compose file or Dockerfile names -> the Dockerfile (in standins/) that makes its stand-in
IMAGES = {
    "python:3.11-slim-bookworm": "python.Dockerfile",
    "nginx:1.27.4-alpine": "nginx.Dockerfile",
    "prom/prometheus:v2.55.1": "prometheus.Dockerfile",
    "nginx/nginx-prometheus-exporter:1.4.0": "nginx-exporter.Dockerfile",
}


def _mmdebstrap(packages: list[str], hooks: list[str], out: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=tar",
        "--quiet",
        '--aptopt=Acquire::Check-Valid-Until "false"',  # the mirror may serve a dated snapshot
        f"--include={','.join(packages)}",
        *(f"--customize-hook={hook}" for hook in hooks),
        "bookworm",
        str(out),
        *MIRRORS,
    ]


def _recipe_id(packages: list[str], hooks: list[str]) -> str:
    return hashlib.sha256(repr((packages, hooks, MIRRORS)).encode()).hexdigest()[:16]


def build(engine: Engine, work: Path) -> dict[str, str]:
    """Build every stand-in into `engine`; returns tag -> image id. A rootfs whose recipe is unchanged and
    already imported (a kept image cache) is not made again."""
    work.mkdir(parents=True, exist_ok=True)
    running: list[tuple[str, str, Path, subprocess.Popen[bytes]]] = []
    for name, (packages, hooks) in ROOTFS.items():
        tag = f"{name}:{_recipe_id(packages, hooks)}"
        if engine.docker("image", "inspect", tag, check=False).returncode == 0:
            continue
        out = work / f"{name.replace('/', '_')}.tar"
        log = (work / f"{out.stem}.log").open("wb")
        running.append(
            (name, tag, out, subprocess.Popen(_mmdebstrap(packages, hooks, out), stdout=log, stderr=log))
        )
    for name, tag, out, proc in running:
        if proc.wait(900) != 0:
            raise RuntimeError(
                f"mmdebstrap for {name} failed:\n{(work / f'{out.stem}.log').read_text()[-4000:]}"
            )
        engine.docker("import", str(out), tag, timeout=900)
        out.unlink()
    for name, (packages, hooks) in ROOTFS.items():
        engine.docker("tag", f"{name}:{_recipe_id(packages, hooks)}", f"{name}:latest")
    ids = {}
    for tag, dockerfile in IMAGES.items():
        engine.docker("build", "-q", "-f", str(HERE / dockerfile), "-t", tag, str(HERE), timeout=600)
        ids[tag] = engine.docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()
    return ids
