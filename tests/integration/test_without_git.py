"""The gateway serves on a host without `git` (the image has none; MetaGPT imports GitPython)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import gateway_env
from tests.integration.helpers import body
from tests.procs import PYTHON, free_port, gunicorn_args, server

pytestmark = pytest.mark.integration


def test_gunicorn_with_no_git_on_path_serves_a_completion(llm_server, tmp_path):
    path = str(Path(PYTHON).parent)  # the venv's bin: gunicorn's interpreter, and no git
    assert shutil.which("git", path=path) is None
    env = gateway_env(llm_server, tmp_path, PATH=path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server(gunicorn_args(port), health_url=f"{url}/readyz", log=tmp_path / "gunicorn.log", env=env):
        reply = httpx.post(f"{url}/v1/chat/completions", json=body("No git [[sections:1]]"), timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].startswith("# ")
    assert "Bad git executable" not in (tmp_path / "gunicorn.log").read_text()
