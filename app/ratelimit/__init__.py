"""Rate limits for webhook ingress: shared through Redis, or in process without it.

- `RedisRateLimiter`: GCRA in one Lua script, shared by all replicas.
- `LocalRateLimiter`: the same algorithm in process (embedded default, no Redis).
- `LeasedRateLimiter`: spends tokens leased from Redis in batches (hot path).
- `CachedPeek`: remembers peeks per key (the failed-authentication check).
"""

from app.ratelimit.base import Decision, RateLimit, RateLimiter, RateLimiterUnavailable
from app.ratelimit.leased import CachedPeek, LeasedRateLimiter
from app.ratelimit.local import LocalRateLimiter
from app.ratelimit.redis_gcra import RedisRateLimiter

__all__ = [
    "CachedPeek",
    "Decision",
    "LeasedRateLimiter",
    "LocalRateLimiter",
    "RateLimit",
    "RateLimiter",
    "RateLimiterUnavailable",
    "RedisRateLimiter",
]
