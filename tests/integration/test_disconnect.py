"""A client that goes away: its MetaGPT run is cancelled and its upstream request closed."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.helpers import body, stream_raw

pytestmark = pytest.mark.integration


def wait_outcome(stack, topic: str, timeout: float) -> tuple[list[dict], float]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        entries = [e for e in stack.journal() if e["topic"] == topic]
        if entries and all(e["outcome"] != "running" for e in entries):
            return entries, time.monotonic() - start
        time.sleep(0.1)
    return [e for e in stack.journal() if e["topic"] == topic], timeout


def leave_after(stack, topic: str, events: int) -> None:
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json=body(topic, stream=True), timeout=30
    ) as r:
        assert r.status_code == 200
        for n, _ in enumerate(r.iter_raw(), 1):
            if n >= events:
                break  # leaving the block closes the connection mid-stream


@pytest.mark.parametrize(
    ("topic", "events"),
    [
        ("Leaving while tokens flow [[pace:20]]", 8),
        # the LLM is silent for 60 s: only a heartbeat write can reveal the dead client
        ("Leaving during silence [[fault:stall]][[fault_at:outline]][[after:1]][[stall:60]]", 2),
    ],
)
def test_disconnect_cancels_upstream(stack, topic, events):
    clean = topic.split(" [[")[0]
    leave_after(stack, topic, events)
    entries, waited = wait_outcome(stack, clean, timeout=8)
    assert entries, "the scripted LLM never saw the request"
    assert [e["outcome"] for e in entries][-1] == "client_closed", entries
    assert waited < 5
    # no section request was started after the cancellation, and the worker still serves
    assert all(e["kind"] == "outline" for e in entries)
    s = stream_raw(stack.url, body("After a disconnect", stream=True))
    assert s.status == 200 and s.events[-1] == b"data: [DONE]\n\n"
