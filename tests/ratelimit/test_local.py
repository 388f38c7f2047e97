from __future__ import annotations

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ratelimit import local as local_module
from app.ratelimit.base import RateLimit
from app.ratelimit.local import LocalRateLimiter
from tests.ratelimit._support import FakeClock, run_in_new_loop

# 10 a second: one token every 0.1 s, bursts of 3.
LIMIT = RateLimit.per_second(10, burst=3)


async def test_burst_is_admitted_then_refused_with_exact_retry_after(clock: FakeClock) -> None:
    limiter = LocalRateLimiter(clock)
    decisions = [await limiter.hit("k", LIMIT) for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert [d.retry_after for d in decisions[:3]] == [0.0, 0.0, 0.0]
    assert decisions[3].retry_after == pytest.approx(0.1, abs=1e-9)
    assert decisions[2].reset_after == pytest.approx(0.3, abs=1e-9)


async def test_tokens_come_back_at_the_rate(clock: FakeClock) -> None:
    limiter = LocalRateLimiter(clock)
    for _ in range(3):
        await limiter.hit("k", LIMIT)

    clock.advance(0.05)
    half_way = await limiter.hit("k", LIMIT)
    assert not half_way.allowed
    assert half_way.retry_after == pytest.approx(0.05, abs=1e-9)

    clock.advance(0.05)
    assert (await limiter.hit("k", LIMIT)).allowed
    assert not (await limiter.hit("k", LIMIT)).allowed

    clock.advance(0.3)  # a full refill, and no more than the burst is saved up
    assert [(await limiter.hit("k", LIMIT)).allowed for _ in range(4)] == [True] * 3 + [False]


async def test_peek_consumes_nothing(clock: FakeClock) -> None:
    limiter = LocalRateLimiter(clock)
    for _ in range(5):
        peeked = await limiter.peek("k", LIMIT)
        assert peeked.allowed
        assert peeked.remaining == 3
    assert [(await limiter.hit("k", LIMIT)).allowed for _ in range(4)] == [True] * 3 + [False]

    refused = await limiter.peek("k", LIMIT)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.1, abs=1e-9)


async def test_a_request_may_cost_several_tokens(clock: FakeClock) -> None:
    limiter = LocalRateLimiter(clock)
    limit = RateLimit.per_second(10, burst=5)

    first = await limiter.hit("k", limit, cost=3)
    assert first.allowed
    assert first.remaining == 2

    too_dear = await limiter.hit("k", limit, cost=3)
    assert not too_dear.allowed
    assert too_dear.remaining == 2
    assert too_dear.retry_after == pytest.approx(0.1, abs=1e-9)  # one more token needed

    assert (await limiter.hit("k", limit, cost=2)).allowed
    with pytest.raises(ValueError):
        await limiter.hit("k", limit, cost=6)


async def test_keys_are_limited_independently(clock: FakeClock) -> None:
    limiter = LocalRateLimiter(clock)
    for _ in range(3):
        await limiter.hit("a", LIMIT)
    assert not (await limiter.hit("a", LIMIT)).allowed
    assert (await limiter.hit("b", LIMIT)).allowed


async def test_refilled_keys_are_forgotten(clock: FakeClock) -> None:
    limiter = LocalRateLimiter(clock, min_sweep_size=16)
    largest = 0
    for n in range(1000):
        # Each key is refilled 0.3 s after its hit, long before the next.
        assert (await limiter.hit(f"key-{n}", LIMIT)).allowed
        largest = max(largest, limiter.tracked_keys)
        clock.advance(1.0)
    assert largest <= 16

    # A forgotten key behaves exactly like a fresh one.
    assert [(await limiter.hit("key-0", LIMIT)).allowed for _ in range(4)] == [True] * 3 + [False]


async def test_keys_still_refilling_are_kept(clock: FakeClock) -> None:
    limiter = LocalRateLimiter(clock, min_sweep_size=4)
    slow = RateLimit.per_minute(1, burst=1)
    for n in range(50):
        await limiter.hit(f"key-{n}", slow)
    assert limiter.tracked_keys == 50
    assert not (await limiter.hit("key-0", slow)).allowed


def test_constructing_warns_once_that_limits_are_not_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_module, "_warned_not_shared", False)
    with structlog.testing.capture_logs() as logs:
        LocalRateLimiter()
        LocalRateLimiter()
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "ratelimit.local_only"
    assert "not shared between replicas" in warnings[0]["detail"]


steps = st.lists(
    st.tuples(st.integers(min_value=0, max_value=300), st.integers(min_value=1, max_value=3)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps=steps)
def test_admissions_never_exceed_burst_plus_rate_and_retry_after_is_exact(
    steps: list[tuple[int, int]],
) -> None:
    """From a full bucket, admitted cost <= burst + elapsed / interval at every
    moment; and after a refusal, waiting exactly retry_after admits it."""
    clock = FakeClock()
    limiter = LocalRateLimiter(clock)
    start = clock.now
    interval = LIMIT.emission_interval

    async def scenario() -> None:
        admitted = 0
        for wait_ms, cost in steps:
            clock.advance(wait_ms / 1000)
            decision = await limiter.hit("k", LIMIT, cost)
            if not decision.allowed:
                assert decision.retry_after > 0
                assert decision.remaining < cost
                clock.advance(decision.retry_after)
                decision = await limiter.hit("k", LIMIT, cost)
                assert decision.allowed
            admitted += cost
            assert admitted <= LIMIT.burst + (clock.now - start) / interval + 1e-6

    run_in_new_loop(scenario())
