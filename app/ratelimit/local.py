"""The in-process limiter for the embedded default (no Redis configured).

The same GCRA as the Redis script, kept in a dict. Limits are per process: with
several replicas each admits the full limit, which is why constructing one logs
a warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from app.ratelimit.base import Decision, LazySweeper, RateLimit, check_cost

NANOSECONDS = 1_000_000_000

_warned_not_shared = False


def _warn_not_shared() -> None:
    # Once per process: the warning is about the deployment, not each object.
    global _warned_not_shared
    if _warned_not_shared:
        return
    _warned_not_shared = True
    structlog.get_logger(__name__).warning(
        "ratelimit.local_only",
        detail="rate limits are kept in this process and not shared between replicas; "
        "set REDIS_URL to share them",
    )


class LocalRateLimiter:
    """GCRA limits held in this process.

    `clock` returns seconds on a monotonic scale (injected so tests control
    time); state is kept in integer nanoseconds so that arithmetic is exact.
    Decisions never await anything, so they are atomic within the event loop.

    Memory is bounded: a key whose bucket is full again means the same as an
    absent key and is forgotten by a lazy sweep, which runs whenever the table
    has doubled since the previous sweep (and holds at least `min_sweep_size`
    keys). The table therefore holds at most about twice the keys that are
    still refilling, or `min_sweep_size`, whichever is larger.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        min_sweep_size: int = 1024,
    ) -> None:
        self._clock = clock
        # key -> theoretical arrival time (TAT), nanoseconds on `clock`.
        self._tats: dict[str, int] = {}
        self._sweeper = LazySweeper(min_sweep_size)
        _warn_not_shared()

    @property
    def tracked_keys(self) -> int:
        """How many keys currently hold state (for tests and metrics)."""
        return len(self._tats)

    async def hit(self, key: str, limit: RateLimit, cost: int = 1) -> Decision:
        """Consume `cost` units of `key`'s `limit` if they are available.

        Raises ValueError unless 1 <= cost <= limit.burst.
        """
        check_cost(limit, cost)
        return self._decide(key, limit, cost, consume=True)

    async def peek(self, key: str, limit: RateLimit) -> Decision:
        """Would a cost-1 request be admitted now? Consumes nothing."""
        return self._decide(key, limit, 1, consume=False)

    async def aclose(self) -> None:
        """Forget all state; nothing else to release."""
        self._tats.clear()

    def _decide(self, key: str, limit: RateLimit, cost: int, *, consume: bool) -> Decision:
        now = round(self._clock() * NANOSECONDS)
        interval = limit.interval_ticks(NANOSECONDS)
        tolerance = interval * limit.burst
        tat = self._tats.get(key)
        # How far the TAT lies in the future: 0 means the bucket is full.
        ahead = max(0, tat - now) if tat is not None else 0
        available = max(0, (tolerance - ahead) // interval)
        after = ahead + interval * cost
        if after > tolerance:
            return Decision(
                allowed=False,
                remaining=available,
                retry_after=(after - tolerance) / NANOSECONDS,
                reset_after=ahead / NANOSECONDS,
            )
        if not consume:
            return Decision(
                allowed=True, remaining=available, retry_after=0.0, reset_after=ahead / NANOSECONDS
            )
        self._tats[key] = now + after
        self._sweeper.maybe_sweep(self._tats, lambda tat: tat <= now)
        return Decision(
            allowed=True,
            remaining=(tolerance - after) // interval,
            retry_after=0.0,
            reset_after=after / NANOSECONDS,
        )
