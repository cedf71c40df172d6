"""The libraries a worker defers (`app.lazy_packages.defer`) stay unloaded while it serves tutorials,
in gunicorn's worker and in-process, so the memory they would take is really saved."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.integration.helpers import body, stream_raw

pytestmark = pytest.mark.integration


def test_gunicorn_workers_serving_tutorials_never_load_pandas(stack):
    r = stream_raw(stack.url, body("Deferred imports [[sections:2]]", stream=True))
    assert r.status == 200 and r.data()[-1] == "[DONE]"
    workers = psutil.Process(stack.pid).children()
    assert workers
    for worker in workers:
        maps = Path(f"/proc/{worker.pid}/maps").read_text()
        assert "/site-packages/numpy/" in maps  # extension modules do show here (gymnasium uses numpy)
        assert "/site-packages/pandas/" not in maps


def test_streamed_and_whole_completions_load_no_deferred_library(llm_server, tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from gevent import monkey
        monkey.patch_all()
        from app import create_app, lazy_packages
        from app.settings import Settings
        client = create_app(Settings(data_dir=sys.argv[1], llm_base_url=sys.argv[2])).test_client()
        for stream in (True, False):
            request = {"stream": stream, "model": "write_tutorial",
                       "messages": [{"role": "user", "content": "Deferred imports [[sections:2]]"}]}
            reply = client.post("/v1/chat/completions", json=request)
            print(reply.status_code, reply.get_data().endswith(b"data: [DONE]\\n\\n"))
        modules = lazy_packages.METAGPT_DEFERRED_MODULES
        print("loaded:", [m for m in modules if type(sys.modules.get(m)).__name__ == "module"], len(modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), f"{llm_server}/v1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["200 True", "200 False", "loaded: [] 5"]
