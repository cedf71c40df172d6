"""The libraries a worker defers (`app.runtime.lazy_packages.defer`) stay unloaded while it serves tutorials,
in gunicorn's worker and in-process, so the memory they would take is really saved."""

from __future__ import annotations

import re
import shutil
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
        from app import create_app
        from app.runtime import lazy_packages
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


def test_the_gateway_process_never_imports_what_it_does_not_use(tmp_path):
    """A worker's imports after building the app and its agents: none of MetaGPT's other providers,
    tools or environments, nor the deferred libraries, while every name MetaGPT's packages define
    (and pandas, used) is still importable."""
    script = textwrap.dedent(
        """
        import sys
        from app import create_app
        from app.settings import Settings
        create_app(Settings(data_dir=sys.argv[1]))
        import app.agents.tutorial, app.agents.teaching_plan, app.runtime.llm
        unused = ["sklearn", "scipy", "IPython", "google.generativeai", "zhipuai", "dashscope", "qianfan",
                  "botocore", "playwright", "sparkai", "volcenginesdkarkruntime", "metagpt.roles.engineer",
                  "metagpt.actions.research", "metagpt.environment.werewolf"]
        # Test tools' libraries (selenium's trio) that httpcore imports whenever they are installed: the
        # image has none of them (checked below), so they are not the gateway's.
        dev_only = {"trio", "outcome", "sortedcontainers"}
        own = [m for m in sys.modules if m.partition(".")[0] not in dev_only]
        print("loaded:", [m for m in unused if m in sys.modules], len(own))
        deferred = app.runtime.lazy_packages.METAGPT_DEFERRED_MODULES
        print("deferred loaded:", [m for m in deferred if type(sys.modules.get(m)).__name__ == "module"])
        from metagpt.actions import ActionType
        from metagpt.provider import OpenAILLM
        from metagpt.roles import Engineer
        import metagpt.tools
        from pandas import DataFrame
        assert DataFrame({"a": [1, 2]}).shape == (2, 1)
        assert issubclass(app.runtime.llm.GatewayLLM, OpenAILLM) and ActionType.WRITE_PRD and Engineer
        assert metagpt.tools.libs.__name__ == "metagpt.tools.libs"
        print("all names importable")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    loaded, count = out.splitlines()[0].removeprefix("loaded: ").rsplit(" ", 1)
    assert loaded == "[]"
    assert int(count) < 1700  # 4,994 with MetaGPT's packages imported in full, 2,216 with pandas & co.
    production = subprocess.run(
        [
            shutil.which("uv") or "uv",
            "export",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--format",
            "requirements-txt",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    assert not re.search(r"^(trio|outcome|sortedcontainers)==", production, re.MULTILINE), "in the image now"
    assert out.splitlines()[1] == "deferred loaded: []"
    assert out.splitlines()[2] == "all names importable"
