"""The bucket stays private: S3 refuses anonymous, tampered and expired requests; a missing name is the
API's JSON 404 through the edge (never S3's XML); with API keys, a download without a key or a valid
signed link is 401."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.fleet.clients import QUICK, Generation, generate
from tests.fleet.conftest import AUTH, URL_SECONDS

pytestmark = pytest.mark.integration


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def flipped(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


@pytest.fixture(scope="module")
def written(keyed) -> Generation:
    g = generate(keyed.fleet.url, f"Private {QUICK}", headers=AUTH)
    assert g.done, g.raw[-300:]
    return g


def test_s3_refuses_anonymous_tampered_and_expired_requests(root, keyed, written):
    text, info = written.tutorial()
    host = keyed.fleet.gateways[0]
    # The app's answer to nginx (asked directly here): the presigned URL nginx would fetch.
    answer = httpx.get(f"{host.url}/download/{info['name']}", headers=AUTH, timeout=10)
    issued = time.monotonic()
    assert answer.status_code == 200 and answer.headers["x-accel-redirect"] == "/_object"
    presigned = answer.headers["x-gateway-object-url"]
    assert httpx.get(presigned, timeout=10).content == text.encode()

    plain = urlunsplit(urlsplit(presigned)._replace(query=""))
    bucket_url = plain.rsplit("/", 2)[0]
    signature = dict(parse_qsl(urlsplit(presigned).query))["X-Amz-Signature"]
    other_name = plain.replace(info["name"], f"other-{'0' * 32}.md")
    refused = {
        "anonymous GET": httpx.get(plain),
        "anonymous listing": httpx.get(bucket_url),
        "anonymous PUT": httpx.put(plain, content=b"overwritten"),
        "tampered signature": httpx.get(with_query(presigned, **{"X-Amz-Signature": flipped(signature)})),
        "longer lifetime": httpx.get(with_query(presigned, **{"X-Amz-Expires": "3600"})),
        "another object": httpx.get(with_query(other_name, **dict(parse_qsl(urlsplit(presigned).query)))),
    }
    time.sleep(max(0.0, issued + URL_SECONDS + 1.5 - time.monotonic()))
    refused["expired"] = httpx.get(presigned)
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 403)
    assert httpx.get(with_query(presigned), timeout=10).status_code == 403
    assert httpx.get(f"{keyed.fleet.url}{urlsplit(info['url']).path}", headers=AUTH).content == text.encode()


def test_a_missing_name_is_a_json_404_through_the_edge(keyed):
    r = httpx.get(f"{keyed.fleet.url}/download/missing-{'0' * 32}.md", headers=AUTH, timeout=10)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "not_found"
    assert not [h for h in r.headers if h.lower().startswith(("x-amz", "seaweed", "x-gateway"))]


def test_with_keys_a_download_needs_a_key_or_a_valid_signature(keyed, written):
    text, info = written.tutorial()
    link = info["url"]
    bare = link.split("?")[0]
    assert "signature=" in link and bare.startswith(f"{keyed.fleet.url}/download/")
    assert httpx.get(link, timeout=10).content == text.encode()  # the link as given: no key needed
    assert httpx.get(bare, headers=AUTH, timeout=10).content == text.encode()
    query = dict(parse_qsl(urlsplit(link).query))
    refused = {
        "no key": httpx.get(bare),
        "wrong key": httpx.get(bare, headers={"Authorization": "Bearer not-a-key"}),
        "tampered signature": httpx.get(with_query(link, signature=flipped(query["signature"]))),
        "later expiry": httpx.get(with_query(link, expires=str(int(query["expires"]) + 60))),
    }
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 401)
    assert all(r.json()["error"]["code"] == "invalid_api_key" for r in refused.values())
