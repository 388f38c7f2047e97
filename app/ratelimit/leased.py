"""Fewer Redis round trips on the hot path, without loosening the shared limit.

`LeasedRateLimiter` takes tokens from the shared limiter in batches and spends
them in process; `CachedPeek` remembers recent peeks (the failed-authentication
check before a webhook key is looked up). Both only ever use what the shared
limiter granted or said, so replicas together stay within the limit, up to the
bounds stated on each class.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from app.ratelimit.base import (
    Decision,
    LazySweeper,
    RateLimit,
    RateLimiter,
    check_cost,
)


@dataclass
class _Lot:
    """Tokens from one grant that have not been spent yet."""

    expires_at: float
    granted: int
    tokens: int


@dataclass(eq=False)
class _KeyState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Oldest first; expiry times increase along the deque because lots are
    # only added by the holder of `lock`, in the order their requests were sent.
    lots: deque[_Lot] = field(default_factory=deque)
    # The latest grant, kept after it is spent or expires to size the next one.
    newest: _Lot | None = None
    size: int = 1
    # Redis holds no token for this key before this instant (its last refusal).
    blocked_until: float = -math.inf
    reset_at: float = -math.inf
    # Coroutines inside the slow path; a state in use is never swept.
    users: int = 0

    def usable(self, now: float) -> int:
        """Drop expired lots and count the tokens left."""
        while self.lots and self.lots[0].expires_at <= now:
            self.lots.popleft()
        return sum(lot.tokens for lot in self.lots)

    def spend(self, count: int) -> None:
        """Spend `count` tokens, oldest first; `usable()` must have covered it."""
        while count:
            lot = self.lots[0]
            taken = min(lot.tokens, count)
            lot.tokens -= taken
            count -= taken
            if lot.tokens == 0:
                self.lots.popleft()


@dataclass(frozen=True)
class _Fetch:
    granted: int
    requested: int
    sent_at: float
    decision: Decision


class LeasedRateLimiter:
    """Spend tokens leased from the shared limiter in batches.

    A decision that finds a leased token in this process costs no round trip.
    Otherwise one caller per key (an asyncio.Lock) asks `inner` for a batch
    with `hit(cost=n)`; callers queued behind it find the batch when they get
    the lock, so concurrent requests share one round trip. If Redis refuses
    the batch but has fewer tokens that still cover the request, the call is
    repeated for exactly what is there, so partial capacity is not wasted.

    The batch adapts per key between 1 and `lease_size` (never above the
    limit's burst): it doubles when a lease runs out before it expires, and
    shrinks to what was actually spent when a lease expires with tokens left.
    A quiet key thus takes one token at a time, and leftover tokens, which
    are charged to the limit although nobody used them, stay few.

    Refusals carry Redis's retry_after, and until then (per missing token,
    one emission interval more) further requests for the key are refused
    locally, so a saturated key costs no round trip per refused request
    either. Leased tokens not spent within `lease_ttl` seconds of the request
    that fetched them are dropped, never returned.

    Bound (the exact guarantee): every admitted request spends a token Redis
    granted to this process, and tokens are never returned or shared, so all
    replicas together admit no more than Redis granted. A token is spent
    either by the request that fetched it, when the reply arrives (exactly as
    with the plain limiter), or by a later request of this process less than
    `lease_ttl` seconds after the fetch was sent, which is before Redis
    granted it. Tokens are thus spent late, never early. Hence:
    - from a full bucket, admissions up to any moment never exceed
      `burst + rate * elapsed / period`, the plain limiter's own bound;
    - over any window of W seconds they are at most
      `burst + rate * (W + lease_ttl) / period` (a fetching request counted
      when Redis granted, as for the plain limiter);
    - each process holds at most `lease_size - 1` unspent tokens per key.
    The cost of the scheme is the other way: tokens that expire unspent were
    charged to the limit, so keep `lease_size` well below the burst and
    `lease_ttl` long enough for one replica to spend a batch at busy times.

    `remaining` in a decision counts what this process could spend now: its
    unspent tokens, plus Redis's count when the decision made a round trip.
    `reset_after` is as of the last reply from Redis. `peek` is answered by
    `inner`; `aclose` closes `inner`.
    """

    def __init__(
        self,
        inner: RateLimiter,
        *,
        lease_size: int = 10,
        lease_ttl: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        min_sweep_size: int = 1024,
    ) -> None:
        if lease_size < 1:
            raise ValueError("lease_size must be at least 1")
        if not (math.isfinite(lease_ttl) and lease_ttl > 0):
            raise ValueError("lease_ttl must be a positive number of seconds")
        self._inner = inner
        self._lease_size = lease_size
        self._lease_ttl = lease_ttl
        self._clock = clock
        self._states: dict[str, _KeyState] = {}
        self._sweeper = LazySweeper(min_sweep_size)

    @property
    def tracked_keys(self) -> int:
        """How many keys currently hold local state (for tests and metrics)."""
        return len(self._states)

    async def hit(self, key: str, limit: RateLimit, cost: int = 1) -> Decision:
        """Admit the request from leased tokens, leasing more when needed.

        Raises ValueError unless 1 <= cost <= limit.burst, and whatever `inner`
        raises (RateLimiterUnavailable) when a round trip is needed and fails.
        """
        check_cost(limit, cost)
        state = self._state(key)
        decision = self._answer_locally(state, limit, cost)
        if decision is not None:
            return decision
        state.users += 1
        try:
            async with state.lock:
                # Whoever held the lock may have leased enough for this request
                # too, or been refused; either way no round trip is needed.
                decision = self._answer_locally(state, limit, cost)
                if decision is None:
                    decision = await self._fetch_and_spend(key, state, limit, cost)
                return decision
        finally:
            state.users -= 1

    async def peek(self, key: str, limit: RateLimit) -> Decision:
        """Answered by the inner limiter (one round trip for Redis)."""
        return await self._inner.peek(key, limit)

    async def aclose(self) -> None:
        """Close the inner limiter."""
        await self._inner.aclose()

    def _state(self, key: str) -> _KeyState:
        state = self._states.get(key)
        if state is None:
            now = self._clock()
            self._sweeper.maybe_sweep(
                self._states,
                lambda s: s.users == 0 and s.usable(now) == 0 and now >= s.blocked_until,
            )
            state = self._states[key] = _KeyState()
        return state

    def _answer_locally(self, state: _KeyState, limit: RateLimit, cost: int) -> Decision | None:
        now = self._clock()
        usable = state.usable(now)
        reset_after = max(0.0, state.reset_at - now)
        if usable >= cost:
            state.spend(cost)
            return Decision(
                allowed=True, remaining=usable - cost, retry_after=0.0, reset_after=reset_after
            )
        # Redis has no token before `blocked_until`, and each further token
        # takes one emission interval more; asking earlier is a wasted trip.
        available_at = state.blocked_until + (cost - usable - 1) * limit.emission_interval
        if now < available_at:
            return Decision(
                allowed=False,
                remaining=usable,
                retry_after=available_at - now,
                reset_after=reset_after,
            )
        return None

    def _next_size(self, state: _KeyState, now: float) -> int:
        newest = state.newest
        if newest is None:
            return state.size
        if now < newest.expires_at:
            # Ran out while the lease was still good: demand outgrew it.
            return min(2 * state.size, self._lease_size)
        # Expired: what was spent in one lease_ttl is the demand to expect.
        return max(1, min(self._lease_size, newest.granted - newest.tokens))

    async def _fetch_and_spend(
        self, key: str, state: _KeyState, limit: RateLimit, cost: int
    ) -> Decision:
        state.size = self._next_size(state, self._clock())
        # Tokens fetched for this request are its own to spend on arrival,
        # however long the round trip took; only the surplus is leased.
        held = 0
        fetched_at: float | None = None
        redis_remaining = 0
        while True:
            now = self._clock()
            usable = state.usable(now)
            if usable + held >= cost:
                from_pool = max(0, cost - held)
                state.spend(from_pool)
                surplus = held + from_pool - cost
                self._add_lot(state, fetched_at, held, surplus)
                state.blocked_until = -math.inf
                return Decision(
                    allowed=True,
                    remaining=usable - from_pool + surplus + redis_remaining,
                    retry_after=0.0,
                    reset_after=max(0.0, state.reset_at - now),
                )
            # Usually one pass. Another happens only when leased tokens this
            # request counted on expired during the round trip.
            need = cost - usable - held
            fetch = await self._fetch(key, limit, need, state.size)
            state.reset_at = fetch.sent_at + fetch.decision.reset_after
            if fetch.granted == 0:
                # Tokens fetched in an earlier pass stay usable by others.
                self._add_lot(state, fetched_at, held, held)
                return self._refusal(state, limit, fetch, need, usable + held)
            if fetched_at is None:
                fetched_at = fetch.sent_at
            held += fetch.granted
            redis_remaining = fetch.decision.remaining

    def _add_lot(
        self, state: _KeyState, fetched_at: float | None, granted: int, tokens: int
    ) -> None:
        if fetched_at is None:
            return
        lot = _Lot(expires_at=fetched_at + self._lease_ttl, granted=granted, tokens=tokens)
        state.newest = lot
        if tokens:
            state.lots.append(lot)

    def _refusal(
        self, state: _KeyState, limit: RateLimit, fetch: _Fetch, need: int, local: int
    ) -> Decision:
        interval = limit.emission_interval
        refused = fetch.decision
        # Redis answered for `requested` tokens; a single token comes
        # (requested - 1) intervals sooner, and this request's `need` tokens
        # (requested - need) sooner. Redis rounds the interval up to whole
        # microseconds and this uses the exact one, so both estimates err (by
        # at most a microsecond per token) towards waiting, never towards
        # asking or retrying too early.
        state.blocked_until = fetch.sent_at + max(
            0.0, refused.retry_after - (fetch.requested - 1) * interval
        )
        return Decision(
            allowed=False,
            remaining=local + refused.remaining,
            retry_after=max(0.0, refused.retry_after - (fetch.requested - need) * interval),
            reset_after=refused.reset_after,
        )

    async def _fetch(self, key: str, limit: RateLimit, need: int, size: int) -> _Fetch:
        requested = min(max(size, need), limit.burst)
        while True:
            sent_at = self._clock()
            decision = await self._inner.hit(key, limit, requested)
            if decision.allowed:
                return _Fetch(requested, requested, sent_at, decision)
            if need <= decision.remaining < requested:
                # Fewer than a full batch left, but enough for this request:
                # take exactly that. `requested` shrinks on every pass.
                requested = decision.remaining
                continue
            return _Fetch(0, requested, sent_at, decision)


@dataclass(frozen=True)
class _Remembered:
    decision: Decision
    at: float
    until: float

    def as_of(self, now: float) -> Decision:
        elapsed = now - self.at
        return Decision(
            allowed=self.decision.allowed,
            remaining=self.decision.remaining,
            retry_after=max(0.0, self.decision.retry_after - elapsed),
            reset_after=max(0.0, self.decision.reset_after - elapsed),
        )


class CachedPeek:
    """Remember `peek` answers per key, to spare a round trip per request.

    For the failed-authentication check: every webhook request first asks
    whether its source address is over the limit, and Telegram sends from few
    addresses, so most of those answers can come from memory.

    - An allowed answer is remembered for `ttl` seconds.
    - A refusal is remembered until its retry_after (counted from when the
      question was sent), so it never refuses what the limiter would admit.
    - `hit` goes to the inner limiter and records the outcome.

    Bound: a cached "allowed" can be up to `ttl` seconds old. Once other
    replicas (or hits not recorded here) push an address over the limit, this
    process may still let that address's requests through for at most `ttl`
    seconds. Hits recorded here take effect at once.
    """

    def __init__(
        self,
        inner: RateLimiter,
        ttl: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_sweep_size: int = 1024,
    ) -> None:
        if not (math.isfinite(ttl) and ttl >= 0):
            raise ValueError("ttl must be a non-negative number of seconds")
        self._inner = inner
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, _Remembered] = {}
        self._sweeper = LazySweeper(min_sweep_size)

    @property
    def tracked_keys(self) -> int:
        """How many keys currently have a remembered answer."""
        return len(self._entries)

    async def peek(self, key: str, limit: RateLimit) -> Decision:
        """The remembered answer if still valid, else the inner limiter's."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now < entry.until:
            return entry.as_of(now)
        decision = await self._inner.peek(key, limit)
        self._remember(key, decision, now)
        return decision

    async def hit(self, key: str, limit: RateLimit, cost: int = 1) -> Decision:
        """Consume through the inner limiter and record the outcome."""
        sent_at = self._clock()
        decision = await self._inner.hit(key, limit, cost)
        self._remember(key, decision, sent_at)
        return decision

    async def aclose(self) -> None:
        """Close the inner limiter."""
        await self._inner.aclose()

    def _remember(self, key: str, decision: Decision, at: float) -> None:
        if not decision.allowed:
            until = at + decision.retry_after
        elif decision.remaining > 0:
            until = at + self._ttl
            # A hit's retry_after is 0 and its remaining already counts it,
            # so it reads as a peek would.
        else:
            self._entries.pop(key, None)
            return
        if key not in self._entries:
            self._sweeper.maybe_sweep(self._entries, lambda e: at >= e.until)
        self._entries[key] = _Remembered(decision, at, until)
