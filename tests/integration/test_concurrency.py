"""Many concurrent streams in one gevent worker: each receives only its own topic's text."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.integration.helpers import split_link

pytestmark = pytest.mark.integration
STREAMS = 32


def test_concurrent_streams_do_not_cross(stack):
    topics = [f"Subject{n:02d}zq" for n in range(STREAMS)]

    def run(topic: str) -> tuple[str, str, str]:
        client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)
        content, reasoning = [], []
        for chunk in client.chat.completions.create(
            model="write_tutorial",
            stream=True,
            messages=[{"role": "user", "content": f"{topic} [[pace:100]]"}],
        ):
            if chunk.choices:
                content.append(chunk.choices[0].delta.content or "")
                reasoning.append((chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or "")
        return topic, "".join(content), "".join(reasoning)

    with ThreadPoolExecutor(STREAMS) as pool:
        results = list(pool.map(run, topics))

    for topic, content, reasoning in results:
        tutorial, _ = split_link(content)
        seen = set(re.findall(r"Subject\d\dzq", tutorial + reasoning))
        assert seen == {topic}, f"{topic} received text of {seen - {topic}}"
        assert tutorial.count(topic) >= 5
