from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from app.ratelimit import RateLimit, RateLimiterUnavailable, RedisRateLimiter
from app.ratelimit.redis_gcra import GCRA_SCRIPT_SHA
from tests.ratelimit._support import (
    RedisServer,
    calls_delta,
    command_calls,
    fast_failing_client,
    free_port,
)
from tests.waiting import eventually

# One token a minute: nothing refills while a test runs, so counts are exact.
SLOW = RateLimit.per_minute(1, burst=5)
INTERVAL = SLOW.emission_interval


@pytest.fixture
def limiter(redis_client: Redis, key_prefix: str) -> RedisRateLimiter:
    return RedisRateLimiter(redis_client, prefix=key_prefix)


async def test_burst_is_admitted_then_refused_with_retry_after(limiter: RedisRateLimiter) -> None:
    started = time.monotonic()
    decisions = [await limiter.hit("k", SLOW) for _ in range(6)]
    elapsed = time.monotonic() - started

    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    assert all(d.retry_after == 0 for d in decisions[:5])
    # The next token comes one interval after the first hit, whenever that was
    # within the measured span.
    assert INTERVAL - elapsed - 0.01 <= decisions[5].retry_after <= INTERVAL
    assert 5 * INTERVAL - elapsed - 0.01 <= decisions[5].reset_after <= 5 * INTERVAL
    assert decisions[5].retry_after_header() == "60"


async def test_refusals_do_not_push_the_key_further_out(limiter: RedisRateLimiter) -> None:
    for _ in range(5):
        await limiter.hit("k", SLOW)
    first = await limiter.hit("k", SLOW)
    for _ in range(20):
        await limiter.hit("k", SLOW)
    last = await limiter.hit("k", SLOW)
    assert not last.allowed
    assert last.retry_after <= first.retry_after


async def allowed_by_peek(limiter: RedisRateLimiter, key: str, limit: RateLimit) -> bool:
    return (await limiter.peek(key, limit)).allowed


async def test_tokens_come_back_at_the_rate(limiter: RedisRateLimiter) -> None:
    fast = RateLimit.per_second(20, burst=2)  # a token every 50 ms
    assert (await limiter.hit("k", fast)).allowed
    assert (await limiter.hit("k", fast)).allowed
    refused = await limiter.hit("k", fast)
    assert not refused.allowed
    assert 0 < refused.retry_after <= fast.emission_interval

    # Peeking consumes nothing: wait until Redis's clock says a token is back.
    await eventually(lambda: allowed_by_peek(limiter, "k", fast), "a token to come back")
    assert (await limiter.hit("k", fast)).allowed


async def test_peek_consumes_nothing(limiter: RedisRateLimiter) -> None:
    for _ in range(10):
        peeked = await limiter.peek("k", SLOW)
        assert peeked.allowed
        assert peeked.remaining == 5
    assert [(await limiter.hit("k", SLOW)).allowed for _ in range(6)] == [True] * 5 + [False]
    peeked = await limiter.peek("k", SLOW)
    assert not peeked.allowed
    assert 0 < peeked.retry_after <= INTERVAL


async def test_a_request_may_cost_several_tokens(limiter: RedisRateLimiter) -> None:
    started = time.monotonic()
    first = await limiter.hit("k", SLOW, cost=3)
    too_dear = await limiter.hit("k", SLOW, cost=3)
    elapsed = time.monotonic() - started

    assert first.allowed
    assert first.remaining == 2
    assert not too_dear.allowed
    assert too_dear.remaining == 2
    assert INTERVAL - elapsed - 0.01 <= too_dear.retry_after <= INTERVAL  # one token short
    last = await limiter.hit("k", SLOW, cost=2)
    assert last.allowed
    assert last.remaining == 0


async def test_cost_above_the_burst_is_a_value_error(limiter: RedisRateLimiter) -> None:
    with pytest.raises(ValueError, match="exceeds the burst"):
        await limiter.hit("k", SLOW, cost=6)
    with pytest.raises(ValueError):
        await limiter.hit("k", SLOW, cost=0)


async def test_key_is_hash_tagged_and_expires_when_refilled(
    limiter: RedisRateLimiter, redis_client: Redis, key_prefix: str
) -> None:
    redis_key = limiter.redis_key("conn:42")
    assert redis_key == f"{key_prefix}:{{conn:42}}"
    # The hash tag puts every prefix's key for this connection in one slot.
    assert key_slot(redis_key.encode()) == key_slot(b"conn:42")

    decision = await limiter.hit("conn:42", SLOW)
    ttl_ms = await redis_client.pttl(redis_key)
    assert 0 < ttl_ms <= round(decision.reset_after * 1000) + 1
    assert 0 < ttl_ms <= INTERVAL * 1000

    fast = RateLimit.per_second(100, burst=1)  # refilled 10 ms after a hit
    await limiter.hit("idle", fast)

    async def expired() -> bool:
        return await redis_client.exists(limiter.redis_key("idle")) == 0

    await eventually(expired, "the idle key to expire")


async def test_limits_are_shared_between_limiter_objects(
    redis_client: Redis, key_prefix: str
) -> None:
    replica_a = RedisRateLimiter(redis_client, prefix=key_prefix)
    replica_b = RedisRateLimiter(redis_client, prefix=key_prefix)
    for _ in range(3):
        await replica_a.hit("k", SLOW)
    assert (await replica_b.hit("k", SLOW)).remaining == 1


async def test_concurrent_hits_admit_exactly_the_burst(limiter: RedisRateLimiter) -> None:
    decisions = await asyncio.gather(*(limiter.hit("k", SLOW) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 5


async def test_one_decision_is_one_command(private_client: Redis, key_prefix: str) -> None:
    limiter = RedisRateLimiter(private_client, prefix=key_prefix)
    await limiter.hit("warm-up", SLOW)  # the first call may have to load the script

    before = await command_calls(private_client)
    await limiter.hit("k", SLOW)
    after_hit = await command_calls(private_client)
    await limiter.peek("k", SLOW)
    after_peek = await command_calls(private_client)

    # commandstats also counts the commands the script itself runs (TIME, GET
    # and, when it admits, SET); EVALSHA is the only one the client sent.
    assert calls_delta(before, after_hit) == {"evalsha": 1, "time": 1, "get": 1, "set": 1}
    assert calls_delta(after_hit, after_peek) == {"evalsha": 1, "time": 1, "get": 1}


async def test_script_is_reloaded_after_the_server_forgets_it(
    private_client: Redis, key_prefix: str
) -> None:
    limiter = RedisRateLimiter(private_client, prefix=key_prefix)
    await private_client.script_flush()

    before = await command_calls(private_client)
    assert (await limiter.hit("k", SLOW)).allowed
    middle = await command_calls(private_client)
    assert (await limiter.hit("k", SLOW)).remaining == 3
    after = await command_calls(private_client)

    # NOSCRIPT is answered by one EVAL, which also caches the script ...
    assert calls_delta(before, middle)["evalsha"] == 1
    assert calls_delta(before, middle)["eval"] == 1
    # ... so the next decision is a single EVALSHA again.
    assert calls_delta(middle, after).get("eval", 0) == 0
    assert calls_delta(middle, after)["evalsha"] == 1


async def test_redis_errors_raise_unavailable_instead_of_allowing(
    limiter: RedisRateLimiter, redis_client: Redis
) -> None:
    await redis_client.rpush(limiter.redis_key("k"), "not a timestamp")
    with pytest.raises(RateLimiterUnavailable):
        await limiter.hit("k", SLOW)


async def test_unreachable_redis_raises_unavailable_without_credentials() -> None:
    client = fast_failing_client(f"redis://admin:s3cret-pw@127.0.0.1:{free_port()}/0")
    limiter = RedisRateLimiter(client)
    try:
        with pytest.raises(RateLimiterUnavailable) as raised:
            await limiter.hit("k", SLOW)
        assert "s3cret-pw" not in str(raised.value)
        assert "s3cret-pw" not in repr(raised.value)
        with pytest.raises(RateLimiterUnavailable):
            await limiter.peek("k", SLOW)
    finally:
        await limiter.aclose()
        await limiter.aclose()  # closing twice is harmless
        await client.aclose()


async def test_survives_a_redis_restart(throwaway_redis: RedisServer, key_prefix: str) -> None:
    throwaway_redis.start()
    client = fast_failing_client(throwaway_redis.url)
    limiter = RedisRateLimiter(client, prefix=key_prefix)
    try:
        assert (await limiter.hit("k", SLOW)).allowed
        assert (await limiter.hit("k", SLOW)).remaining == 3

        throwaway_redis.kill()
        with pytest.raises(RateLimiterUnavailable):
            await limiter.hit("k", SLOW)
        with pytest.raises(RateLimiterUnavailable):
            await limiter.peek("k", SLOW)

        throwaway_redis.start()  # same port, empty: no state and no script
        assert await client.script_exists(GCRA_SCRIPT_SHA) == [False]
        decision = await limiter.hit("k", SLOW)
        assert decision.allowed
        assert decision.remaining == 4  # the old state went with the old server
        assert await client.script_exists(GCRA_SCRIPT_SHA) == [True]
        assert (await limiter.hit("k", SLOW)).remaining == 3
    finally:
        await limiter.aclose()
        await client.aclose()
