"""Every download link works from any host: 30 generations spread over three hosts sharing one bucket,
each link fetched three times through the edge (wherever nginx sends the GET): all 200, bytes equal to
the tutorial as streamed, and nothing of S3's in the answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.fleet.clients import QUICK, generate

GENERATIONS = 30
FETCHES = 3

pytestmark = pytest.mark.integration


def test_every_link_works_from_any_host(root, main_fleet):
    before = {g.address: g.metric("gateway_tutorials_written_total") for g in main_fleet.gateways}
    with ThreadPoolExecutor(6) as pool:
        generations = list(
            pool.map(lambda n: generate(main_fleet.url, f"Linked {n} {QUICK}"), range(GENERATIONS))
        )
    assert [g.done for g in generations] == [True] * GENERATIONS, [
        g.raw[-300:] for g in generations if not g.done
    ]
    written = {
        g.address: g.metric("gateway_tutorials_written_total") - before[g.address]
        for g in main_fleet.gateways
    }
    assert sum(written.values()) == GENERATIONS and all(written.values()), f"written per host: {written}"

    fetched = failed = 0
    with httpx.Client(timeout=10) as client:
        for g in generations:
            text, info = g.tutorial()
            assert info["url"].startswith(f"{main_fleet.url}/download/")
            for _ in range(FETCHES):
                r = client.get(info["url"])
                fetched += 1
                if r.status_code != 200 or r.content != text.encode():
                    failed += 1
                    continue
                assert r.headers["content-type"].startswith("text/markdown")
                assert r.headers["content-disposition"] == "attachment"
                assert not [h for h in r.headers if h.lower().startswith(("x-amz", "seaweed", "x-gateway"))]
    keys = root.s3.keys(main_fleet.bucket)
    assert {f"tutorials/{g.tutorial()[1]['name']}" for g in generations} <= set(keys)
    print(f"{fetched - failed} of {fetched} fetches of {GENERATIONS} links ok; written per host {written}")
    assert failed == 0, f"{failed} of {fetched} fetches failed or differed"
