"""A background response outlives its connection across hosts (issue 21): with Redis as the response
store on three hosts, a response started on host A and left in its outline is re-attached on host B
from the last sequence number seen; together the two connections are the whole response, every event
once, and host C serves the completed object."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fleet.conftest import Root
from tests.fleet.gateways import Fleet, fleet
from tests.integration.helpers import settle
from tests.integration.test_responses_background import attach, read, request
from tests.integration.test_responses_clients import check_events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared(root: Root) -> Iterator[Fleet]:
    env = {"GATEWAY_REDIS_URL": root.redis.url}
    with fleet(root.net.hosts, 8003, root.llm_url, root.folder / "responses", env) as f:
        yield f


def test_a_background_response_started_on_one_host_resumes_whole_on_another(root, shared):
    a, b, c = shared.gateways
    resumed = b.metric("gateway_responses_resumed_total")
    with httpx.Client() as client:
        body = request("Resumed on another host [[sections:2]][[pace:100]]", background=True, stream=True)
        first = read(client, "POST", f"{a.url}/v1/responses", stop=6, json=body)
        rid, last = first[0]["response"]["id"], first[-1]["sequence_number"]
        # Running on A alone, stored in Redis, readable on B.
        assert [g.metric("gateway_responses_background") for g in (a, b, c)] == [1, 0, 0]
        with root.redis.client() as r:
            assert r.exists(f"gateway:response:{rid}", f"gateway:response:{rid}:events") == 2
        assert client.get(f"{b.url}/v1/responses/{rid}").json()["status"] == "in_progress"

        rest = attach(client, b.url, rid, after=last)
        assert rest[0]["sequence_number"] == last + 1 and rest[-1]["type"] == "response.completed"
        final = check_events(first + rest)  # 0..n-1 without a gap, the text is the file A wrote
        assert b.metric("gateway_responses_resumed_total") == resumed + 1

        stored = client.get(f"{c.url}/v1/responses/{rid}").json()
        assert stored["status"] == "completed" and stored["output"] == final["output"]
        assert stored["file"] == final["file"] and stored["usage"] == final["usage"]
    assert settle(a.url, "gateway_responses_background", 0) == 0
