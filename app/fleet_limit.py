"""A limit on the generations running across every host, kept in Redis (optional; off by default).

One sorted set holds a member per running generation, scored with its expiry (Redis's own clock, so the
hosts' clocks never matter). Acquiring is one Lua script, atomic in Redis: drop expired members, count,
add when under the limit. Each worker renews its members' expiry every third of the TTL in one call, and
removes a member when its generation ends. A killed worker renews nothing: its slots expire within the
TTL and the fleet's capacity comes back by itself.

When Redis cannot be reached, admission does what the operator chose (`global_limit_on_redis_down`):
`local` admits on the server's own limit, `refuse` answers 503. Either way it is counted
(`gateway_global_limit_fallbacks_total`) and `gateway_global_limit_up` is 0, which an alert watches.

redis-py's sockets are gevent's under the worker (monkey-patched): a call waits without stopping the worker.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING

import gevent
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.errors import RateLimited, Unavailable

if TYPE_CHECKING:
    from app.metrics import Metrics

log = logging.getLogger(__name__)

KEY = "gateway:generations"

# KEYS[1]: the set; ARGV: limit, ttl seconds, member. 1 when admitted, 0 when full.
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
return 1
"""

# KEYS[1]: the set; ARGV: ttl seconds, members... Renews the members still there (XX: an expired one
# stays gone: its slot may already be someone else's). Returns how many were renewed.
_RENEW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', t + tonumber(ARGV[1]), ARGV[i])
end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 60)
return n
"""


class LimitUnavailable(Unavailable):
    code = "global_limit_unavailable"
    retry = True  # nothing was started


class FleetFull(RateLimited):
    metric_reason = "global_limit"


class FleetLimit:
    def __init__(
        self, url: str, limit: int, ttl_seconds: float, on_redis_down: str, metrics: Metrics
    ) -> None:
        self.limit = limit
        self.ttl = ttl_seconds
        self.on_redis_down = on_redis_down
        self.metrics = metrics
        self.held: set[str] = set()
        self._prefix = f"{socket.gethostname()}:{os.getpid()}:"
        # Short timeouts: an unreachable Redis must cost a request about a second, not a minute. One
        # retry on a fresh connection: after Redis restarts, each pooled connection fails once.
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[redis.ConnectionError],
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._renewer: gevent.Greenlet | None = None
        self.reachable = True
        metrics.global_limit.set(limit)
        metrics.global_limit_up.set(1)

    def acquire(self) -> str | None:
        """A member holding one of the fleet's slots, or None when admitted without Redis (`local` mode).
        Raises RateLimited when the fleet is full, Unavailable when Redis is down in `refuse` mode."""
        member = self._prefix + uuid.uuid4().hex
        try:
            admitted = self._acquire(keys=[KEY], args=[self.limit, self.ttl, member])
        except redis.RedisError as exc:
            self._down(exc)
            self.metrics.global_limit_fallbacks.labels(self.on_redis_down).inc()
            if self.on_redis_down == "refuse":
                raise LimitUnavailable(
                    "The service's generation limit cannot be checked right now; retry shortly.",
                    headers={"Retry-After": "5"},
                ) from None
            return None
        self._up()
        if not admitted:
            raise FleetFull(
                f"The service is at its limit of {self.limit} concurrent generations; retry shortly.",
                headers={"Retry-After": "2"},
            )
        self.held.add(member)
        if self._renewer is None:
            self._renewer = gevent.spawn(self._renew_forever)
        return member

    def release(self, member: str) -> None:
        """Give the slot back, without making the caller wait for Redis."""
        self.held.discard(member)
        gevent.spawn(self._remove, member)

    def _remove(self, member: str) -> None:
        try:
            self._redis.zrem(KEY, member)
        except redis.RedisError as exc:  # it expires within the TTL anyway
            self._down(exc)

    def _renew_forever(self) -> None:
        while True:
            gevent.sleep(self.ttl / 3)
            if not self.held:
                continue
            try:
                self._renew(keys=[KEY], args=[self.ttl, *self.held])
            except redis.RedisError as exc:
                self._down(exc)
            else:
                self._up()

    def _up(self) -> None:
        if not self.reachable:
            self.reachable = True
            self.metrics.global_limit_up.set(1)
            log.warning("Redis (the fleet's generation limit) answers again")

    def _down(self, exc: BaseException) -> None:
        if self.reachable:  # logged once per outage; the metric and its alert tell the rest
            self.reachable = False
            self.metrics.global_limit_up.set(0)
            log.error(
                "Redis (the fleet's generation limit) failed: %s; admitting %s until it answers",
                exc,
                "on this server's limit only" if self.on_redis_down == "local" else "nothing",
            )
