"""nginx's per-client limits fit a gateway (issue 19): with API keys configured a client is its key, so
many users behind one address (a chat-UI server, a backend, a load balancer) each get the whole limit;
a made-up key counts against its sender's address, never a fresh bucket."""

from __future__ import annotations

from contextlib import ExitStack

import httpx
import pytest

from tests.integration.conftest import gateway_behind_nginx
from tests.integration.helpers import hold_stream

pytestmark = pytest.mark.integration

KEYS = ("limits-key-one", "limits-key-two")
STREAMS = 2  # per client
HELD = "Per-client limits {n} [[fault:stall]][[fault_at:outline]][[after:1]][[stall:60]]"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def nginx_refused(response: httpx.Response) -> bool:
    """nginx's own 429 (the app's names the server's limit instead)."""
    return response.status_code == 429 and b"from this client" in response.read()


def test_limits_apply_per_key_and_made_up_keys_share_their_address(llm_server, tmp_path):
    env = {"GATEWAY_API_KEYS": ",".join(KEYS)}
    limits = {
        "GATEWAY_API_KEYS": ",".join(KEYS),
        "NGINX_STREAMS_PER_CLIENT": str(STREAMS),
        "NGINX_RATE_PER_CLIENT": "1",
        "NGINX_RATE_BURST": "4",
    }
    with gateway_behind_nginx(llm_server, tmp_path, env, limits=limits) as proxied:
        url = proxied.url
        with httpx.Client(timeout=30) as client, ExitStack() as held:
            # Two keys from one address: each has its own STREAMS concurrent streams.
            for key in KEYS:
                for n in range(STREAMS):
                    response = hold_stream(client, url, HELD.format(n=n), held, bearer(key))
                    assert response.status_code == 200, response.read()
                extra = hold_stream(client, url, HELD.format(n=9), held, bearer(key))
                assert nginx_refused(extra)

            # Made-up keys, one per request, are one client (the address): past its burst, nginx
            # refuses them itself. The first ones reach the app, which answers 401.
            statuses = [
                client.get(f"{url}/v1/models", headers=bearer(f"made-up-{n}")).status_code for n in range(12)
            ]
            assert statuses[0] == 401 and 429 in statuses, statuses
            assert statuses.count(401) <= 6, statuses  # burst 4 (+1 that the rate refills)

            # A valid key is unaffected by what its address's made-up keys did.
            assert client.get(f"{url}/v1/models", headers=bearer(KEYS[0])).status_code == 200
