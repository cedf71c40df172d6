"""S3 storage on one host, against a real S3 server (SeaweedFS): the bucket's lifecycle rule is the
retention (the operator's own rules kept), a download through nginx carries the bytes and none of S3's
headers, and a failed upload is `storage_error` (an error event, no link, counted, logged), never a link
to nothing. Several hosts sharing the bucket are tests/fleet's."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from app.object_store import RULE_ID
from tests.fleet.services import S3
from tests.integration.conftest import gateway_behind_nginx
from tests.integration.helpers import body, metric, split_link, stream_raw

pytestmark = pytest.mark.integration

BUCKET = "single-host"
OPERATOR_RULE = {"ID": "operator-archive", "Status": "Enabled", "Filter": {"Prefix": "archive/"},
                 "Expiration": {"Days": 400}}  # fmt: skip


@pytest.fixture
def s3(tmp_path) -> Iterator[S3]:
    server = S3("127.0.0.1", tmp_path / "s3")
    server.start()
    try:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_lifecycle_configuration(
            Bucket=BUCKET, LifecycleConfiguration={"Rules": [OPERATOR_RULE]}
        )
        yield server
    finally:
        server.stop()


def lifecycle_rules(s3: S3, want: int, timeout: float = 30) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        rules = s3.client().get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
        if len(rules) >= want or time.monotonic() > deadline:
            return {rule["ID"]: rule for rule in rules}
        time.sleep(0.5)


def test_s3_storage_on_one_host(llm_server, s3, tmp_path):
    env = {**s3.env(BUCKET), "GATEWAY_RETENTION_SECONDS": str(3 * 86400 - 600)}
    with gateway_behind_nginx(llm_server, tmp_path, env, workers=1) as proxied:
        # Retention is the bucket's rule: whole days, rounded up, for the gateway's prefix only.
        rules = lifecycle_rules(s3, 2)
        assert rules[RULE_ID]["Expiration"] == {"Days": 3}
        assert rules[RULE_ID]["Filter"] == {"Prefix": "tutorials/"}
        assert rules["operator-archive"]["Expiration"] == {"Days": 400}
        assert not (tmp_path / "tutorials").exists()  # nothing is written to a folder

        result = stream_raw(proxied.url, body("S3 one host", stream=True))
        assert result.status == 200
        text, link = split_link(result.text())
        url = re.search(r"\((http[^)]+)\)", link).group(1)
        name = url.rsplit("/", 1)[1]
        assert s3.keys(BUCKET) == [f"tutorials/{name}"]
        download = httpx.get(url, timeout=10)
        assert download.status_code == 200 and download.content == text.encode()
        assert download.headers["content-type"] == "text/markdown; charset=utf-8"
        assert download.headers["content-disposition"] == "attachment"
        leaked = [h for h in download.headers if h.startswith(("x-amz", "seaweed")) or h in ("etag", "vary")]
        assert not leaked, download.headers
        assert download.headers["server"] == "nginx"

        # The S3 service is gone: the stream ends with storage_error and [DONE], and sends no link.
        s3.daemon.kill()
        result = stream_raw(proxied.url, body("S3 gone", stream=True))
        data = result.data()
        assert data[-1] == "[DONE]"
        errors = [d["error"] for d in data if isinstance(d, dict) and "error" in d]
        assert [e["code"] for e in errors] == ["storage_error"], data[-3:]
        assert "/download/" not in result.text()
        assert metric(proxied.app.url, "gateway_storage_failures_total", reason="error") == 1
        assert "could not save" in proxied.app.log.read_text()
