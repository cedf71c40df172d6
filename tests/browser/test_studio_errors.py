"""The studio's clear messages: a gateway that requires API keys (the field appears, a wrong key is named
as such, the right one works down to the signed download link), the server at its limit (429 with its
retry delay), and an upstream failure."""

from __future__ import annotations

import re
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.browser.studio_page import Studio
from tests.integration.conftest import Proxied, gateway_behind_nginx
from tests.integration.helpers import body, hold_stream

pytestmark = pytest.mark.integration

KEY = "studio-test-key-0123456789"
HELD = "Holding the only slot [[fault:stall]][[after:1]][[stall:60]]"


def test_api_keys_ask_for_a_key_name_a_wrong_one_and_sign_the_download(llm_url, open_studio, tmp_path):
    env = {"GATEWAY_API_KEYS": KEY}
    with gateway_behind_nginx(llm_url, tmp_path, env, limits={"GATEWAY_API_KEYS": KEY}) as keyed:
        studio: Studio = open_studio(keyed.url)
        field = studio.el("api-key-field")
        assert field.is_displayed(), "the key field is hidden on a gateway that requires a key"
        assert studio.el("api-key").accessible_name.strip(), "the key field has no accessible name"
        reached = studio.tab_order("order")
        form = ["topic", "model", "language", "api-key", "order"]
        assert [r for r in reached if r in form] == form, f"Tab reached {reached}"

        studio.order("Keyed SQLite [[sections:2]][[pace:0]]", key="not-" + KEY)
        error = studio.wait_error()["error"]
        assert error["code"] == "invalid_api_key" and "key" in error["text"].lower(), error

        studio.order("Keyed SQLite [[sections:2]][[pace:0]]", key=KEY)
        snap = studio.wait_state("completed", timeout=30)
        assert snap["error"] is None, snap
        assert "signature=" in snap["download"], f"the download link is not signed: {snap['download']}"
        studio.screenshot("api-key")
        with tempfile.TemporaryDirectory(prefix="studio-downloads-") as folder:
            name, data = studio.download(Path(folder))
        assert data == (keyed.app.tutorials / name).read_bytes()
        # The key is kept for this tab only.
        stored = studio.driver.execute_script(
            "return [sessionStorage.getItem('studio.apiKey'), JSON.stringify(localStorage)]"
        )
        assert stored[0] == KEY and KEY not in stored[1], stored


def test_the_server_at_its_limit_names_the_retry_delay(llm_url, open_studio, tmp_path):
    env = {"GATEWAY_MAX_GENERATIONS_PER_WORKER": "1"}
    with gateway_behind_nginx(llm_url, tmp_path, env) as limited, ExitStack() as held:
        client = held.enter_context(httpx.Client(timeout=30))
        assert hold_stream(client, limited.url, HELD, held).status_code == 200
        refused = client.post(f"{limited.url}/v1/chat/completions", json=body("Refused", stream=True))
        assert refused.status_code == 429, refused.text
        retry_after = int(refused.headers["retry-after"])

        studio: Studio = open_studio(limited.url)
        studio.order("Over the limit [[sections:2]]")
        snap = studio.wait_error()
        error = snap["error"]
        assert error["code"] == "rate_limit_exceeded", snap
        delay = re.search(r"(\d+)\s*s\b", error["text"])
        assert delay and int(delay.group(1)) == retry_after, f"no retry delay of {retry_after} s in {error}"
        assert snap["state"] not in ("submitting", "planning", "writing"), snap
        studio.screenshot("error-429")
        # The Order button may wait out the delay, no longer.
        studio.until(
            lambda: studio.el("order").is_enabled(), "Order to be enabled after the delay", retry_after + 2
        )


def test_an_upstream_failure_shows_the_upstream_message(studio: Studio, stack: Proxied):
    """The shared stack does not retry the upstream: its HTTP 500 fails the generation at once."""
    studio.open()
    studio.order("Broken upstream [[fault:http500]]")
    snap = studio.wait_state("failed", timeout=15)
    error = snap["error"]
    assert error is not None and error["code"].startswith("upstream"), snap
    assert re.search(r"\b500\b", error["text"]) and "upstream" in error["text"].lower(), error
    studio.screenshot("error-upstream")
