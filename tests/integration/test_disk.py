"""A small disk (issue 19): free space is part of readiness and admission, and a write that fails anyway
is its own error, with nothing half-written. The tutorials folder is a tmpfs of its own."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import gateway_behind_nginx
from tests.integration.helpers import body, stream_raw

pytestmark = pytest.mark.integration

MARGIN = 256 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/tutorials on a 512 KiB tmpfs, unmounted afterwards."""
    folder = tmp_path / "tutorials"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_until_free(folder: Path, free: int) -> Path:
    """A filler file (a dot-name: never served) that leaves about `free` bytes."""
    filler = folder / ".filler"
    stat = os.statvfs(folder)
    have = stat.f_bavail * stat.f_frsize
    with filler.open("wb") as f:
        f.write(b"\0" * max(have - free, 0))
    return filler


def journal_topics(llm_url: str) -> list[str]:
    return [e["topic"] for e in httpx.get(f"{llm_url}/_scripted/requests", timeout=5).json()["requests"]]


def test_low_disk_turns_readiness_off_and_refuses_before_any_work(llm_server, tmp_path, small_disk):
    env = {"GATEWAY_MIN_FREE_BYTES": str(MARGIN)}
    with gateway_behind_nginx(llm_server, tmp_path, env) as proxied:
        filler = fill_until_free(small_disk, MARGIN // 2)
        ready = httpx.get(f"{proxied.app.url}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json() == {"status": "low on disk"}

        topic = "Refused for want of disk"
        r = httpx.post(f"{proxied.url}/v1/chat/completions", json=body(topic, stream=True), timeout=10)
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "storage_full" and r.headers["retry-after"]
        assert topic not in journal_topics(llm_server)  # no upstream token was spent

        filler.unlink()
        assert httpx.get(f"{proxied.app.url}/readyz", timeout=5).status_code == 200
        s = stream_raw(proxied.url, body("Room again", stream=True))
        assert s.status == 200 and s.events[-1] == b"data: [DONE]\n\n"
        assert [p.name for p in small_disk.iterdir() if p.suffix == ".md"]  # the tutorial was saved


def test_a_write_that_fails_is_storage_full_and_leaves_nothing(llm_server, tmp_path, small_disk):
    env = {"GATEWAY_MIN_FREE_BYTES": "0"}  # no margin: the write itself meets the full disk
    with gateway_behind_nginx(llm_server, tmp_path, env) as proxied:
        fill_until_free(small_disk, 0)
        assert httpx.get(f"{proxied.app.url}/readyz", timeout=5).status_code == 200
        s = stream_raw(proxied.url, body("Nowhere to write", stream=True))
        assert s.status == 200
        error = s.data()[-2]["error"]
        assert error["code"] == "storage_full" and "disk is full" in error["message"], error
        assert s.events[-1] == b"data: [DONE]\n\n"
        assert sorted(p.name for p in small_disk.iterdir()) == [".filler"]  # no part, no temp file
        assert "could not save" in (tmp_path / "gunicorn.log").read_text()
