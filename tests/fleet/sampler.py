"""Counts running generations independently of the gateways, in a process of its own (the test's many
client threads would otherwise starve it): the scripted LLM's open requests and the live slots in Redis,
sampled until the time is up; prints the largest of each and the number of samples, as JSON.

    python -m tests.fleet.sampler LLM_URL REDIS_PORT KEY SECONDS
"""

from __future__ import annotations

import json
import sys
import time

import httpx
import redis


def main() -> None:
    llm_url, port, key, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    most_llm = most_slots = samples = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=2) as llm, redis.Redis(port=port, socket_timeout=2) as store:
        while time.monotonic() < deadline:
            most_llm = max(most_llm, int(llm.get(f"{llm_url}/_scripted/stats").json()["active"]))
            now_s, now_us = store.time()
            most_slots = max(most_slots, int(store.zcount(key, now_s + now_us / 1e6, "+inf")))
            samples += 1
            time.sleep(0.01)
    print(json.dumps({"samples": samples, "most_llm": most_llm, "most_slots": most_slots}))


if __name__ == "__main__":
    main()
