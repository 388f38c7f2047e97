from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from app.ratelimit import (
    Decision,
    LeasedRateLimiter,
    LocalRateLimiter,
    RateLimit,
    RateLimiterUnavailable,
    RedisRateLimiter,
)
from tests.ratelimit._support import (
    FakeClock,
    fast_failing_client,
    free_port,
    run_in_new_loop,
    script_calls,
)

# One token an hour: nothing refills while a test runs, so counts are exact.
HOURLY_100 = RateLimit(rate=1, period=3600, burst=100)


def make_leased(
    client: Redis, prefix: str, clock: FakeClock, lease_size: int = 10
) -> tuple[LeasedRateLimiter, RedisRateLimiter]:
    inner = RedisRateLimiter(client, prefix=prefix)
    return LeasedRateLimiter(inner, lease_size=lease_size, lease_ttl=0.25, clock=clock), inner


async def trips_per_hit(
    client: Redis, limiter: LeasedRateLimiter, limit: RateLimit, hits: int
) -> tuple[list[int], list[Decision]]:
    """Round trips to Redis made by each of `hits` sequential hits."""
    trips: list[int] = []
    decisions: list[Decision] = []
    for _ in range(hits):
        before = await script_calls(client)
        decisions.append(await limiter.hit("k", limit))
        trips.append(await script_calls(client) - before)
    return trips, decisions


async def test_most_decisions_cost_no_round_trip(
    private_client: Redis, key_prefix: str, clock: FakeClock
) -> None:
    leased, _ = make_leased(private_client, key_prefix, clock)
    limit = RateLimit.per_second(1000, burst=1000)

    before = await script_calls(private_client)
    decisions = [await leased.hit("k", limit) for _ in range(500)]
    trips = await script_calls(private_client) - before

    assert all(d.allowed for d in decisions)
    # Batches of 1, 2, 4 and 8 while the demand shows, then 10 each time.
    assert trips == 4 + -(-(500 - 15) // 10)


async def test_concurrent_waiters_share_one_round_trip(
    private_client: Redis, key_prefix: str, clock: FakeClock
) -> None:
    leased, _ = make_leased(private_client, key_prefix, clock)
    limit = RateLimit.per_second(1000, burst=1000)

    before = await script_calls(private_client)
    decisions = await asyncio.gather(*(leased.hit("k", limit) for _ in range(100)))
    trips = await script_calls(private_client) - before

    assert all(d.allowed for d in decisions)
    assert trips <= 100 // 10 + 4


async def test_two_replicas_admit_exactly_what_redis_granted(
    private_client: Redis, private_redis_url: str, key_prefix: str
) -> None:
    limit = RateLimit(rate=1, period=3600, burst=50)
    other_client = Redis.from_url(private_redis_url)
    inner = RedisRateLimiter(private_client, prefix=key_prefix)
    # A long lease_ttl, so that no token expires on a slow machine and the
    # count below is exact.
    replicas = [
        LeasedRateLimiter(inner, lease_ttl=60),
        LeasedRateLimiter(RedisRateLimiter(other_client, prefix=key_prefix), lease_ttl=60),
    ]
    try:
        before = await script_calls(private_client)
        decisions = await asyncio.gather(*(replicas[n % 2].hit("k", limit) for n in range(300)))
        trips = await script_calls(private_client) - before
    finally:
        await other_client.aclose()

    # Every token Redis had was granted (partial batches included) and spent,
    # and not one more.
    assert sum(d.allowed for d in decisions) == 50
    assert (await inner.peek("k", limit)).remaining == 0
    assert trips < 60
    refused = [d for d in decisions if not d.allowed]
    assert all(3600 - 60 <= d.retry_after <= 3600 for d in refused)


async def test_partial_capacity_is_taken_rather_than_refused(
    private_client: Redis, key_prefix: str, clock: FakeClock
) -> None:
    limit = RateLimit(rate=1, period=3600, burst=10)
    leased, _ = make_leased(private_client, key_prefix, clock, lease_size=8)

    started = time.monotonic()
    trips, decisions = await trips_per_hit(private_client, leased, limit, 12)
    elapsed = time.monotonic() - started

    assert [d.allowed for d in decisions] == [True] * 10 + [False] * 2
    # Batches of 1, 2 and 4 take 7 tokens; the batch of 8 is refused with 3
    # left, so those 3 are taken; then Redis is empty and says so once.
    assert trips == [1, 1, 0, 1, 0, 0, 0, 2, 0, 0, 1, 0]
    # The next token comes an interval (an hour) after the first hit.
    assert 3600 - elapsed - 0.01 <= decisions[10].retry_after <= 3600
    assert decisions[11].retry_after == decisions[10].retry_after  # the clock stood still


async def test_unspent_tokens_are_dropped_when_the_lease_expires(
    private_client: Redis, key_prefix: str, clock: FakeClock
) -> None:
    leased, inner = make_leased(private_client, key_prefix, clock)

    trips, _ = await trips_per_hit(private_client, leased, HOURLY_100, 5)
    assert trips == [1, 1, 0, 1, 0]  # batches of 1, 2, 4: two tokens left
    assert (await inner.peek("k", HOURLY_100)).remaining == 100 - 7

    clock.advance(0.26)
    trips, decisions = await trips_per_hit(private_client, leased, HOURLY_100, 2)
    assert all(d.allowed for d in decisions)
    # The two leftover tokens were void: a new batch was fetched, sized by
    # what the expired lease saw spent (2), and nothing was given back.
    assert trips == [1, 0]
    assert (await inner.peek("k", HOURLY_100)).remaining == 100 - 9


async def test_a_quiet_key_takes_one_token_at_a_time(
    private_client: Redis, key_prefix: str, clock: FakeClock
) -> None:
    leased, inner = make_leased(private_client, key_prefix, clock)
    for _ in range(20):
        assert (await leased.hit("k", HOURLY_100)).allowed
        clock.advance(1.0)
    assert (await inner.peek("k", HOURLY_100)).remaining == 100 - 20


async def test_a_refused_key_is_refused_locally_until_retry_after(
    private_client: Redis, key_prefix: str, clock: FakeClock
) -> None:
    limit = RateLimit.per_minute(1, burst=2)
    leased, _ = make_leased(private_client, key_prefix, clock)

    started = time.monotonic()
    trips, decisions = await trips_per_hit(private_client, leased, limit, 10)
    elapsed = time.monotonic() - started
    assert [d.allowed for d in decisions] == [True, True] + [False] * 8
    # 1 token, then a batch of 2 refused with 1 left and that 1 taken, then
    # one refusal from Redis; the other refusals cost nothing.
    assert trips == [1, 2, 1] + [0] * 7
    retry_after = decisions[2].retry_after
    assert 60 - elapsed - 0.01 <= retry_after <= 60
    assert decisions[2].retry_after_header() == "60"

    clock.advance(retry_after / 2)
    trips, decisions = await trips_per_hit(private_client, leased, limit, 1)
    assert trips == [0]
    assert decisions[0].retry_after == pytest.approx(retry_after / 2)

    clock.advance(retry_after / 2 + 0.001)  # (a float sum of halves can fall short)
    trips, decisions = await trips_per_hit(private_client, leased, limit, 1)
    assert trips == [1]  # Redis is asked again (its clock has not moved, so: no)
    assert not decisions[0].allowed


async def test_peek_is_answered_by_redis(
    private_client: Redis, key_prefix: str, clock: FakeClock
) -> None:
    leased, _ = make_leased(private_client, key_prefix, clock)
    await leased.hit("k", HOURLY_100)
    before = await script_calls(private_client)
    peeked = await leased.peek("k", HOURLY_100)
    assert await script_calls(private_client) - before == 1
    assert peeked.remaining == 99


async def test_redis_failure_is_reported_not_allowed() -> None:
    client = fast_failing_client(f"redis://127.0.0.1:{free_port()}/0")
    leased = LeasedRateLimiter(RedisRateLimiter(client))
    try:
        with pytest.raises(RateLimiterUnavailable):
            await leased.hit("k", HOURLY_100)
    finally:
        await leased.aclose()
        await client.aclose()


async def test_cost_above_the_burst_is_a_value_error(clock: FakeClock) -> None:
    leased = LeasedRateLimiter(LocalRateLimiter(clock), clock=clock)
    with pytest.raises(ValueError):
        await leased.hit("k", RateLimit.per_second(1, burst=2), cost=3)


async def test_keys_with_nothing_leased_are_forgotten(clock: FakeClock) -> None:
    leased = LeasedRateLimiter(LocalRateLimiter(clock), clock=clock, min_sweep_size=16)
    largest = 0
    for n in range(500):
        assert (await leased.hit(f"key-{n}", HOURLY_100)).allowed
        largest = max(largest, leased.tracked_keys)
        clock.advance(1.0)
    assert largest <= 16


class SharedLimiter:
    """Stands in for Redis in the property test: a LocalRateLimiter on the
    test's clock, reached over a "network" with the given round-trip time
    (the grant happens half way), counting what it granted."""

    def __init__(self, clock: FakeClock, round_trip: float) -> None:
        self.inner = LocalRateLimiter(clock)
        self.clock = clock
        self.round_trip = round_trip
        self.granted = 0

    async def hit(self, key: str, limit: RateLimit, cost: int = 1) -> Decision:
        self.clock.advance(self.round_trip / 2)
        decision = await self.inner.hit(key, limit, cost)
        if decision.allowed:
            self.granted += cost
        self.clock.advance(self.round_trip / 2)
        return decision

    async def peek(self, key: str, limit: RateLimit) -> Decision:
        return await self.inner.peek(key, limit)

    async def aclose(self) -> None:
        await self.inner.aclose()


operations = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # which replica
        st.integers(min_value=0, max_value=200),  # milliseconds before the hit
        st.integers(min_value=1, max_value=3),  # cost
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(operations=operations, round_trip_ms=st.sampled_from([0, 1, 40, 300]))
def test_replicas_never_admit_more_than_granted_nor_early(
    operations: list[tuple[int, int, int]], round_trip_ms: int
) -> None:
    """Three replicas lease from one shared limiter. At every moment the
    admitted cost is at most what was granted, which from a full bucket is at
    most burst + elapsed / interval: leased tokens are spent late, never early.
    Round trips longer than lease_ttl make leases expire on arrival."""
    limit = RateLimit.per_second(20, burst=8)
    clock = FakeClock()
    shared = SharedLimiter(clock, round_trip_ms / 1000)
    replicas = [
        LeasedRateLimiter(shared, lease_size=5, lease_ttl=0.25, clock=clock) for _ in range(3)
    ]
    start = clock.now

    async def scenario() -> None:
        admitted = 0
        for replica, wait_ms, cost in operations:
            clock.advance(wait_ms / 1000)
            decision = await replicas[replica].hit("k", limit, cost)
            if decision.allowed:
                admitted += cost
            else:
                assert decision.retry_after > 0
            assert admitted <= shared.granted
            assert admitted <= limit.burst + (clock.now - start) / limit.emission_interval + 1e-6

    run_in_new_loop(scenario())
