"""Titles chosen by the LLM cannot place files outside the tutorials folder."""

from __future__ import annotations

import os
from urllib.parse import quote

import httpx
import pytest

from tests.integration.helpers import body, split_link, stream_raw

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "title",
    [
        "../../../escaped",
        "a/b/c",
        "..",
        "nul%00byte",
        "%2Fetc%2Fpasswd",
        "x" * 500,
        "..%5C..%5Cwin",
        " ",
        "%0A%0D",
    ],
)
def test_hostile_title_stays_inside(stack, title):
    before = set(os.listdir(stack.tutorials.parent))
    s = stream_raw(stack.url, body(f"Hostile titles [[title:{quote(title, safe='%')}]]", stream=True))
    assert s.status == 200 and s.events[-1] == b"data: [DONE]\n\n"
    final = s.chunks()[-1]
    info = final["tutorial"]
    path = stack.tutorials / info["name"]
    assert path.parent == stack.tutorials and path.is_file()
    assert set(os.listdir(stack.tutorials.parent)) == before  # nothing new beside the folder
    tutorial, _ = split_link(s.text())
    assert path.read_bytes() == tutorial.encode()
    assert httpx.get(info["url"], timeout=10).content == tutorial.encode()
