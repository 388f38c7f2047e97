"""The outbound pacer: places in a chat's schedule, the bot's window, confirmation.

Both implementations answer the same questions the same way: decisions made in one
call share one instant, so their waits are exact whatever the clock. Tests that
need time to pass use the in-process pacer's injectable clock; the Redis pacer is
checked against it on generated request lists, and for what only it has (state
shared between workers, the script cache, expiry, failures).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from app.messages.pacing import (
    Confirmation,
    LocalOutboundPacer,
    OutboundPacer,
    PaceRequest,
    PaceVerdict,
    PacingLimits,
    RedisOutboundPacer,
)
from app.ratelimit import RateLimiterUnavailable
from tests.conftest import TEST_REDIS_URL

BOT = uuid.UUID("00000000-0000-4000-8000-000000000001")
OTHER_BOT = uuid.UUID("00000000-0000-4000-8000-000000000002")
GROUP = -1001234567890


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# Both bots' days start counted (nothing sent yet): see the day tests for the rest.
COUNTED = {BOT: 0, OTHER_BOT: 0}


async def admit(pacer: OutboundPacer, requests: Sequence[PaceRequest]) -> list[PaceVerdict]:
    return await pacer.admit(requests, COUNTED)


def shape(verdicts: Sequence[PaceVerdict]) -> list[tuple[bool, float, bool, str | None]]:
    """What a verdict says (ticket or not), waits to the microsecond (the Redis
    pacer's unit)."""
    return [(v.allowed, round(v.wait, 6), v.ticket is not None, v.limited_by) for v in verdicts]


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture(params=["local", "redis"])
async def pacer(request: pytest.FixtureRequest, redis: Redis) -> OutboundPacer:
    if request.param == "local":
        return LocalOutboundPacer(clock=Clock())
    return RedisOutboundPacer(redis, prefix=f"test-pace-{uuid.uuid4().hex[:8]}")


async def test_a_chats_first_message_goes_and_the_next_get_tickets_a_second_apart(
    pacer: OutboundPacer,
) -> None:
    verdicts = await admit(pacer, [PaceRequest(BOT, 42) for _ in range(4)])
    assert shape(verdicts) == [
        (True, 0.0, False, None),
        (False, 1.0, True, "chat"),
        (False, 2.0, True, "chat"),
        (False, 3.0, True, "chat"),
    ]
    tickets = [v.ticket for v in verdicts[1:]]
    assert tickets[0] is not None and tickets == [tickets[0], tickets[0] + 1, tickets[0] + 2]


async def test_a_group_gets_tickets_three_seconds_apart(pacer: OutboundPacer) -> None:
    verdicts = await admit(pacer, [PaceRequest(BOT, GROUP) for _ in range(3)])
    assert [v.wait for v in verdicts] == [0.0, 3.0, 6.0]
    assert [v.allowed for v in verdicts] == [True, False, False]


async def test_a_channel_username_is_paced_as_a_group(pacer: OutboundPacer) -> None:
    verdicts = await admit(pacer, [PaceRequest(BOT, "@news"), PaceRequest(BOT, "@news")])
    assert shape(verdicts)[1] == (False, 3.0, True, "chat")


async def test_a_ticket_keeps_its_turn_and_a_newcomer_queues_behind(
    pacer: OutboundPacer,
) -> None:
    _, second, third = await admit(pacer, [PaceRequest(BOT, 7) for _ in range(3)])
    # The holder of the next ticket comes back early: it waits for the chat, and
    # keeps its ticket; a newcomer takes the ticket after the last one given.
    holder, newcomer = await admit(
        pacer, [PaceRequest(BOT, 7, ticket=second.ticket), PaceRequest(BOT, 7)]
    )
    assert not holder.allowed and holder.ticket == second.ticket and holder.limited_by == "chat"
    assert 0 < holder.wait <= 1.0
    assert newcomer.ticket == third.ticket + 1
    assert newcomer.wait == pytest.approx(holder.wait + 2.0, abs=1e-6)


async def test_a_ticket_before_its_turn_is_told_when_its_turn_should_come(
    pacer: OutboundPacer,
) -> None:
    _, _, third = await admit(pacer, [PaceRequest(BOT, 7) for _ in range(3)])
    # The third comes first (its estimate was early): a second after the second's.
    [early] = await admit(pacer, [PaceRequest(BOT, 7, ticket=third.ticket)])
    assert not early.allowed and early.ticket == third.ticket
    assert early.wait == pytest.approx(2.0, abs=0.01)


async def test_the_bots_window_takes_thirty_and_then_one_per_send_leaving_it(
    pacer: OutboundPacer,
) -> None:
    verdicts = await admit(pacer, [PaceRequest(BOT, 1000 + n) for n in range(33)])
    assert [v.allowed for v in verdicts] == [True] * 30 + [False] * 3
    # All 30 were sent at one instant: the 31st waits for them to leave the
    # window, the 34th (a window later) would wait a second window. Each refused
    # one takes a ticket, so its chat's next message queues behind it.
    assert shape(verdicts[30:]) == [(False, 1.0, True, "bot")] * 3
    many = await admit(pacer, [PaceRequest(OTHER_BOT, 2000 + n) for n in range(61)])
    assert [round(v.wait, 6) for v in many[30:]] == [1.0] * 30 + [2.0]


async def test_a_message_refused_by_the_bot_keeps_its_chats_order(
    pacer: OutboundPacer,
) -> None:
    await admit(pacer, [PaceRequest(BOT, 1000 + n) for n in range(30)])
    refused, after = await admit(pacer, [PaceRequest(BOT, 77), PaceRequest(BOT, 77)])
    assert refused.limited_by == "bot" and refused.ticket is not None
    # Chat 77 sent nothing, but its next message queues behind the refused one.
    assert after.ticket == refused.ticket + 1 and after.wait >= refused.wait


async def test_the_bots_calendar_spreads_what_its_chats_want_beyond_thirty_a_second(
    pacer: OutboundPacer,
) -> None:
    # 45 chats, 3 messages each: 45 a second wanted, 30 a second allowed.
    requests = [PaceRequest(BOT, 3000 + chat) for _ in range(3) for chat in range(45)]
    verdicts = await admit(pacer, requests)
    waiting = [v for v in verdicts if not v.allowed]
    assert len(waiting) == 3 * 45 - 30 and all(v.ticket is not None for v in waiting)
    # No window-long stretch is given more than 30 of them...
    by_second: dict[int, int] = {}
    for verdict in waiting:
        by_second[int(verdict.wait)] = by_second.get(int(verdict.wait), 0) + 1
    assert max(by_second.values()) <= 30
    # ...and none waits longer than the bot's own rate needs.
    assert max(v.wait for v in waiting) < len(waiting) / 30 + 1


async def test_bots_are_independent(pacer: OutboundPacer) -> None:
    await admit(pacer, [PaceRequest(BOT, 1000 + n) for n in range(30)])
    verdicts = await admit(pacer, [PaceRequest(BOT, 5), PaceRequest(OTHER_BOT, 5)])
    assert [v.allowed for v in verdicts] == [False, True]


async def test_verdicts_keep_the_order_of_requests_across_connections(
    pacer: OutboundPacer,
) -> None:
    requests = [PaceRequest(BOT, 1), PaceRequest(OTHER_BOT, 1), PaceRequest(BOT, 1)]
    verdicts = await admit(pacer, requests)
    assert [v.allowed for v in verdicts] == [True, True, False]


async def test_an_empty_batch_asks_nothing(pacer: OutboundPacer) -> None:
    assert await admit(pacer, []) == []
    await pacer.confirm([])


# -- the day's count ---------------------------------------------------------------------


async def test_a_day_without_a_count_decides_nothing_until_it_is_counted(
    pacer: OutboundPacer,
) -> None:
    connection = uuid.uuid4()
    [unknown] = await pacer.admit([PaceRequest(connection, 1)])
    assert unknown.needs_count and not unknown.allowed
    # Counted: decided. The count is the pacer's from then on.
    [sent] = await pacer.admit([PaceRequest(connection, 1)], {connection: 0})
    assert sent.allowed
    [later] = await pacer.admit([PaceRequest(connection, 2)])
    assert later.allowed and not later.needs_count


async def test_the_daily_limit_refuses_the_rest_of_the_day(pacer: OutboundPacer) -> None:
    connection = uuid.uuid4()
    requests = [PaceRequest(connection, 100 + n, daily_limit=5) for n in range(4)]
    verdicts = await pacer.admit(requests, {connection: 3})
    assert [v.allowed for v in verdicts] == [True, True, False, False]
    refused = verdicts[2]
    assert refused.limited_by == "day" and 0 < refused.wait <= 86_400
    # A count given later does not replace the one the pacer keeps.
    [still] = await pacer.admit([PaceRequest(connection, 200, daily_limit=5)], {connection: 0})
    assert still.limited_by == "day"


async def test_a_refusal_for_the_day_spends_no_chat_turn(pacer: OutboundPacer) -> None:
    connection = uuid.uuid4()
    [refused] = await pacer.admit([PaceRequest(connection, 5, daily_limit=1)], {connection: 1})
    assert refused.limited_by == "day"
    [sent] = await pacer.admit([PaceRequest(connection, 5, daily_limit=2)])
    assert sent.allowed


async def test_a_new_utc_day_is_counted_afresh() -> None:
    wall = Clock()
    wall.now = 86_400 * 20_000 - 10.0  # ten seconds to midnight UTC
    pacer = LocalOutboundPacer(clock=Clock(), wall_clock=wall)
    [sent] = await pacer.admit([PaceRequest(BOT, 1, daily_limit=1)], {BOT: 0})
    [refused] = await pacer.admit([PaceRequest(BOT, 2, daily_limit=1)])
    assert sent.allowed and refused.limited_by == "day"
    assert refused.wait == pytest.approx(10.0)
    wall.now += 10.0
    [tomorrow] = await pacer.admit([PaceRequest(BOT, 2, daily_limit=1)])
    assert tomorrow.needs_count


# -- time passing (the in-process pacer's clock) ------------------------------------------


async def test_a_chat_may_receive_again_one_interval_after_its_send() -> None:
    clock = Clock()
    pacer = LocalOutboundPacer(clock=clock)
    assert (await admit(pacer, [PaceRequest(BOT, 9)]))[0].allowed
    clock.now += 0.999
    [early] = await admit(pacer, [PaceRequest(BOT, 9)])
    assert not early.allowed and early.ticket is not None
    # The message above took the chat's next ticket: its turn is at 1.0 s.
    clock.now += 0.001
    assert (await admit(pacer, [PaceRequest(BOT, 9, ticket=early.ticket)]))[0].allowed


async def test_confirming_counts_the_send_from_its_answer() -> None:
    clock = Clock()
    pacer = LocalOutboundPacer(clock=clock)
    [sent] = await admit(pacer, [PaceRequest(BOT, 9)])
    # Telegram answered 0.3 s after the admission: the chat's next send goes a
    # full second after that answer, not after the admission.
    await pacer.confirm([Confirmation(BOT, 9, sent.admitted_at, 0.3)])
    clock.now += 1.0
    [early] = await admit(pacer, [PaceRequest(BOT, 9)])
    assert not early.allowed and early.wait == pytest.approx(0.3)
    clock.now += 0.3
    assert (await admit(pacer, [PaceRequest(BOT, 9, ticket=early.ticket)]))[0].allowed


async def test_confirming_moves_the_bots_window_to_the_answers() -> None:
    clock = Clock()
    pacer = LocalOutboundPacer(clock=clock)
    sent = await admit(pacer, [PaceRequest(BOT, 1000 + n) for n in range(30)])
    await pacer.confirm(
        [Confirmation(BOT, 1000 + n, v.admitted_at, 0.2) for n, v in enumerate(sent)]
    )
    clock.now += 1.0
    [waiting] = await admit(pacer, [PaceRequest(BOT, 5000)])
    assert waiting.limited_by == "bot" and waiting.wait == pytest.approx(0.2)
    clock.now += 0.2
    assert (await admit(pacer, [PaceRequest(BOT, 5000, ticket=waiting.ticket)]))[0].allowed


async def test_a_ticket_whose_predecessor_never_comes_goes_after_the_grace() -> None:
    clock = Clock()
    pacer = LocalOutboundPacer(PacingLimits(ticket_grace=5.0), clock=clock)
    _, lost, kept = await admit(pacer, [PaceRequest(BOT, 9) for _ in range(3)])
    # The second message is cancelled and never comes back; the third's turn is
    # due at 2.0 s, and it waits for the second until 5 s past that.
    clock.now += 2.0
    [waiting] = await admit(pacer, [PaceRequest(BOT, 9, ticket=kept.ticket)])
    assert not waiting.allowed and 0 < waiting.wait <= 1.0
    clock.now += 5.0
    [served] = await admit(pacer, [PaceRequest(BOT, 9, ticket=kept.ticket)])
    assert served.allowed
    # Should the lost one turn up after all, its turn has passed: it goes when the
    # chat may receive, not after tickets given later.
    clock.now += 1.0
    [late] = await admit(pacer, [PaceRequest(BOT, 9, ticket=lost.ticket)])
    assert late.allowed


async def test_a_ticket_never_skips_one_before_it_that_the_bot_keeps_waiting() -> None:
    """A chat with no recent send, whose first ticket waits on the bot's window
    again and again: the second ticket waits for it, however long, and does not
    pass it once its own turn seems due."""
    clock = Clock()
    pacer = LocalOutboundPacer(PacingLimits(bot_sends=1, ticket_grace=5.0), clock=clock)
    assert (await admit(pacer, [PaceRequest(BOT, 1)]))[0].allowed  # the window is full
    clock.now += 0.1
    [first] = await admit(pacer, [PaceRequest(BOT, 2)])
    clock.now += 0.1
    [second] = await admit(pacer, [PaceRequest(BOT, 2)])
    assert first.limited_by == "bot" and second.ticket == first.ticket + 1
    for _ in range(8):
        # Another chat takes each place as it comes free; the first ticket is
        # refused every time and told a later place.
        clock.now += 1.0
        assert (await admit(pacer, [PaceRequest(BOT, 1)]))[0].allowed
        [again] = await admit(pacer, [PaceRequest(BOT, 2, ticket=first.ticket)])
        assert not again.allowed and again.limited_by == "bot"
        [behind] = await admit(pacer, [PaceRequest(BOT, 2, ticket=second.ticket)])
        assert not behind.allowed and behind.limited_by == "chat"
    clock.now += 1.0
    [goes] = await admit(pacer, [PaceRequest(BOT, 2, ticket=first.ticket)])
    assert goes.allowed
    [waits] = await admit(pacer, [PaceRequest(BOT, 2, ticket=second.ticket)])
    assert not waits.allowed and waits.wait > 0


async def test_a_ticket_the_chat_never_gave_goes_when_the_chat_may_receive() -> None:
    """After Redis lost its state, or the worker restarted: its messages' tickets
    mean nothing to the pacer now, and they are not made to wait for them."""
    clock = Clock()
    pacer = LocalOutboundPacer(clock=clock)
    [sent, stranger] = await admit(pacer, [PaceRequest(BOT, 9), PaceRequest(BOT, 10, ticket=1)])
    assert sent.allowed and stranger.allowed and stranger.ticket == 1
    [also] = await admit(pacer, [PaceRequest(BOT, 9, ticket=10**15)])
    assert not also.allowed and also.wait == pytest.approx(1.0)
    clock.now += 1.0
    assert (await admit(pacer, [PaceRequest(BOT, 9, ticket=10**15)]))[0].allowed


async def test_state_that_limits_nothing_is_forgotten() -> None:
    clock = Clock()
    pacer = LocalOutboundPacer(clock=clock)
    for round_ in range(3):
        await admit(pacer, [PaceRequest(BOT, round_ * 10_000 + n) for n in range(1500)])
        clock.now += 10_000
    # The sweep runs as the table grows: far fewer chats than were ever seen remain.
    assert len(pacer._chats) < 3 * 1500


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PacingLimits(chat_interval=0)
    with pytest.raises(ValueError, match="bot_sends"):
        PacingLimits(bot_sends=0)


# -- Redis: the same decisions, shared by every worker -------------------------------------

requests_strategy = st.lists(
    st.builds(
        PaceRequest,
        st.sampled_from([BOT, OTHER_BOT]),
        st.sampled_from([1, 2, 3, GROUP, -42, "@news", *range(100, 140)]),
    ),
    max_size=120,
)


def decided(verdicts: Sequence[PaceVerdict]) -> list[tuple[bool, bool, str | None]]:
    return [(v.allowed, v.ticket is not None, v.limited_by) for v in verdicts]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=requests_strategy, again=st.lists(st.booleans(), min_size=120, max_size=120))
async def test_the_redis_pacer_decides_as_the_local_one(
    redis: Redis, requests: list[PaceRequest], again: list[bool]
) -> None:
    shared = RedisOutboundPacer(redis, prefix=f"test-pace-{uuid.uuid4().hex[:8]}")
    local = LocalOutboundPacer(clock=Clock())
    started = time.monotonic()
    first_shared, first_local = await admit(shared, requests), await admit(local, requests)
    assert shape(first_shared) == shape(first_local)

    # Then some of those that got tickets come back with them (at once on the local
    # pacer's clock, a millisecond or so later on Redis's), with new messages.
    def back(verdicts: list[PaceVerdict]) -> list[PaceRequest]:
        returning = [
            PaceRequest(r.connection_id, r.chat_id, ticket=v.ticket)
            for r, v, comes in zip(requests, verdicts, again, strict=False)
            if v.ticket is not None and comes
        ]
        return returning + requests[:10]

    second_shared = await admit(shared, back(first_shared))
    passed = time.monotonic() - started
    second_local = await admit(local, back(first_local))
    assert decided(second_shared) == decided(second_local)
    # Redis's clock moved on by at most `passed` between its two calls; the local
    # pacer's did not move.
    for a, b in zip(second_shared, second_local, strict=True):
        assert b.wait - passed - 1e-6 <= a.wait <= b.wait + 1e-6


async def test_two_workers_share_one_chats_schedule(redis: Redis) -> None:
    prefix = f"test-pace-{uuid.uuid4().hex[:8]}"
    first, second = (
        RedisOutboundPacer(redis, prefix=prefix),
        RedisOutboundPacer(redis, prefix=prefix),
    )
    assert (await admit(first, [PaceRequest(BOT, 3)]))[0].allowed
    [other] = await admit(second, [PaceRequest(BOT, 3)])
    assert not other.allowed and other.ticket is not None and 0 < other.wait <= 1.0
    # The other worker's next message of that chat queues behind it.
    [after] = await admit(first, [PaceRequest(BOT, 3)])
    assert after.ticket == other.ticket + 1


async def test_a_connections_keys_share_one_hash_tag_and_expire(redis: Redis) -> None:
    prefix = f"test-pace-{uuid.uuid4().hex[:8]}"
    pacer = RedisOutboundPacer(redis, prefix=prefix)
    [sent, _] = await admit(pacer, [PaceRequest(BOT, 3), PaceRequest(BOT, 3)])
    await pacer.confirm([Confirmation(BOT, 3, sent.admitted_at, 0.01)])
    keys = sorted(key.decode() for key in await redis.keys(f"{prefix}:*"))
    day = int(time.time() // 86_400)
    tag = f"{prefix}:{{{BOT}}}"
    assert keys == sorted([f"{tag}:bot", f"{tag}:cal", f"{tag}:chat:3", f"{tag}:day:{day}"])
    # The window lives a window and a little; the chat, with a ticket due in a
    # second, until that turn and its grace are over, plus a minute.
    assert 0 < await redis.pttl(f"{tag}:bot") <= 3_000
    assert 60_000 < await redis.pttl(f"{tag}:chat:3") <= 67_000
    assert 60_000 < await redis.pttl(f"{tag}:cal") <= 61_000
    # The day's count outlives its day by a day at most.
    assert 0 < await redis.pttl(f"{tag}:day:{day}") <= 2 * 86_400_000


async def test_a_chat_is_kept_until_its_last_tickets_turn(redis: Redis) -> None:
    """A ticket the bot's calendar puts minutes away keeps its chat's state (and so
    its order) until its turn and grace are over, not just a chat interval."""
    prefix = f"test-pace-{uuid.uuid4().hex[:8]}"
    pacer = RedisOutboundPacer(redis, PacingLimits(bot_sends=1), prefix=prefix)
    verdicts = await admit(pacer, [PaceRequest(BOT, 500 + n) for n in range(200)])
    last = verdicts[-1]
    assert last.ticket is not None and last.wait >= 150
    ttl = await redis.pttl(f"{prefix}:{{{BOT}}}:chat:699")
    assert ttl >= (last.wait + 5.0) * 1000


async def test_a_chat_with_nobody_waiting_is_forgotten_soon(redis: Redis) -> None:
    prefix = f"test-pace-{uuid.uuid4().hex[:8]}"
    pacer = RedisOutboundPacer(redis, prefix=prefix)
    [sent] = await admit(pacer, [PaceRequest(BOT, 4)])
    await pacer.confirm([Confirmation(BOT, 4, sent.admitted_at, 0.01)])
    # Only its ready moment matters: kept a second past it, and the margin.
    assert 0 < await redis.pttl(f"{prefix}:{{{BOT}}}:chat:4") <= 62_000


async def test_the_calendar_forgets_buckets_that_are_over(redis: Redis) -> None:
    prefix = f"test-pace-{uuid.uuid4().hex[:8]}"
    # A window of 20 ms, so buckets are over quickly.
    pacer = RedisOutboundPacer(redis, PacingLimits(bot_window=0.02, bot_sends=1), prefix=prefix)
    calendar = f"{prefix}:{{{BOT}}}:cal"
    await admit(pacer, [PaceRequest(BOT, 100 + n) for n in range(4)])
    buckets = {k for k in await redis.hkeys(calendar) if k.decode().isdigit()}
    assert len(buckets) == 3
    await asyncio.sleep(0.2)
    await admit(pacer, [PaceRequest(BOT, 200 + n) for n in range(3)])
    later = {k for k in await redis.hkeys(calendar) if k.decode().isdigit()}
    assert not later & buckets and len(later) == 2


# SCRIPT FLUSH empties the whole server's script cache: nothing runs beside it.
@pytest.mark.exclusive
async def test_a_flushed_script_cache_is_reloaded(redis: Redis) -> None:
    pacer = RedisOutboundPacer(redis, prefix=f"test-pace-{uuid.uuid4().hex[:8]}")
    await pacer.admit([PaceRequest(BOT, 99)], COUNTED)
    await redis.script_flush()
    assert (await admit(pacer, [PaceRequest(BOT, 1)]))[0].allowed
    await redis.script_flush()
    [sent] = await admit(pacer, [PaceRequest(BOT, 2)])
    await redis.script_flush()
    await pacer.confirm([Confirmation(BOT, 2, sent.admitted_at, 0.01)])
    # The flushed script ran once, not twice: the chat's next message is its first
    # ticket, not its second.
    [waiting] = await admit(pacer, [PaceRequest(BOT, 1)])
    [after] = await admit(pacer, [PaceRequest(BOT, 1)])
    assert waiting.ticket is not None and waiting.wait <= 1.0
    assert after.ticket == waiting.ticket + 1


async def test_an_unreachable_redis_admits_nothing() -> None:
    broken = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        pacer = RedisOutboundPacer(broken)
        with pytest.raises(RateLimiterUnavailable) as caught:
            await admit(pacer, [PaceRequest(BOT, 1)])
        assert "127.0.0.1" not in str(caught.value)
        with pytest.raises(RateLimiterUnavailable):
            await pacer.confirm([Confirmation(BOT, 1, 0.0, 0.1)])
    finally:
        await broken.aclose()
