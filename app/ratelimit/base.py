"""The rate limiter's vocabulary: limits, decisions, the limiter protocol.

Every limiter in this package implements the generic cell rate algorithm (GCRA):
a key's whole state is one timestamp, its theoretical arrival time (TAT), the
moment at which its bucket will be full again. A limit of `rate` events per
`period` seconds spaces tokens one *emission interval* (`period / rate`) apart
and tolerates `burst` of them at once. GCRA admits, over any window of length W
that starts from a full bucket, at most `burst + rate * W / period` cost units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class RateLimit:
    """`rate` events per `period` seconds, with bursts of up to `burst` at once.

    `burst` is also the largest cost a single request may have.
    """

    rate: float
    period: float
    burst: int

    def __post_init__(self) -> None:
        # Reject nonsense at construction: a zero rate or period would make the
        # emission interval infinite or zero and every later computation wrong.
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError("rate must be a positive finite number")
        if not (math.isfinite(self.period) and self.period > 0):
            raise ValueError("period must be a positive finite number")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError("burst must be an integer >= 1")

    @classmethod
    def per_second(cls, n: float, burst: int | None = None) -> RateLimit:
        """`n` events a second, bursts of `burst` (default `n`, rounded up)."""
        return cls(rate=n, period=1.0, burst=burst if burst is not None else math.ceil(n))

    @classmethod
    def per_minute(cls, n: float, burst: int | None = None) -> RateLimit:
        """`n` events a minute, bursts of `burst` (default `n`, rounded up)."""
        return cls(rate=n, period=60.0, burst=burst if burst is not None else math.ceil(n))

    @property
    def emission_interval(self) -> float:
        """Seconds between two tokens at the sustained rate (`period / rate`)."""
        return self.period / self.rate

    def interval_ticks(self, ticks_per_second: int) -> int:
        """The emission interval in whole clock ticks, rounded up (at least 1).

        Limiters keep their state in integer ticks so that arithmetic is exact
        and a burst is admitted to the last token whatever the float noise.
        Rounding up makes the limit very slightly stricter (by under one tick
        per token), never looser. The inner `round` removes binary noise such
        as 0.1 * 1e6 == 100000.00000000001 before the ceiling.
        """
        return max(1, math.ceil(round(self.period * ticks_per_second / self.rate, 3)))


@dataclass(frozen=True)
class Decision:
    """The outcome of a rate-limit check.

    - `allowed`: the request is admitted (for `hit`, its cost was consumed).
    - `remaining`: how many more cost-1 requests would be admitted right now
      (after this one, if it consumed).
    - `retry_after`: seconds until this request would be admitted; 0 when allowed.
    - `reset_after`: seconds until the key's bucket is full again.
    """

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float

    def retry_after_header(self) -> str:
        """`retry_after` as a `Retry-After` value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


class RateLimiterUnavailable(Exception):
    """The shared rate-limit store cannot be reached or answered with an error.

    Callers answer 503 so Telegram redelivers later; limiters never fail open.
    The message names the failure's type only, never a URL (which may hold a
    password); the original exception is chained as `__cause__`.
    """


@runtime_checkable
class RateLimiter(Protocol):
    """What every limiter offers.

    `hit` consumes `cost` units when, and only when, the decision allows it; a
    cost outside 1..limit.burst raises ValueError, because such a request could
    never be admitted and asking for it is a programming error. `peek` answers
    whether a cost-1 request would be admitted now and consumes nothing.
    """

    async def hit(self, key: str, limit: RateLimit, cost: int = 1) -> Decision: ...

    async def peek(self, key: str, limit: RateLimit) -> Decision: ...

    async def aclose(self) -> None: ...


def check_cost(limit: RateLimit, cost: int) -> None:
    """Raise ValueError unless 1 <= cost <= limit.burst."""
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise ValueError("cost must be an integer")
    if cost < 1:
        raise ValueError("cost must be at least 1")
    if cost > limit.burst:
        raise ValueError(f"cost {cost} exceeds the burst {limit.burst}: it could never be admitted")


class LazySweeper:
    """Decides when a map of per-key state is swept of entries that mean nothing.

    A sweep runs when the map has grown to twice its size after the previous
    sweep (and at least `min_size`). Each sweep costs time proportional to the
    map, paid for by the inserts since the last one, so the amortised cost per
    insert is O(1), and the map never holds more than about twice the number of
    keys whose state still matters (and `min_size`).
    """

    def __init__(self, min_size: int = 1024) -> None:
        if min_size < 1:
            raise ValueError("min_size must be at least 1")
        self._min_size = min_size
        self._threshold = min_size

    def maybe_sweep(self, entries: MutableMapping[K, V], is_dead: Callable[[V], bool]) -> None:
        """Drop every entry for which `is_dead` is true, if a sweep is due."""
        if len(entries) < self._threshold:
            return
        for key in [key for key, value in entries.items() if is_dead(value)]:
            del entries[key]
        self._threshold = max(self._min_size, 2 * len(entries))
