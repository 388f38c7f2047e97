"""Code run in separate OS processes by test_distributed (spawned, so it must be
importable and picklable by name)."""

from __future__ import annotations

import asyncio
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from redis.asyncio import Redis

from app.ratelimit import LeasedRateLimiter, RateLimit, RateLimiter, RedisRateLimiter


def hammer(
    url: str,
    prefix: str,
    limit: RateLimit,
    attempts: int,
    concurrency: int,
    leased: bool,
    barrier: Barrier,
    results: Queue[tuple[int, int, int]],
) -> None:
    """Hit one key `attempts` times and report (admitted, start_us, end_us),
    the span measured on Redis's clock, which is the limiter's clock."""
    results.put(asyncio.run(_hammer(url, prefix, limit, attempts, concurrency, leased, barrier)))


async def _hammer(
    url: str,
    prefix: str,
    limit: RateLimit,
    attempts: int,
    concurrency: int,
    leased: bool,
    barrier: Barrier,
) -> tuple[int, int, int]:
    client = Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    limiter: RateLimiter = RedisRateLimiter(client, prefix=prefix)
    if leased:
        limiter = LeasedRateLimiter(limiter, lease_size=10, lease_ttl=0.25)
    await client.ping()
    # Start together, so the processes really do contend.
    await asyncio.to_thread(barrier.wait, 60)
    start = await _redis_now_us(client)
    admitted = 0

    async def worker(count: int) -> None:
        nonlocal admitted
        for _ in range(count):
            if (await limiter.hit("shared", limit)).allowed:
                admitted += 1

    await asyncio.gather(*(worker(attempts // concurrency) for _ in range(concurrency)))
    end = await _redis_now_us(client)
    await limiter.aclose()
    await client.aclose()
    return admitted, start, end


async def _redis_now_us(client: Redis) -> int:
    seconds, microseconds = await client.time()
    return int(seconds) * 1_000_000 + int(microseconds)
