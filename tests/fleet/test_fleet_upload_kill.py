"""No partial tutorial is ever visible: a worker SIGKILLed while its upload to S3 is under way (a relay
holds back the PUT's last byte) leaves no object behind, and its client never gets a link."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fleet.clients import QUICK, generate
from tests.fleet.conftest import AUTH

pytestmark = pytest.mark.integration


def test_a_writer_killed_during_its_upload_leaves_no_object_and_sends_no_link(root, keyed):
    host, relay = keyed.fleet.gateways[0], keyed.relay
    before = set(root.s3.keys(keyed.fleet.bucket))
    (worker,) = host.workers()
    relay.stalled.set()
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(generate, host.url, f"Cut upload {QUICK}", AUTH)
            assert relay.put_held.wait(30), "the upload never began"
            time.sleep(0.5)  # the PUT stays stalled: S3 has all of it but its last byte
            assert not future.done()
            os.kill(worker, signal.SIGKILL)
            g = future.result(timeout=30)
    finally:
        relay.stalled.clear()
        relay.put_held.clear()
        relay.drop_connections()
    assert not g.done and not g.has_link() and b'"tutorial"' not in g.raw, g.raw[-300:]
    time.sleep(1)
    assert set(root.s3.keys(keyed.fleet.bucket)) == before
    # The master replaces the worker; the host writes again.
    deadline = time.monotonic() + 30
    while host.workers() in ([], [worker]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    host.daemon.wait_ready()
    again = generate(host.url, f"After the cut upload {QUICK}", AUTH)
    assert again.done and again.has_link(), again.raw[-300:]
