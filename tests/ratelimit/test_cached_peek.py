from __future__ import annotations

import pytest
from redis.asyncio import Redis

from app.ratelimit import CachedPeek, LocalRateLimiter, RateLimit, RedisRateLimiter
from tests.ratelimit._support import FakeClock, script_calls

# Failed authentications: two a minute, so a token every 30 s.
FAILED_AUTH = RateLimit.per_minute(2)


@pytest.fixture
def inner(private_client: Redis, key_prefix: str) -> RedisRateLimiter:
    return RedisRateLimiter(private_client, prefix=key_prefix)


@pytest.fixture
def cached(inner: RedisRateLimiter, clock: FakeClock) -> CachedPeek:
    return CachedPeek(inner, ttl=1.0, clock=clock)


async def test_an_allowed_peek_is_remembered_for_ttl(
    cached: CachedPeek, private_client: Redis, clock: FakeClock
) -> None:
    before = await script_calls(private_client)
    first = await cached.peek("addr", FAILED_AUTH)
    for _ in range(10):
        assert await cached.peek("addr", FAILED_AUTH) == first
        clock.advance(0.09)
    assert await script_calls(private_client) - before == 1
    assert first.allowed

    clock.advance(0.11)  # now past the ttl
    assert (await cached.peek("addr", FAILED_AUTH)).allowed
    assert await script_calls(private_client) - before == 2


async def test_a_refusal_is_remembered_until_its_retry_after(
    cached: CachedPeek, private_client: Redis, clock: FakeClock
) -> None:
    assert (await cached.hit("addr", FAILED_AUTH)).allowed
    assert (await cached.hit("addr", FAILED_AUTH)).allowed
    refused = await cached.hit("addr", FAILED_AUTH)
    assert not refused.allowed
    assert 25 < refused.retry_after <= 30

    before = await script_calls(private_client)
    clock.advance(refused.retry_after - 1)
    peeked = await cached.peek("addr", FAILED_AUTH)
    assert not peeked.allowed
    assert peeked.retry_after == pytest.approx(1.0)
    assert await script_calls(private_client) == before

    clock.advance(1.001)
    await cached.peek("addr", FAILED_AUTH)
    assert await script_calls(private_client) == before + 1


async def test_a_hit_that_uses_the_last_token_makes_the_next_peek_ask(
    cached: CachedPeek, private_client: Redis
) -> None:
    assert (await cached.peek("addr", FAILED_AUTH)).allowed
    await cached.hit("addr", FAILED_AUTH)
    assert (await cached.peek("addr", FAILED_AUTH)).remaining == 1  # remembered from the hit
    last = await cached.hit("addr", FAILED_AUTH)
    assert last.allowed
    assert last.remaining == 0

    before = await script_calls(private_client)
    assert not (await cached.peek("addr", FAILED_AUTH)).allowed
    assert await script_calls(private_client) == before + 1


async def test_another_replica_going_over_is_seen_within_ttl(
    cached: CachedPeek, private_client: Redis, key_prefix: str, clock: FakeClock
) -> None:
    """The documented bound: a stale "allowed" lasts at most ttl seconds."""
    assert (await cached.peek("addr", FAILED_AUTH)).allowed
    other_replica = RedisRateLimiter(private_client, prefix=key_prefix)
    for _ in range(3):
        await other_replica.hit("addr", FAILED_AUTH)

    clock.advance(0.99)
    assert (await cached.peek("addr", FAILED_AUTH)).allowed  # still the cached answer
    clock.advance(0.02)
    assert not (await cached.peek("addr", FAILED_AUTH)).allowed


async def test_remembered_answers_are_forgotten_when_stale(clock: FakeClock) -> None:
    cached = CachedPeek(LocalRateLimiter(clock), ttl=1.0, clock=clock, min_sweep_size=16)
    largest = 0
    for n in range(500):
        await cached.peek(f"addr-{n}", FAILED_AUTH)
        largest = max(largest, cached.tracked_keys)
        clock.advance(2.0)
    assert largest <= 16
