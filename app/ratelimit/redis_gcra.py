"""The shared limiter: GCRA in one Lua script, one Redis round trip per decision.

Every replica talks to the same Redis, and the whole decision (read the state,
judge, write the new state) runs inside one script, so concurrent replicas can
never both spend the same token. The clock is Redis's own `TIME`, read inside
the script, so replicas with skewed clocks still agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from redis.exceptions import NoScriptError

from app.ratelimit.base import Decision, RateLimit, RateLimiterUnavailable, check_cost
from app.redis_client import REDIS_FAILURES, RedisClient

MICROSECONDS = 1_000_000

# State is one integer per key: the theoretical arrival time (TAT) in
# microseconds of Redis TIME. Every value handled here stays below 2**53, so
# Lua's doubles compute exactly.
GCRA_SCRIPT = """\
-- KEYS[1]  the key's TAT, microseconds of Redis TIME (absent: bucket full)
-- ARGV[1]  emission interval in whole microseconds (>= 1)
-- ARGV[2]  burst (>= 1)
-- ARGV[3]  cost (>= 1), or 0 for a peek: judge a cost of 1, write nothing
-- Returns {allowed 0|1, remaining, retry_after_us, reset_after_us}.

-- Before Redis 5 a script was replicated as its source, and a write after the
-- non-deterministic TIME was refused; effects replication avoids both. From
-- Redis 5 it is the default and this call is a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local peek = cost == 0
if peek then
  cost = 1
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tolerance = interval * burst

-- How far the TAT lies in the future: 0 means the bucket is full.
local ahead = 0
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat and tat > now then
  ahead = tat - now
end

local available = math.max(0, math.floor((tolerance - ahead) / interval))
local after = ahead + interval * cost
if after > tolerance then
  -- Refusals write nothing, so hammering a limited key never pushes it out.
  return {0, available, after - tolerance, ahead}
end
if peek then
  return {1, available, 0, ahead}
end
-- The key lives exactly as long as its state means something: once the TAT
-- has passed the bucket is full, which is what an absent key means too.
redis.call('SET', KEYS[1], string.format('%d', now + after), 'PX', math.ceil(after / 1000))
return {1, math.floor((tolerance - after) / interval), 0, after}
"""

# SHA1 is what EVALSHA names scripts by; it is not used for security here.
GCRA_SCRIPT_SHA = hashlib.sha1(GCRA_SCRIPT.encode(), usedforsecurity=False).hexdigest()


class RedisRateLimiter:
    """GCRA limits shared by every replica through one Redis.

    Each `hit` or `peek` is exactly one command (EVALSHA) in the steady state.
    When the server does not know the script (first use, restart, failover,
    SCRIPT FLUSH) the NOSCRIPT reply is answered by one EVAL, which runs the
    script and caches it on the server, so the next call is EVALSHA again.

    Keys are stored as `{prefix}:{<key>}`: the braces make `<key>` the Redis
    Cluster hash tag. Each key expires (PX) when its bucket is full again, so
    idle keys do not accumulate.

    Any Redis failure (connection refused, timeout, error reply) raises
    `RateLimiterUnavailable`; nothing is ever allowed by default. How quickly
    that happens is the client's business: give it short socket timeouts and
    a modest retry policy.

    The client belongs to the caller, who closes it.
    """

    def __init__(self, redis: RedisClient, *, prefix: str = "rl") -> None:
        self._redis = redis
        self._prefix = prefix

    def redis_key(self, key: str) -> str:
        """The Redis key holding `key`'s state (hash-tagged on `key`)."""
        return f"{self._prefix}:{{{key}}}"

    async def hit(self, key: str, limit: RateLimit, cost: int = 1) -> Decision:
        """Consume `cost` units of `key`'s `limit` if they are available.

        Raises ValueError unless 1 <= cost <= limit.burst, and
        RateLimiterUnavailable when Redis fails.
        """
        check_cost(limit, cost)
        return await self._run(key, limit, cost)

    async def peek(self, key: str, limit: RateLimit) -> Decision:
        """Would a cost-1 request be admitted now? Consumes nothing.

        `remaining` counts the units available now (nothing was taken).
        """
        # Cost 0 is the script's marker for a read-only judgement of cost 1.
        return await self._run(key, limit, 0)

    async def aclose(self) -> None:
        """Nothing to release: the Redis client is the caller's."""

    async def _run(self, key: str, limit: RateLimit, cost: int) -> Decision:
        redis_key = self.redis_key(key)
        args = (limit.interval_ticks(MICROSECONDS), limit.burst, cost)
        try:
            try:
                reply = await self._redis.evalsha(GCRA_SCRIPT_SHA, 1, redis_key, *args)
            except NoScriptError:
                reply = await self._redis.eval(GCRA_SCRIPT, 1, redis_key, *args)
        except REDIS_FAILURES as exc:
            # Only the type: redis-py messages can carry addresses, and a URL
            # could carry a password. The cause stays chained for debugging.
            raise RateLimiterUnavailable(
                f"rate-limit store unavailable ({type(exc).__name__})"
            ) from exc
        return _decision_from_reply(reply)


def _decision_from_reply(reply: object) -> Decision:
    if not (isinstance(reply, Sequence) and len(reply) == 4):
        raise RateLimiterUnavailable("rate-limit store gave an unexpected reply")
    allowed, remaining, retry_after_us, reset_after_us = (int(value) for value in reply)
    return Decision(
        allowed=allowed == 1,
        remaining=remaining,
        retry_after=retry_after_us / MICROSECONDS,
        reset_after=reset_after_us / MICROSECONDS,
    )
