"""The simulated fleet (root only): three hosts in network namespaces on a private bridge, the root
namespace's servers (scripted LLM, SeaweedFS, Redis, Prometheus) on the bridge's address, gateways per
test module's needs, nginx at the edge. Everything started is stopped and everything named is removed,
also when a test or a start fails (and at exit, should pytest's teardown be skipped)."""

from __future__ import annotations

import atexit
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fleet import network
from tests.fleet.daemons import Daemon
from tests.fleet.gateways import Fleet, fleet
from tests.fleet.network import Network
from tests.fleet.relay import StallingRelay
from tests.fleet.services import S3, Prometheus, Redis, llm
from tests.host_state import HostState

HOSTS = 3
API_KEY = "fleet-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Lifetime of the gateway's presigned URLs on the keyed host: short, so that a test sees one expire.
URL_SECONDS = 2
# Tokens per second when a topic does not say ([[pace:N]]): fast.
PACE = 1000

_why_not = network.available()


@dataclass
class Root:
    """The network and the root namespace's servers, shared by every fleet test."""

    net: Network
    llm: Daemon
    llm_url: str
    s3: S3
    redis: Redis
    prometheus: Prometheus
    folder: Path

    def bucket(self) -> str:
        """A new private bucket (the default: no policy, no public access)."""
        name = f"fleet-{uuid.uuid4().hex[:12]}"
        self.s3.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Root]:
    if _why_not is not None:  # every fleet test needs this fixture: all of them are skipped
        pytest.skip(f"the fleet tests need root: {_why_not}")
    network.remove_leftovers()
    before = HostState.now()
    net = Network(HOSTS)
    folder = tmp_path_factory.mktemp("fleet")
    stops: list[Callable[[], None]] = []

    def teardown() -> None:
        while stops:
            stop = stops.pop()
            try:
                stop()
            except Exception as exc:  # one failed stop must not leave the rest running
                print(f"stopping failed: {exc!r}")
        net.destroy()

    atexit.register(teardown)
    try:
        net.create()
        scripted, llm_url = llm(net.bridge_ip, folder, PACE)
        stops.append(scripted.stop)
        scripted.launch()
        s3 = S3(net.bridge_ip, folder / "s3")
        stops.append(s3.stop)
        s3.start()
        redis = Redis(net.bridge_ip, folder / "redis")
        stops.append(redis.stop)
        redis.start()
        prometheus = Prometheus(folder / "prometheus")
        stops.append(prometheus.stop)
        prometheus.start([])
        scripted.wait_ready()
        yield Root(net, scripted, llm_url, s3, redis, prometheus, folder)
    finally:
        teardown()
        atexit.unregister(teardown)
    # What the fleet makes: links, namespaces and their mounts (/run/netns). The whole session runs in
    # between (this fixture ends last), so the kernel's settings are the container tests' to compare.
    left = [d for d in HostState.now().differences(before) if d.startswith(("link ", "mount "))]
    assert not left, f"the fleet tests left the host changed: {left[:10]}"


@pytest.fixture(scope="session")
def main_fleet(root: Root) -> Iterator[Fleet]:
    """Three hosts sharing one private bucket, one worker each, behind nginx; Prometheus scrapes them."""
    bucket = root.bucket()
    env = root.s3.env(bucket)
    with fleet(root.net.hosts, 8000, root.llm_url, root.folder / "main", env, bucket=bucket) as f:
        root.prometheus.discover([g.address for g in f.gateways])
        yield f
        root.prometheus.discover([])


@dataclass
class Keyed:
    """One host with API keys whose S3 traffic goes through a relay that can stall uploads."""

    fleet: Fleet
    relay: StallingRelay


@pytest.fixture(scope="session")
def keyed(root: Root) -> Iterator[Keyed]:
    bucket = root.bucket()
    relay = StallingRelay(root.net.bridge_ip, (root.net.bridge_ip, root.s3.ports["s3.port"]))
    env = {
        **root.s3.env(bucket, endpoint=f"http://{relay.address}"),
        "GATEWAY_API_KEYS": API_KEY,
        "GATEWAY_S3_URL_SECONDS": str(URL_SECONDS),
    }
    edge_keys = {"GATEWAY_API_KEYS": API_KEY}
    try:
        with fleet(
            root.net.hosts[:1],
            8001,
            root.llm_url,
            root.folder / "keyed",
            env,
            edge_extra=edge_keys,
            bucket=bucket,
        ) as f:
            yield Keyed(f, relay)
    finally:
        relay.close()
