from __future__ import annotations

import pytest

from app.ratelimit import (
    CachedPeek,
    Decision,
    LeasedRateLimiter,
    LocalRateLimiter,
    RateLimit,
    RateLimiter,
    RedisRateLimiter,
)
from app.ratelimit.base import LazySweeper, check_cost


def test_per_second_and_per_minute_spell_out_rate_period_and_burst() -> None:
    assert RateLimit.per_second(300, 600) == RateLimit(rate=300, period=1.0, burst=600)
    assert RateLimit.per_minute(20) == RateLimit(rate=20, period=60.0, burst=20)
    assert RateLimit.per_second(5).burst == 5
    assert RateLimit.per_minute(0.5).burst == 1


@pytest.mark.parametrize(
    ("rate", "period", "burst"),
    [(0, 1, 1), (-1, 1, 1), (1, 0, 1), (1, float("inf"), 1), (float("nan"), 1, 1), (1, 1, 0)],
)
def test_nonsensical_limits_are_refused(rate: float, period: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimit(rate=rate, period=period, burst=burst)


def test_interval_ticks_round_up_and_ignore_binary_noise() -> None:
    assert RateLimit.per_second(300).interval_ticks(1_000_000) == 3334
    assert RateLimit(rate=1, period=0.1, burst=1).interval_ticks(1_000_000) == 100_000
    assert RateLimit.per_minute(20).interval_ticks(1_000_000) == 3_000_000
    assert RateLimit.per_second(10**9).interval_ticks(1_000_000) == 1


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.000001, "2"), (59.5, "60")],
)
def test_retry_after_header_is_whole_seconds_rounded_up_at_least_one(
    retry_after: float, header: str
) -> None:
    decision = Decision(allowed=False, remaining=0, retry_after=retry_after, reset_after=0.0)
    assert decision.retry_after_header() == header


@pytest.mark.parametrize("cost", [0, -1, 4])
def test_cost_outside_one_to_burst_is_a_value_error(cost: int) -> None:
    with pytest.raises(ValueError):
        check_cost(RateLimit.per_second(1, burst=3), cost)


def test_every_limiter_satisfies_the_protocol() -> None:
    local = LocalRateLimiter()
    assert isinstance(local, RateLimiter)
    assert isinstance(LeasedRateLimiter(local), RateLimiter)
    assert isinstance(CachedPeek(local), RateLimiter)
    assert issubclass(RedisRateLimiter, RateLimiter)


def test_sweeper_runs_when_the_map_doubles_and_keeps_live_entries() -> None:
    sweeper = LazySweeper(min_size=4)
    entries = {n: n for n in range(3)}
    sweeper.maybe_sweep(entries, lambda value: True)
    assert len(entries) == 3  # below the threshold: not yet worth a pass
    entries[3] = 3
    sweeper.maybe_sweep(entries, lambda value: value % 2 == 0)
    assert entries == {1: 1, 3: 3}
