"""Telegram's sending limits, shared by every worker (Redis) or kept in process.

Limits (Telegram's Bot FAQ):

- a chat: 1 message a second;
- a group, supergroup or channel: 20 a minute; with 1 a second per chat that is
  one every 3 seconds, kept as that spacing (no bursts a chat's members would see
  as a flood);
- a bot: 30 messages in any second, across its chats: a sliding window over its
  last 30 sends, so a bot may send 30 at once and then waits for the oldest to
  leave the window.

A 429 in one chat never slows the bot's other chats: every limit here is a
chat's own except the bot's window.

**Admitted, then confirmed.** Telegram counts a send when it arrives, which is
some milliseconds after the pacer admitted it (more when the worker is busy). So
an admitted send is counted from its admission, and once Telegram has answered,
`confirm` moves it to the moment of the answer (admission plus the time the
worker measured until the answer), which is after its arrival. A chat's next
send is admitted an interval after that, so it arrives an interval after the
previous one arrived whatever the delays in between; the bot's window counts the
answers' moments the same way. No margin is needed (`PacingLimits`).

**Tickets.** A message whose chat may not receive yet (or whose chat has
messages waiting already) takes the chat's next ticket, and a chat serves its
tickets in order: its messages go in the order they were asked about. The
message waits in the database until about its turn (`next_attempt_at`) and keeps
its ticket on its row (`pacing_ticket`); the chat remembers the moment each
waiting ticket was told. A ticket's turn is estimated from the moment the ticket
before it was told, or the chat's ready moment, and an interval for each ticket
between. That is a little early (each send before it also waits for its answer),
never late, so the chat never waits for a message still in the database: a ticket
that comes back early is told its turn again from the chat's state then (at most
a few milliseconds off for the next in line, which waits for it in the worker), so
an estimate's error never adds up over a long backlog, and no two messages of a
chat are told the same moment. A ticket is served before the ones ahead of it only
when each of those is `ticket_grace` past the moment it was last told and has not
come (cancelled, or lost with a worker); one that keeps coming back (waiting on the
bot's window, say) is never passed. A ticket the chat's state did not give (Redis
lost its state, or the in-process pacer restarted) is served as soon as the chat
may receive. A chat's state is kept until its last ticket's turn and grace are
over.

**The bot's calendar.** Where a ticket's estimate is made (and where a message
finds the bot's window full), the moment is also booked in the bot's calendar:
window-long buckets holding at most `bot_sends` places each. So a
bot whose chats together want more than its 30 a second gets its messages due at
the rate it may send, instead of due all at once and refused by its window
again and again. Estimates made again for early tickets are not booked twice.

Messages refused by the bot's window that already hold a ticket wait for the
moment the window frees a send for them: the k-th refused in a batch for the k-th
oldest send to leave it.

Decisions for one connection are made in one step (one Lua script on Redis,
whose clock is Redis's `TIME`, so replicas with skewed clocks agree), in the
order the messages are given. All of a connection's keys share its hash tag, so
a Redis Cluster keeps them in one slot; one batch of several connections is one
pipelined round trip. Both implementations compute in whole microseconds, so
they decide alike to the microsecond.

**The day's count.** The connection's `daily_limit` (messages per UTC day) is
ours, not Telegram's; the pacer counts each day's admitted sends per connection
with the other limits, and refuses the rest of the day (`limited_by="day"`, the
wait running to midnight UTC). A day the pacer has no count for yet (the first
batch of the day, or Redis lost its state) is answered `needs_count`: the caller
counts that day's sent messages in the database and asks again with `counted`,
which only fills in a count nobody has set meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from redis.exceptions import NoScriptError

from app.ratelimit import RateLimiterUnavailable
from app.ratelimit.base import LazySweeper
from app.redis_client import REDIS_FAILURES, RedisClient, is_cluster

LimitedBy = Literal["chat", "bot", "day"]
DAY_SECONDS = 86_400


@dataclass(frozen=True)
class PacingLimits:
    """Telegram's limits as this service keeps them (seconds, sends).

    Exactly Telegram's: no margin is needed, because a send is counted from the
    moment its answer came back (`confirm`), which is later than its arrival at
    Telegram by the answer's own way back. So a chat's next send, admitted an
    interval after that answer, arrives more than an interval after the previous
    one arrived, whatever the network's jitter; likewise for the bot's window.

    `ticket_grace`: how long past the moment it was told a waiting ticket may stay
    away before the tickets after it are served without it (see the module
    docstring).
    """

    chat_interval: float = 1.0
    group_interval: float = 3.0
    bot_sends: int = 30
    bot_window: float = 1.0
    ticket_grace: float = 5.0

    def __post_init__(self) -> None:
        if min(self.chat_interval, self.group_interval, self.bot_window) <= 0:
            raise ValueError("intervals must be positive")
        if self.bot_sends < 1:
            raise ValueError("bot_sends must be at least 1")
        if self.ticket_grace < 0:
            raise ValueError("ticket_grace must not be negative")


@dataclass(frozen=True)
class PaceRequest:
    connection_id: uuid.UUID
    chat_id: int | str
    # The message's ticket in its chat's order, if it was given one.
    ticket: int | None = None
    # The connection's messages per UTC day.
    daily_limit: int = 1_000_000_000


@dataclass(frozen=True)
class PaceVerdict:
    allowed: bool
    # Seconds until the message may go (or may ask again); 0 when allowed.
    wait: float = 0.0
    # The message's ticket (to be kept on its row), if it has one.
    ticket: int | None = None
    limited_by: LimitedBy | None = None
    # When an allowed send was admitted, on the pacer's clock (for `confirm`).
    admitted_at: float = 0.0
    # Nothing was decided: the pacer has no count of the connection's day yet.
    needs_count: bool = False


@dataclass(frozen=True)
class Confirmation:
    """An admitted send Telegram answered `elapsed` seconds after its admission."""

    connection_id: uuid.UUID
    chat_id: int | str
    admitted_at: float
    elapsed: float


def is_group(chat_id: int | str) -> bool:
    """Groups and supergroups have negative ids (channels too, "-100..."); a
    "@channelusername" is a channel."""
    return isinstance(chat_id, str) or chat_id < 0


def utc_day(at: float) -> int:
    """The UTC day (days since the epoch) of a Unix time."""
    return int(at // DAY_SECONDS)


def seconds_to_midnight(at: float) -> float:
    """From a Unix time to the next midnight UTC."""
    return (utc_day(at) + 1) * DAY_SECONDS - at


class OutboundPacer(Protocol):
    async def admit(
        self, requests: Sequence[PaceRequest], counted: dict[uuid.UUID, int] | None = None
    ) -> list[PaceVerdict]:
        """One verdict per request, in order; an allowed send is counted at once.

        `counted`: messages sent today per connection, for those whose verdicts
        said `needs_count`. Raises `RateLimiterUnavailable` when the shared state
        cannot be reached.
        """
        ...

    async def confirm(self, confirmations: Sequence[Confirmation]) -> None:
        """Count these sends from the moment Telegram answered them (see the module
        docstring). Raises `RateLimiterUnavailable` like `admit`."""
        ...


def _by_connection(items: Sequence[PaceRequest | Confirmation]) -> dict[uuid.UUID, list[int]]:
    groups: dict[uuid.UUID, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.connection_id, []).append(index)
    return groups


# -- in process (the embedded default) ------------------------------------------------

MICROSECONDS = 1_000_000
# How long a chat's and a bot's state outlive their last use (ms, in Redis).
STATE_MARGIN_MS = 60_000


@dataclass(frozen=True)
class _Micros:
    """`PacingLimits` in whole microseconds, as both implementations compute."""

    chat_interval: int
    group_interval: int
    bot_sends: int
    window: int
    grace: int

    @classmethod
    def of(cls, limits: PacingLimits) -> _Micros:
        return cls(
            round(limits.chat_interval * MICROSECONDS),
            round(limits.group_interval * MICROSECONDS),
            limits.bot_sends,
            round(limits.bot_window * MICROSECONDS),
            round(limits.ticket_grace * MICROSECONDS),
        )

    def interval(self, chat_id: int | str) -> int:
        return self.group_interval if is_group(chat_id) else self.chat_interval


@dataclass
class _Chat:
    # When the chat may receive again; the ticket it serves next and the next
    # ticket it gives (equal when nobody waits).
    ready_at: int = 0
    serving: int = 0
    next_ticket: int = 0
    # The moment each waiting ticket was last told to come back.
    told: dict[int, int] = field(default_factory=dict)
    # Until when the state means something (for forgetting it).
    keep_until: int = 0

    def waits(self, ticket: int | None) -> bool:
        """`ticket` is one this chat gave and has not served."""
        return ticket is not None and self.serving <= ticket < self.next_ticket


@dataclass
class _Bot:
    # Its recent sends, oldest first (at most `bot_sends` of them).
    sends: list[int] = field(default_factory=list)
    # Its calendar: the origin of its buckets, and places given per bucket.
    origin: int | None = None
    places: dict[int, int] = field(default_factory=dict)


class _Calendar:
    """A bot's calendar during one decision (see the module docstring)."""

    def __init__(self, bot: _Bot, now: int, limits: _Micros) -> None:
        self._bot = bot
        self._now = now
        self._limits = limits

    def book(self, moment: int) -> int:
        """The first moment at or after `moment` whose bucket has a place left, booked."""
        bot, window = self._bot, self._limits.window
        if bot.origin is None:
            bot.origin = self._now
        bucket = (moment - bot.origin) // window
        while bot.places.get(bucket, 0) >= self._limits.bot_sends:
            bucket += 1
            moment = max(moment, bot.origin + bucket * window)
        bot.places[bucket] = bot.places.get(bucket, 0) + 1
        return moment

    def forget_past(self) -> None:
        """Buckets over before the previous one book nothing any more."""
        bot = self._bot
        if bot.origin is None:
            return
        current = (self._now - bot.origin) // self._limits.window
        for bucket in [b for b in bot.places if b < current - 1]:
            del bot.places[bucket]


class LocalOutboundPacer:
    """The same decisions as `RedisOutboundPacer`, in this process's memory.

    For one worker (the embedded default has one); several processes each keep
    their own counts. `clock` is monotonic seconds, injectable for tests; tickets
    start from `wall_clock` milliseconds, so a restarted process gives tickets
    after those it gave before. State is forgotten lazily once it no longer
    limits anything.
    """

    def __init__(
        self,
        limits: PacingLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._limits = _Micros.of(limits or PacingLimits())
        self._clock = clock
        self._wall_clock = wall_clock
        self._chats: dict[tuple[uuid.UUID, str], _Chat] = {}
        self._bots: dict[uuid.UUID, _Bot] = {}
        # Admitted sends per (connection, UTC day).
        self._days: dict[tuple[uuid.UUID, int], int] = {}
        self._chat_sweeper = LazySweeper()
        self._bot_sweeper = LazySweeper()

    async def admit(
        self, requests: Sequence[PaceRequest], counted: dict[uuid.UUID, int] | None = None
    ) -> list[PaceVerdict]:
        now = round(self._clock() * MICROSECONDS)
        wall = self._wall_clock()
        day = utc_day(wall)
        for key in [key for key in self._days if key[1] != day]:
            del self._days[key]
        verdicts: list[PaceVerdict | None] = [None] * len(requests)
        for connection_id, indexes in _by_connection(requests).items():
            if (connection_id, day) not in self._days:
                if counted is None or connection_id not in counted:
                    for index in indexes:
                        verdicts[index] = PaceVerdict(False, needs_count=True)
                    continue
                self._days[(connection_id, day)] = counted[connection_id]
            decided = self._decide(
                now,
                round(seconds_to_midnight(wall) * MICROSECONDS),
                int(wall * 1000),
                connection_id,
                [requests[i] for i in indexes],
                day,
            )
            for index, verdict in zip(indexes, decided, strict=True):
                verdicts[index] = verdict
        window = self._limits.window
        self._chat_sweeper.maybe_sweep(self._chats, lambda chat: chat.keep_until <= now)
        self._bot_sweeper.maybe_sweep(
            self._bots,
            lambda bot: (
                (not bot.sends or bot.sends[-1] <= now - window)
                and all(
                    bot.origin is None or bot.origin + (b + 1) * window <= now for b in bot.places
                )
            ),
        )
        return [verdict for verdict in verdicts if verdict is not None]

    def _decide(
        self,
        now: int,
        to_midnight: int,
        first_ticket: int,
        connection_id: uuid.UUID,
        requests: Sequence[PaceRequest],
        day: int,
    ) -> list[PaceVerdict]:
        limits = self._limits
        bot = self._bots.setdefault(connection_id, _Bot())
        calendar = _Calendar(bot, now, limits)
        calendar.forget_past()
        used = self._days[(connection_id, day)]
        live = sorted(at for at in bot.sends if at > now - limits.window)
        waiting_on_bot = 0
        verdicts = []

        def waits(micros: int, ticket: int | None, limited_by: LimitedBy) -> PaceVerdict:
            return PaceVerdict(False, micros / MICROSECONDS, ticket, limited_by)

        def tell(chat: _Chat, ticket: int | None, moment: int) -> None:
            """What a waiting ticket was told: its turn as known now."""
            if ticket is not None and chat.waits(ticket):
                chat.told[ticket] = moment
                chat.keep_until = max(chat.keep_until, moment + limits.grace)

        for request in requests:
            key = (connection_id, str(request.chat_id))
            chat = self._chats.get(key)
            if chat is None:
                chat = self._chats[key] = _Chat(0, first_ticket, first_ticket)
            interval = limits.interval(request.chat_id)
            ticket = request.ticket
            if ticket is not None and chat.waits(ticket):
                # The tickets before it that are overdue by the grace are gone
                # (cancelled, or lost with a worker): the chat serves on without them.
                while chat.serving < ticket:
                    told = chat.told.get(chat.serving)
                    if told is not None and now < told + limits.grace:
                        break
                    chat.told.pop(chat.serving, None)
                    chat.serving += 1
                if chat.serving < ticket:
                    # Its turn comes after the next ticket's, and the ones between.
                    head = chat.told[chat.serving]
                    estimate = max(chat.ready_at, head) + (ticket - chat.serving) * interval
                    wait = (
                        estimate - now
                        if estimate > now
                        else min(interval, head + limits.grace - now)
                    )
                    tell(chat, ticket, now + wait)
                    verdicts.append(waits(wait, ticket, "chat"))
                    continue
            elif ticket is None and (chat.next_ticket > chat.serving or chat.ready_at > now):
                # Others wait in this chat, or it may not receive yet: the next ticket,
                # due an interval after the one before it, booked in the calendar.
                ticket = chat.next_ticket
                chat.next_ticket += 1
                estimate = max(chat.ready_at, now)
                if ticket > chat.serving:
                    estimate = max(
                        estimate + (ticket - chat.serving) * interval,
                        chat.told.get(ticket - 1, estimate) + interval,
                    )
                at = calendar.book(estimate)
                tell(chat, ticket, at)
                verdicts.append(waits(at - now, ticket, "chat"))
                continue
            # Its turn (or no ticket, and nobody waits).
            if chat.ready_at > now:
                tell(chat, ticket, chat.ready_at)
                verdicts.append(waits(chat.ready_at - now, ticket, "chat"))
            elif used >= request.daily_limit:
                tell(chat, ticket, now + to_midnight)
                verdicts.append(waits(to_midnight, ticket, "day"))
            elif len(live) < limits.bot_sends:
                used += 1
                live.append(now)
                chat.ready_at = now + interval
                chat.keep_until = max(chat.keep_until, chat.ready_at)
                if ticket is not None and chat.waits(ticket):
                    chat.told.pop(ticket, None)
                    chat.serving = ticket + 1
                verdicts.append(PaceVerdict(True, ticket=ticket, admitted_at=now / MICROSECONDS))
            else:
                # The bot's window is full: the k-th refused here waits for the k-th
                # oldest send to leave it (a window later for each time round).
                oldest = live[len(live) - limits.bot_sends :]
                turn, slot = divmod(waiting_on_bot, limits.bot_sends)
                waiting_on_bot += 1
                free_at = oldest[slot] + limits.window * (1 + turn)
                if ticket is None:
                    # A ticket keeps the chat's order while it waits; its place is booked.
                    ticket = chat.next_ticket
                    chat.next_ticket += 1
                    free_at = calendar.book(free_at)
                tell(chat, ticket, free_at)
                verdicts.append(waits(free_at - now, ticket, "bot"))
        bot.sends = live[-limits.bot_sends :]
        self._days[(connection_id, day)] = used
        return verdicts

    async def confirm(self, confirmations: Sequence[Confirmation]) -> None:
        limits = self._limits
        for connection_id, indexes in _by_connection(confirmations).items():
            bot = self._bots.setdefault(connection_id, _Bot())
            for item in (confirmations[i] for i in indexes):
                admitted = round(item.admitted_at * MICROSECONDS)
                answered = admitted + max(0, round(item.elapsed * MICROSECONDS))
                key = (connection_id, str(item.chat_id))
                chat = self._chats.get(key)
                if chat is None:
                    # Forgotten meanwhile: its ready moment is all that matters now.
                    first = int(self._wall_clock() * 1000)
                    chat = self._chats[key] = _Chat(0, first, first)
                chat.ready_at = max(chat.ready_at, answered + limits.interval(item.chat_id))
                chat.keep_until = max(chat.keep_until, chat.ready_at)
                if admitted in bot.sends:
                    bot.sends[bot.sends.index(admitted)] = answered
                    bot.sends.sort()


# -- shared through Redis ---------------------------------------------------------------

# The same decisions as `LocalOutboundPacer._decide`, in microseconds of Redis TIME
# (every value stays below 2**53, so Lua's doubles compute exactly).
PACING_SCRIPT = """\
-- KEYS[1]     the bot's recent sends (a list, oldest first)
-- KEYS[2]     the connection's count of admitted sends today (UTC)
-- KEYS[3]     the bot's calendar (a hash: o its origin, lo its oldest bucket, end its last place,
--             and per bucket the places booked in it)
-- KEYS[4..n]  one chat key per message, in order (a hash: r ready_at, s the
--             ticket served next, n the next ticket to give, k until when it
--             matters, t<ticket> the moment each waiting ticket was told)
-- ARGV[1..5]  chat interval, group interval, bot sends, bot window, ticket grace
--             (us, us, n, us, us)
-- ARGV[6]     the daily limit
-- ARGV[7]     the day's count from the database, or -1 if the caller has none
-- ARGV[6+2j], ARGV[7+2j]  the j-th message's flags (2: a group) and ticket (0: none)
-- Returns per message {allowed 0|1, wait_us, ticket or 0,
-- limited_by 0|1 chat|2 bot|3 day, admitted_at_us (allowed) or 0},
-- or {-1} when the day has no count and ARGV[7] is -1.
if redis.replicate_commands then
  redis.replicate_commands()
end
local chat_interval = tonumber(ARGV[1])
local group_interval = tonumber(ARGV[2])
local bot_sends = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local grace = tonumber(ARGV[5])
local daily_limit = tonumber(ARGV[6])
local used = tonumber(redis.call('GET', KEYS[2]))
if not used then
  if tonumber(ARGV[7]) < 0 then
    return {-1}
  end
  used = tonumber(ARGV[7])
end
local used_before = used
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local to_midnight = (math.floor(tonumber(time[1]) / 86400) + 1) * 86400000000 - now
local first_ticket = math.floor(now / 1000)

local live = {}
for _, value in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local at = tonumber(value)
  if at > now - window then
    live[#live + 1] = at
  end
end
-- Oldest first, whatever order confirmations left them in.
table.sort(live)

-- The bot's calendar.
local meta = redis.call('HMGET', KEYS[3], 'o', 'lo', 'end')
local origin = tonumber(meta[1])
local places = {}
local booked = {}
local booked_any = false
local last_place = tonumber(meta[3]) or 0
local function book(moment)
  if not origin then
    origin = now
  end
  local bucket = math.floor((moment - origin) / window)
  while true do
    local given = places[bucket]
    if given == nil then
      given = tonumber(redis.call('HGET', KEYS[3], tostring(bucket))) or 0
      places[bucket] = given
    end
    if given < bot_sends then
      places[bucket] = given + 1
      booked[bucket] = true
      booked_any = true
      last_place = math.max(last_place, moment)
      return moment
    end
    bucket = bucket + 1
    moment = math.max(moment, origin + bucket * window)
  end
end

local sent = 0
local waiting_on_bot = 0
local chats = {}
local out = {}
local function number(value)
  return string.format('%d', value)
end
-- The moment a waiting ticket was last told to come back (false: none known).
local function told_of(chat, ticket)
  local value = chat.told[ticket]
  if value == nil then
    value = tonumber(redis.call('HGET', chat.key, 't' .. number(ticket))) or false
    chat.told[ticket] = value
  end
  return value
end
local function waits(chat, ticket)
  return ticket > 0 and chat.s <= ticket and ticket < chat.n
end
local function tell(chat, ticket, moment)
  if waits(chat, ticket) then
    chat.told[ticket] = moment
    chat.changed[ticket] = true
    chat.k = math.max(chat.k, moment + grace)
    chat.dirty = true
  end
end
local function forget(chat, ticket)
  chat.told[ticket] = false
  chat.changed[ticket] = true
  chat.dirty = true
end
for j = 1, #KEYS - 3 do
  local key = KEYS[3 + j]
  local flags = tonumber(ARGV[6 + 2 * j])
  local ticket = tonumber(ARGV[7 + 2 * j])
  local interval = chat_interval
  if flags >= 2 then
    interval = group_interval
  end
  local chat = chats[key]
  if not chat then
    local got = redis.call('HMGET', key, 'r', 's', 'n', 'k')
    chat = {key = key, r = tonumber(got[1]) or 0, s = tonumber(got[2]), n = tonumber(got[3]),
            k = tonumber(got[4]) or 0, told = {}, changed = {}, dirty = false}
    if not chat.s or not chat.n then
      chat.s = first_ticket
      chat.n = first_ticket
    end
    chats[key] = chat
  end
  local decided = false
  if waits(chat, ticket) then
    -- The tickets before it that are overdue by the grace are gone (cancelled, or
    -- lost with a worker): the chat serves on without them.
    while chat.s < ticket do
      local told = told_of(chat, chat.s)
      if told and now < told + grace then
        break
      end
      forget(chat, chat.s)
      chat.s = chat.s + 1
    end
    if chat.s < ticket then
      -- Its turn comes after the next ticket's, and the ones between.
      local head = told_of(chat, chat.s)
      local estimate = math.max(chat.r, head) + (ticket - chat.s) * interval
      local wait = estimate - now
      if estimate <= now then
        wait = math.min(interval, head + grace - now)
      end
      tell(chat, ticket, now + wait)
      out[#out + 1] = {0, wait, ticket, 1, 0}
      decided = true
    end
  elseif ticket == 0 and (chat.n > chat.s or chat.r > now) then
    -- Others wait in this chat, or it may not receive yet: the next ticket, due an
    -- interval after the one before it, booked in the calendar.
    ticket = chat.n
    chat.n = ticket + 1
    chat.dirty = true
    local estimate = math.max(chat.r, now)
    if ticket > chat.s then
      local previous = told_of(chat, ticket - 1) or estimate
      estimate = math.max(estimate + (ticket - chat.s) * interval, previous + interval)
    end
    local at = book(estimate)
    tell(chat, ticket, at)
    out[#out + 1] = {0, at - now, ticket, 1, 0}
    decided = true
  end
  if not decided then
    if chat.r > now then
      tell(chat, ticket, chat.r)
      out[#out + 1] = {0, chat.r - now, ticket, 1, 0}
    elseif used >= daily_limit then
      tell(chat, ticket, now + to_midnight)
      out[#out + 1] = {0, to_midnight, ticket, 3, 0}
    elseif #live < bot_sends then
      used = used + 1
      live[#live + 1] = now
      sent = sent + 1
      chat.r = now + interval
      chat.k = math.max(chat.k, chat.r)
      if waits(chat, ticket) then
        forget(chat, ticket)
        chat.s = ticket + 1
      end
      chat.dirty = true
      out[#out + 1] = {1, 0, ticket, 0, now}
    else
      local turn = math.floor(waiting_on_bot / bot_sends)
      local slot = waiting_on_bot % bot_sends
      waiting_on_bot = waiting_on_bot + 1
      local free_at = live[#live - bot_sends + 1 + slot] + window * (1 + turn)
      if ticket == 0 then
        -- A ticket keeps the chat's order while it waits; its place is booked.
        ticket = chat.n
        chat.n = ticket + 1
        chat.dirty = true
        free_at = book(free_at)
      end
      tell(chat, ticket, free_at)
      out[#out + 1] = {0, free_at - now, ticket, 2, 0}
    end
  end
end
for key, chat in pairs(chats) do
  if chat.dirty then
    local fields = {'r', number(chat.r), 's', number(chat.s), 'n', number(chat.n),
                    'k', number(chat.k)}
    local gone = {}
    for ticket in pairs(chat.changed) do
      if chat.told[ticket] then
        fields[#fields + 1] = 't' .. number(ticket)
        fields[#fields + 1] = number(chat.told[ticket])
      else
        gone[#gone + 1] = 't' .. number(ticket)
      end
    end
    redis.call('HSET', key, unpack(fields))
    if #gone > 0 then
      redis.call('HDEL', key, unpack(gone))
    end
    -- Kept while it limits anything: its ready moment, and each waiting ticket's
    -- turn and grace.
    redis.call('PEXPIRE', key, math.ceil((chat.k - now) / 1000) + STATE_MARGIN_MS)
  end
end
if booked_any then
  local fields = {'o', string.format('%d', origin), 'end', string.format('%d', last_place)}
  for bucket in pairs(booked) do
    fields[#fields + 1] = tostring(bucket)
    fields[#fields + 1] = tostring(places[bucket])
  end
  -- Buckets over before the previous one book nothing any more.
  local current = math.floor((now - origin) / window)
  local lo = tonumber(meta[2]) or current
  if lo < current - 1 then
    if current - 1 - lo <= 64 then
      for bucket = lo, current - 2 do
        redis.call('HDEL', KEYS[3], tostring(bucket))
      end
    else
      for _, name in ipairs(redis.call('HKEYS', KEYS[3])) do
        local bucket = tonumber(name)
        if bucket and bucket < current - 1 then
          redis.call('HDEL', KEYS[3], name)
        end
      end
    end
    lo = current - 1
  end
  fields[#fields + 1] = 'lo'
  fields[#fields + 1] = string.format('%d', lo)
  redis.call('HSET', KEYS[3], unpack(fields))
  redis.call('PEXPIRE', KEYS[3], math.ceil((last_place - now) / 1000) + STATE_MARGIN_MS)
end
if sent > 0 then
  redis.call('DEL', KEYS[1])
  for j = math.max(1, #live - bot_sends + 1), #live do
    redis.call('RPUSH', KEYS[1], string.format('%d', live[j]))
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
end
if used ~= used_before or not redis.call('GET', KEYS[2]) then
  -- Kept a day past its own: a late confirmation or clock skew finds it still.
  local keep_ms = math.floor(to_midnight / 1000) + 86400000
  redis.call('SET', KEYS[2], string.format('%d', used), 'PX', keep_ms)
end
return out
""".replace("STATE_MARGIN_MS", str(STATE_MARGIN_MS))

CONFIRM_SCRIPT = """\
-- KEYS[1]     the bot's recent sends (a list, oldest first)
-- KEYS[2..n]  one chat key per confirmation
-- ARGV[1..4]  chat interval, group interval, bot sends, bot window (us, us, n, us)
-- ARGV[5..]   per confirmation: admitted_at_us, answered_at_us, flags (2 a group)
local chat_interval = tonumber(ARGV[1])
local group_interval = tonumber(ARGV[2])
local bot_sends = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local stamps = {}
for _, value in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  stamps[#stamps + 1] = tonumber(value)
end
local moved = false
for i = 2, #KEYS do
  local base = 5 + (i - 2) * 3
  local admitted = tonumber(ARGV[base])
  local answered = tonumber(ARGV[base + 1])
  local interval = chat_interval
  if tonumber(ARGV[base + 2]) >= 2 then
    interval = group_interval
  end
  local r = tonumber(redis.call('HGET', KEYS[i], 'r')) or 0
  if answered + interval > r then
    r = answered + interval
    redis.call('HSET', KEYS[i], 'r', string.format('%d', r))
    -- Never shortened: a chat's tickets keep it longer.
    local need = math.ceil((r - answered) / 1000) + 2000
    if redis.call('PTTL', KEYS[i]) < need then
      redis.call('PEXPIRE', KEYS[i], need)
    end
  end
  for j = 1, #stamps do
    if stamps[j] == admitted then
      stamps[j] = answered
      moved = true
      break
    end
  end
end
if moved then
  table.sort(stamps)
  redis.call('DEL', KEYS[1])
  for j = math.max(1, #stamps - bot_sends + 1), #stamps do
    redis.call('RPUSH', KEYS[1], string.format('%d', stamps[j]))
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 2000)
end
return #KEYS - 1
"""

# SHA1 is what EVALSHA names scripts by; it is not used for security here.
PACING_SCRIPT_SHA = hashlib.sha1(PACING_SCRIPT.encode(), usedforsecurity=False).hexdigest()
CONFIRM_SCRIPT_SHA = hashlib.sha1(CONFIRM_SCRIPT.encode(), usedforsecurity=False).hexdigest()

_LIMITED_BY: dict[int, LimitedBy | None] = {0: None, 1: "chat", 2: "bot", 3: "day"}


class RedisOutboundPacer:
    """Pacing shared by every worker through one Redis (or Redis Cluster).

    Keys, all of a connection's under its hash tag: `{prefix}:{<connection id>}:bot`
    (its window), `:cal` (its calendar), `:day:<n>` (the day's
    count) and `:chat:<chat id>` (a chat's ready moment and tickets), each
    expiring once it no longer limits anything. Any Redis failure raises
    `RateLimiterUnavailable`; nothing is ever admitted by default.
    """

    def __init__(
        self, redis: RedisClient, limits: PacingLimits | None = None, *, prefix: str = "out"
    ) -> None:
        self._redis = redis
        self._limits = _Micros.of(limits or PacingLimits())
        self._prefix = prefix

    async def admit(
        self, requests: Sequence[PaceRequest], counted: dict[uuid.UUID, int] | None = None
    ) -> list[PaceVerdict]:
        if not requests:
            return []
        groups = list(_by_connection(requests).items())
        day = utc_day(time.time())
        calls = [
            self._call([requests[i] for i in indexes], day, (counted or {}).get(connection_id, -1))
            for connection_id, indexes in groups
        ]
        replies = await self._run(PACING_SCRIPT, PACING_SCRIPT_SHA, calls)
        verdicts: list[PaceVerdict | None] = [None] * len(requests)
        for (_, indexes), reply in zip(groups, replies, strict=True):
            if reply == [-1]:
                for index in indexes:
                    verdicts[index] = PaceVerdict(False, needs_count=True)
                continue
            if not isinstance(reply, list) or len(reply) != len(indexes):
                raise RateLimiterUnavailable("pacing store gave an unexpected reply")
            for index, item in zip(indexes, reply, strict=True):
                allowed, wait_us, ticket, limited_by, admitted_us = (int(value) for value in item)
                verdicts[index] = PaceVerdict(
                    allowed == 1,
                    wait_us / MICROSECONDS,
                    ticket or None,
                    _LIMITED_BY[limited_by],
                    admitted_us / MICROSECONDS,
                )
        return [verdict for verdict in verdicts if verdict is not None]

    async def confirm(self, confirmations: Sequence[Confirmation]) -> None:
        if not confirmations:
            return
        calls = []
        for connection_id, indexes in _by_connection(confirmations).items():
            items = [confirmations[i] for i in indexes]
            keys = [self._bot_key(connection_id), *(self._chat_key(i) for i in items)]
            args = [*self._limit_args()]
            for item in items:
                admitted = round(item.admitted_at * MICROSECONDS)
                answered = admitted + max(0, round(item.elapsed * MICROSECONDS))
                args += [admitted, answered, 2 if is_group(item.chat_id) else 0]
            calls.append((keys, args))
        await self._run(CONFIRM_SCRIPT, CONFIRM_SCRIPT_SHA, calls)

    def _bot_key(self, connection_id: uuid.UUID) -> str:
        return f"{self._prefix}:{{{connection_id}}}:bot"

    def _calendar_key(self, connection_id: uuid.UUID) -> str:
        return f"{self._prefix}:{{{connection_id}}}:cal"

    def _chat_key(self, item: PaceRequest | Confirmation) -> str:
        return f"{self._prefix}:{{{item.connection_id}}}:chat:{item.chat_id}"

    def _limit_args(self) -> list[int]:
        limits = self._limits
        return [limits.chat_interval, limits.group_interval, limits.bot_sends, limits.window]

    def _call(
        self, requests: Sequence[PaceRequest], day: int, counted: int
    ) -> tuple[list[str], list[int]]:
        connection_id = requests[0].connection_id
        keys = [
            self._bot_key(connection_id),
            f"{self._prefix}:{{{connection_id}}}:day:{day}",
            self._calendar_key(connection_id),
            *(self._chat_key(request) for request in requests),
        ]
        args = [*self._limit_args(), self._limits.grace, requests[0].daily_limit, counted]
        for request in requests:
            args += [2 if is_group(request.chat_id) else 0, request.ticket or 0]
        return keys, args

    async def _run(
        self, script: str, sha: str, calls: list[tuple[list[str], list[int]]]
    ) -> list[object]:
        """Each call's reply, in order; any Redis failure is `RateLimiterUnavailable`."""
        replies: list[object] = [None] * len(calls)
        pending = list(range(len(calls)))
        try:
            for attempt in range(2):
                answers = await self._send(sha, [calls[index] for index in pending])
                missing = []
                for index, answer in zip(pending, answers, strict=True):
                    if isinstance(answer, NoScriptError):
                        missing.append(index)
                    elif isinstance(answer, Exception):
                        raise answer
                    else:
                        replies[index] = answer
                if not missing:
                    return replies
                # A server did not know the script (first use, restart, failover): the
                # calls it refused did not run; load it (on every primary of a
                # cluster), then run just those again.
                pending = missing
                if attempt == 0:
                    await self._redis.script_load(script)
        except REDIS_FAILURES as exc:
            # Only the type: redis-py messages can carry addresses, and a URL could
            # carry a password. The cause stays chained for debugging.
            raise RateLimiterUnavailable(
                f"pacing store unavailable ({type(exc).__name__})"
            ) from exc
        raise RateLimiterUnavailable("pacing script could not be loaded")

    async def _send(self, sha: str, calls: list[tuple[list[str], list[int]]]) -> list[object]:
        """One round of EVALSHA calls; an error reply comes back in its call's place."""
        if is_cluster(self._redis):
            # redis-py's cluster pipeline refuses EVALSHA; the calls go concurrently
            # instead, each to the primary of its connection's slot (its keys share
            # one hash tag).
            results = await asyncio.gather(
                *(self._redis.evalsha(sha, len(keys), *keys, *args) for keys, args in calls),
                return_exceptions=True,
            )
            for result in results:
                # A cancelled call is not an answer.
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result
            return list(results)
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        answers: list[object] = await pipe.execute(raise_on_error=False)
        return answers
