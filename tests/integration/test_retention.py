"""Retention on the real server (issue 19): one worker of two sweeps, another takes over when it dies,
the metrics count what was kept and removed, and a download under way when its file is removed
still gets every byte from nginx."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import gateway_behind_nginx
from tests.integration.helpers import metric

pytestmark = pytest.mark.integration

HOUR = 3600
ENV = {
    "GATEWAY_RETENTION_SECONDS": str(HOUR),
    "GATEWAY_RETENTION_MAX_BYTES": str(64 << 20),
    "GATEWAY_RETENTION_GRACE_SECONDS": "60",
    "GATEWAY_RETENTION_INTERVAL_SECONDS": "0.3",
}
LEADER = re.compile(r"retention: this worker \(pid (\d+)\) enforces it")


def put(folder: Path, name: str, data: bytes, age: float) -> Path:
    path = folder / name
    path.write_bytes(data)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def leaders(log: Path) -> list[int]:
    return [int(pid) for pid in LEADER.findall(log.read_text())]


def wait_for(predicate, timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_one_worker_sweeps_and_a_download_under_way_is_not_cut(llm_server, tmp_path):
    folder = tmp_path / "tutorials"
    folder.mkdir()
    expired = put(folder, f"expired-{'a' * 32}.md", b"old" * 100, 2 * HOUR)
    kept = put(folder, f"kept-{'b' * 32}.md", b"recent", 10)
    big_data = os.urandom(48 << 20)  # more than the socket buffers hold: nginx reads it as it sends
    big = put(folder, f"big-{'c' * 32}.md", big_data, 0)

    with gateway_behind_nginx(llm_server, tmp_path, ENV, workers=2) as proxied:
        app_url, log = proxied.app.url, tmp_path / "gunicorn.log"
        wait_for(lambda: not expired.exists(), what="the expired file's removal")
        assert kept.exists() and big.exists()
        wait_for(lambda: metric(app_url, "gateway_files_removed_total", reason="age") == 1, what="metrics")
        assert metric(app_url, "gateway_files_removed_bytes_total", reason="age") == 300
        assert metric(app_url, "gateway_files_kept") == 2
        assert metric(app_url, "gateway_files_kept_bytes") == len(b"recent") + len(big_data)
        assert metric(app_url, "gateway_retention_last_sweep_timestamp_seconds") > time.time() - 10

        # A download begins; its file expires and is removed while the client is still reading.
        digest = hashlib.sha256()
        with httpx.stream("GET", f"{proxied.url}/download/{big.name}", timeout=30) as r:
            assert r.status_code == 200
            chunks = r.iter_bytes(1 << 16)
            digest.update(next(chunks))
            os.utime(big, (time.time() - 2 * HOUR,) * 2)
            wait_for(lambda: not big.exists(), what="the big file's removal")
            for chunk in chunks:
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(big_data).hexdigest()
        gone = httpx.get(f"{proxied.url}/download/{big.name}", timeout=10)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"

        # Exactly one of the two workers leads; when it dies, the other (or its replacement) takes over.
        (first,) = set(leaders(log))
        workers = {w.pid for w in psutil.Process(proxied.app.pid).children()}
        assert first in workers and len(workers) == 2
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(set(leaders(log))) == 2, what="a new leader")
        (second,) = set(leaders(log)) - {first}
        assert second in {w.pid for w in psutil.Process(proxied.app.pid).children()}
        late = put(folder, f"late-{'d' * 32}.md", b"late", 2 * HOUR)
        wait_for(lambda: not late.exists(), what="the new leader's sweep")
