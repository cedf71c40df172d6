"""The fleet-wide limit in Redis holds exactly: limit 30, three hosts, 66 clients that keep trying; never
more than 30 generations run (counted by the scripted LLM's open requests and by the live slots in Redis),
every refusal is a 429 before any byte; a killed host's slots are free within the slots' expiry + 1 s;
with Redis stopped, each host follows its configured mode (local or refuse) and counts it."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest

from tests.fleet.clients import QUICK, generate
from tests.fleet.conftest import Root
from tests.fleet.gateways import Fleet, fleet
from tests.integration.helpers import hold_stream
from tests.procs import PYTHON, ROOT

LIMIT = 30
CLIENTS = 66
RUN_SECONDS = 8
TTL_SECONDS = 3
KEY = "gateway:generations"  # app.fleet_limit's sorted set: member per slot, score = its expiry
# A generation that holds its slot for about 3 s: the outline's LLM call pauses after one token.
SHORT_HOLD = "[[sections:1]][[pace:0]][[fault:stall]][[fault_at:outline]][[after:1]][[stall:3]]"
LONG_HOLD = "[[fault:stall]][[fault_at:outline]][[after:1]][[stall:60]]"
MODES = {1: "local", 2: "refuse", 3: "local"}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def limited(root: Root) -> Iterator[Fleet]:
    env = {
        "GATEWAY_REDIS_URL": root.redis.url,
        "GATEWAY_GLOBAL_MAX_GENERATIONS": str(LIMIT),
        "GATEWAY_GLOBAL_SLOT_TTL_SECONDS": str(TTL_SECONDS),
    }
    modes = {n: {"GATEWAY_GLOBAL_LIMIT_ON_REDIS_DOWN": mode} for n, mode in MODES.items()}
    with fleet(root.net.hosts, 8002, root.llm_url, root.folder / "limited", env, host_env=modes) as f:
        yield f


@pytest.fixture
def clean(root: Root, limited: Fleet) -> Iterator[Fleet]:
    with root.redis.client() as r:
        r.delete(KEY)
    yield limited
    if not root.redis.daemon or not root.redis.daemon.running():
        root.redis.start()
    limited.restart_stopped()


def live_slots(root: Root) -> int:
    with root.redis.client() as r:
        seconds, micros = r.time()
        return int(r.zcount(KEY, seconds + micros / 1e6, "+inf"))


def refused_before_any_byte(response: httpx.Response, body: bytes) -> str:
    """What is wrong with a refusal, or ''."""
    if response.status_code != 429:
        return f"status {response.status_code}"
    if not response.headers.get("content-type", "").startswith("application/json"):
        return f"content-type {response.headers.get('content-type')}: {body[:100]!r}"
    if not response.headers.get("retry-after"):
        return "no Retry-After"
    error = json.loads(body)["error"]
    return "" if error["type"] == "rate_limit_error" else f"error {error}"


def test_the_limit_holds_exactly_across_three_hosts(root, clean):
    url = clean.url
    stop = threading.Event()
    sampler = subprocess.Popen(
        [PYTHON, "-m", "tests.fleet.sampler", root.llm_url, str(root.redis.port), KEY, str(RUN_SECONDS)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )

    def client(c: int) -> tuple[int, int, list[str]]:
        done = refused = 0
        problems = []
        n = 0
        while not stop.is_set():
            n += 1
            payload = {
                "model": "write_tutorial",
                "stream": True,
                "messages": [{"role": "user", "content": f"Limited {c}-{n} {SHORT_HOLD}"}],
            }
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=30) as r:
                body = r.read()
            if r.status_code == 200:
                done += body.endswith(b"data: [DONE]\n\n")
                if not body.endswith(b"data: [DONE]\n\n"):
                    problems.append(f"cut: {body[-200:]!r}")
            else:
                refused += 1
                if problem := refused_before_any_byte(r, body):
                    problems.append(problem)
                time.sleep(0.2)
        return done, refused, problems

    threading.Timer(RUN_SECONDS, stop.set).start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    out, _ = sampler.communicate(timeout=10)
    counted = json.loads(out)
    most_llm, most_slots = counted["most_llm"], counted["most_slots"]
    done = sum(d for d, _, _ in results)
    refused = sum(r for _, r, _ in results)
    problems = [p for _, _, ps in results for p in ps]
    print(
        f"limit {LIMIT}, {CLIENTS} clients: {done} done, {refused} refused; most running at once: "
        f"{most_llm} (LLM's open requests), {most_slots} (Redis's live slots), {counted['samples']} samples"
    )
    assert not problems, f"{len(problems)} problems: {problems[:5]}"
    assert most_llm <= LIMIT and most_slots <= LIMIT
    assert most_llm == LIMIT, "the limit was never reached: the test proves nothing"
    assert done >= LIMIT and refused > CLIENTS


def test_a_killed_hosts_slots_are_free_within_the_expiry(root, clean):
    victim, prober = clean.gateways[2], clean.gateways[0]
    with httpx.Client(timeout=30) as client, ExitStack() as held:
        streams = [hold_stream(client, clean.url, f"Held {n} {LONG_HOLD}", held) for n in range(LIMIT)]
        assert [s.status_code for s in streams] == [200] * LIMIT
        assert hold_stream(client, prober.url, f"One too many {LONG_HOLD}", held).status_code == 429
        on_victim = int(victim.metric("gateway_active_generations"))
        assert on_victim >= 1
        victim.daemon.kill()
        killed = time.monotonic()
        admitted: list[float] = []
        while len(admitted) < on_victim and time.monotonic() - killed < TTL_SECONDS + 5:
            if hold_stream(client, prober.url, f"Probe {len(admitted)} {LONG_HOLD}", held).status_code == 200:
                admitted.append(time.monotonic() - killed)
            else:
                time.sleep(0.1)
        extra = hold_stream(client, prober.url, f"Full again {LONG_HOLD}", held).status_code
    print(f"a killed host's {on_victim} slots were free after {[round(t, 2) for t in admitted]} s")
    assert len(admitted) == on_victim, f"only {len(admitted)} of {on_victim} slots came back"
    assert admitted[-1] <= TTL_SECONDS + 1
    assert extra == 429, "more than the killed host's slots came back"


def test_without_redis_each_host_follows_its_mode_and_counts_it(root, clean):
    local, refusing = clean.gateways[0], clean.gateways[1]
    assert local.metric("gateway_global_limit_up") == 1 == refusing.metric("gateway_global_limit_up")
    root.redis.stop()
    g = generate(local.url, f"Without Redis {QUICK}")
    assert g.done, (g.status, g.raw[-300:])
    r = httpx.post(
        f"{refusing.url}/v1/chat/completions",
        json={
            "model": "write_tutorial",
            "stream": True,
            "messages": [{"role": "user", "content": "No Redis"}],
        },
        timeout=30,
    )
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "global_limit_unavailable" and r.headers["retry-after"]
    assert local.metric("gateway_global_limit_fallbacks_total", mode="local") >= 1
    assert refusing.metric("gateway_global_limit_fallbacks_total", mode="refuse") >= 1
    assert local.metric("gateway_global_limit_up") == 0 == refusing.metric("gateway_global_limit_up")
    root.redis.start()
    g = generate(refusing.url, f"Redis is back {QUICK}")
    assert g.done, (g.status, g.raw[-300:])
    assert refusing.metric("gateway_global_limit_up") == 1
